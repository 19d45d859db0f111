# syntax=docker/dockerfile:1
# The idp-bridge operator image for people who have Docker: the same content scripts/image.sh
# builds without a Docker engine (and which tests/cluster/image.rs runs as the chart's pod): the
# static musl release binary built with `cargo auditable` (its dependency list readable by image
# scanners), the Debian CA bundle, /etc/passwd and /etc/group with the nonroot user 65532, and
# nothing else (no shell, no libc). Entrypoint /idp-bridge, default command `run`.
#
#   docker build \
#     --build-arg GIT_COMMIT="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u -d "@$(git log -1 --format=%ct)" +%Y-%m-%dT%H:%M:%SZ)" \
#     --build-arg SOURCE_DATE_EPOCH="$(git log -1 --format=%ct)" \
#     -t ghcr.io/idp-bridge/idp-bridge:0.1.0 .
#
# The tag and VERSION are the crate version in Cargo.toml, which is the Helm chart's appVersion.
# Keep the pins and flags in step with scripts/image.sh (tests/cluster/image.rs compares them).

FROM rust:1.95-bookworm AS builder
ARG CARGO_AUDITABLE_VERSION=0.7.7
# musl-gcc compiles ring's C and assembly for the musl target.
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl \
    && cargo install --locked cargo-auditable@${CARGO_AUDITABLE_VERSION}
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The workspace names devenv/ as a member, so its manifest and sources must be present; the root
# package is the only default member, and only it is built.
COPY devenv/Cargo.toml ./devenv/Cargo.toml
COPY devenv/src ./devenv/src
# What `idp-bridge version` prints after the version.
ARG GIT_COMMIT=""
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    IDP_BRIDGE_GIT_COMMIT="${GIT_COMMIT}" CC_x86_64_unknown_linux_musl=musl-gcc CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo auditable build --release --locked --target x86_64-unknown-linux-musl --bin idp-bridge \
    && cp target/x86_64-unknown-linux-musl/release/idp-bridge /idp-bridge

FROM scratch
COPY --from=builder /idp-bridge /idp-bridge
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY scripts/image/passwd /etc/passwd
COPY scripts/image/group /etc/group
ARG VERSION=0.1.0
ARG GIT_COMMIT=""
ARG CREATED=""
ARG SOURCE=https://github.com/idp-bridge/idp-bridge
LABEL org.opencontainers.image.title="idp-bridge" \
      org.opencontainers.image.description="Kubernetes operator that validates Microsoft Entra ID client secrets and pushes them into identity brokers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.created="${CREATED}"
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/idp-bridge"]
CMD ["run"]
