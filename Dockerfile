# syntax=docker/dockerfile:1
# The idp-bridge operator image: the release binary on distroless (glibc), running as UID 65532.
#
#   docker build -t ghcr.io/idp-bridge/idp-bridge:0.1.0 .
#
# The tag should be the crate version in Cargo.toml, which is the Helm chart's appVersion.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The workspace names devenv/ as a member, so its manifest and sources must be present; the root
# package is the only default member, and only it is built.
COPY devenv/Cargo.toml ./devenv/Cargo.toml
COPY devenv/src ./devenv/src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin idp-bridge \
    && cp target/release/idp-bridge /idp-bridge

# glibc and libgcc (the binary links them dynamically), CA certificates, and a nonroot user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /idp-bridge /idp-bridge
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/idp-bridge"]
CMD ["run"]
