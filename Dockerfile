# syntax=docker/dockerfile:1
#
# Build:  docker build --build-arg REVISION="$(git rev-parse --short=12 HEAD)" \
#           -t loadimpact-exporter:0.1.0 .
# Run:    docker run -p 16565:16565 -v loadimpact-data:/data loadimpact-exporter:0.1.0
#
# Two stages: a release build on the official Rust image, then the binary alone
# on distroless (glibc, CA certificates, tzdata, no shell, no package manager),
# as the non-root user 65532. Both stages are Debian 12 (bookworm), so the
# binary's glibc matches the runtime's.

FROM rust:1-bookworm AS builder
WORKDIR /src
# The git revision for loadimpact_exporter_build_info (.git is not in the
# build context; build.rs reads this variable instead).
ARG REVISION=unknown
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    LOADIMPACT_EXPORTER_REVISION="${REVISION}" cargo build --release --locked --bin loadimpact-exporter \
    && install -D -m 0755 target/release/loadimpact-exporter /out/loadimpact-exporter \
    && mkdir -p /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/loadimpact-exporter /usr/local/bin/loadimpact-exporter
# An empty /data owned by the runtime user: a fresh named volume mounted there
# takes this ownership, so the store is writable without root.
COPY --from=builder --chown=65532:65532 /out/data /data
USER 65532:65532
# The embedded store (redb). One container per volume: the store has a single
# writer.
VOLUME ["/data"]
EXPOSE 16565
# --storage.path=/data, set by environment rather than as an argument, so that
# flags given to `docker run IMAGE --flag=...` add to it instead of replacing
# it (a flag on the command line still overrides it). The listener's default,
# 0.0.0.0:16565, is already right for a container.
ENV LOADIMPACT_EXPORTER_STORAGE_PATH=/data
ENTRYPOINT ["/usr/local/bin/loadimpact-exporter"]
