# RabbitMQ for the container pass of the broker tests, from Debian's package. Host networking:
# the harness gives the ports in the environment (RABBITMQ_NODE_PORT, RABBITMQ_DIST_PORT) and a
# node name of the container's own.
FROM sse-fanout-test/debian:bookworm
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rabbitmq-server \
    && rm -rf /var/lib/apt/lists/*
CMD ["rabbitmq-server"]
