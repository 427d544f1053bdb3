# Builds walhouse's binaries. Release images use this; the tests do not.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src src
COPY benches benches
COPY examples examples
COPY tests tests
COPY sql sql
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 walhouse
COPY --from=build /src/target/release/walhouse-capture /src/target/release/walhouse-sink /usr/local/bin/
USER walhouse
ENTRYPOINT ["walhouse-capture"]
