# The fila binary on a slim Debian image. Built by docker-compose.yml.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
COPY --from=build /src/target/release/fila /usr/local/bin/fila
ENTRYPOINT ["fila"]
CMD ["run"]
