# syntax=docker/dockerfile:1
#
# The jax-csi image: one binary that runs as the CSI controller, the node
# plugin or the node's fd-keeper, depending on its first argument.
#
#   docker build -t jax-csi:dev .
#
# The build step is the same command scripts/demo.sh and CI use
# (`cargo build --release --locked --bin jax-csi`); scripts/check-packaging.sh
# fails if the two drift apart.

# ---------------------------------------------------------------------------
# builder: the Rust toolchain the crate declares (rust-version = 1.95)
# ---------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# The crate compiles its protobuf with protox (pure Rust) and fuser mounts
# without libfuse, so the toolchain image needs no extra packages.
# The cache mounts keep the registry and target dir between builds; the
# binary is copied out of the cached target dir before the step ends.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin jax-csi \
    && install -D -m 0755 target/release/jax-csi /out/jax-csi

# ---------------------------------------------------------------------------
# runtime: Debian slim with what the node plugin shells out to or needs
# ---------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# fuse3: /dev/fuse tooling and fusermount3 for operators debugging a node;
# mount (util-linux): mount/umount/findmnt; ca-certificates: TLS to a managed
# Postgres. Versions follow the bookworm-slim base (security updates land on
# rebuild), so they are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 mount util-linux ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# The controller runs as this unprivileged user (the chart sets the same
# numeric ids); the node plugin needs root and privileges and the chart runs
# it with runAsUser: 0.
RUN groupadd --system --gid 65532 jax-csi \
    && useradd --system --uid 65532 --gid 65532 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin jax-csi

COPY --from=builder /out/jax-csi /usr/local/bin/jax-csi

LABEL org.opencontainers.image.title="jax-csi" \
      org.opencontainers.image.description="Kubernetes CSI driver for end-to-end encrypted, peer-to-peer replicated buckets" \
      org.opencontainers.image.licenses="Apache-2.0"

USER 65532:65532
ENTRYPOINT ["/usr/local/bin/jax-csi"]
