# The fila binary on a slim Debian image. Built by docker-compose.yml.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
# librdkafka links the system's OpenSSL; the CA certificates let fila check
# a managed cluster's TLS certificate.
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/fila /usr/local/bin/fila
ENTRYPOINT ["fila"]
CMD ["run"]
