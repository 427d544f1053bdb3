# Builds walhouse's binaries. Release images use this; the tests do not.
# DuckDB is linked against the prebuilt libduckdb.so (v1.5.6) that the
# duckdb crate is pinned to, fetched from the npm registry as .ci/install
# does, at the path .cargo/config.toml names.
FROM rust:1-bookworm AS build
ARG DUCKDB_SHA256=3f4962cdd266eab2b479a5b5a4a6d063d279b2954ae814ed00385d553b747633
RUN mkdir -p /var/tmp/walhouse-tools/duckdb/lib /tmp/duckdb \
    && curl -fsSL -o /tmp/duckdb/d.tgz https://registry.npmjs.org/@duckdb/node-bindings-linux-x64/-/node-bindings-linux-x64-1.5.6-r.1.tgz \
    && tar -xzf /tmp/duckdb/d.tgz -C /tmp/duckdb \
    && cp /tmp/duckdb/package/libduckdb.so /var/tmp/walhouse-tools/duckdb/lib/ \
    && echo "$DUCKDB_SHA256  /var/tmp/walhouse-tools/duckdb/lib/libduckdb.so" | sha256sum -c - \
    && rm -rf /tmp/duckdb
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY .cargo .cargo
COPY src src
COPY benches benches
COPY examples examples
COPY tests tests
COPY sql sql
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 walhouse \
    && mkdir -p /data && chown walhouse /data
COPY --from=build /var/tmp/walhouse-tools/duckdb/lib/libduckdb.so /var/tmp/walhouse-tools/duckdb/lib/libduckdb.so
COPY --from=build /src/target/release/walhouse-capture /src/target/release/walhouse-sink /usr/local/bin/
USER walhouse
ENTRYPOINT ["walhouse-capture"]
