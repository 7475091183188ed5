# Redis for the container pass of the broker tests, from Debian's package. Host networking: the
# harness gives the port on the command line (`redis-server --port N`).
FROM sse-fanout-test/debian:bookworm
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/*
CMD ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
