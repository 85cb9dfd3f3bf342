# kmflow image: build with the Rust toolchain, run on Debian slim.
FROM rust:1.88-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libclang-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --bin kmflow

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/kmflow /usr/local/bin/kmflow
COPY config /etc/kmflow
VOLUME /var/lib/kmflow
EXPOSE 8080
ENTRYPOINT ["kmflow"]
CMD ["run"]
