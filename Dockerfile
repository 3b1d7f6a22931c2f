# The "server image": every clone runs this same image, as every clone of
# `./lab up partN` runs the same binary. Used by docker-compose's part1 to
# part4 profiles; ./lab builds the same binaries natively.
#
# It holds each part's server and its loader (partN-load runs once, as a
# one-shot service, before the clones start), and part 4's worker and
# baker (part4-bake --once is a one-shot service too).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release \
    -p part1-clones --bin part1-server --bin part1-load \
    -p part2-database --bin part2-server --bin part2-load \
    -p part3-cache --bin part3-server \
    -p part4-async --bin part4-server --bin part4-worker --bin part4-bake

FROM debian:bookworm-slim
COPY --from=build /src/target/release/part1-server /src/target/release/part1-load \
    /src/target/release/part2-server /src/target/release/part2-load \
    /src/target/release/part3-server \
    /src/target/release/part4-server /src/target/release/part4-worker /src/target/release/part4-bake \
    /usr/local/bin/
# Listen on every interface of the container: HAProxy dials the clone by
# its service address, not loopback.
ENV BIND_ADDR=0.0.0.0 PORT=8080
EXPOSE 8080
CMD ["part1-server"]
