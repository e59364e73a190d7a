# syntax=docker/dockerfile:1
# The fleet's image: the worker and scheduler binaries, static (musl), on an empty base with the
# Mozilla CA bundle and a numeric non-root user. One image, two binaries: each Deployment names
# its command (deploy/base). With an engine:  docker build -t user-import:dev .
# Without one (this project's machines and CI): scripts/image.sh builds the binaries on the host
# and then THIS FILE's final stage (from `FROM scratch` to the end) with buildah, unchanged but
# for the COPY source: keep that stage free of RUN (there is no shell in it anyway).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
# musl-gcc for the C parts (aws-lc); ca-certificates for the bundle copied into the image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
# The file system of the final image, laid out by the same function scripts/image.sh uses.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl -p worker -p scheduler \
    && scripts/image.sh rootfs /rootfs target/x86_64-unknown-linux-musl/release

FROM scratch
COPY --from=build /rootfs/ /
# Numeric, so Kubernetes can verify runAsNonRoot without an /etc/passwd lookup; 65532 is the
# "nonroot" user of distroless images, listed in /etc/passwd for tools that want a name.
USER 65532:65532
ENV PATH=/usr/local/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
WORKDIR /tmp
EXPOSE 9090
LABEL org.opencontainers.image.title="user-import" \
      org.opencontainers.image.description="Tenant user-import fleet: worker and scheduler" \
      org.opencontainers.image.licenses="Apache-2.0"
CMD ["/usr/local/bin/worker", "run"]
