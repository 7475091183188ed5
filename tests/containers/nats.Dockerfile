# NATS with JetStream for the container pass of the broker tests, from Debian's package. Host
# networking: the harness gives the port on the command line (`nats-server -p N`).
FROM sse-fanout-test/debian:bookworm
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nats-server \
    && rm -rf /var/lib/apt/lists/*
CMD ["nats-server", "-a", "127.0.0.1", "-js", "-sd", "/tmp/nats"]
