# Builds the cloudsync binary and ships it on a slim base.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin cloudsync

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/cloudsync /usr/local/bin/cloudsync
ENTRYPOINT ["cloudsync"]
CMD ["serve", "--bind", "0.0.0.0:8080"]
