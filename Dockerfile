# The "server image" of part 1: every clone runs this same image.
# Used by docker-compose's part1 profile; ./lab builds the same binary natively.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p part1-clones --bin part1-server

FROM debian:bookworm-slim
COPY --from=build /src/target/release/part1-server /usr/local/bin/part1-server
EXPOSE 8080
CMD ["part1-server"]
