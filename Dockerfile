# syntax=docker/dockerfile:1
#
# Airlock node agent image: build stage with the pinned toolchains, run stage
# with only the binary and the public CA bundle.
#
#   docker build -t airlock:0.1.0 .                 # from the repository root
#   kind load docker-image airlock:0.1.0            # or push to your registry and
#   cd deploy && kustomize edit set image airlock=REGISTRY/airlock:0.1.0
#
# Not built in this repository's CI (no container engine there); see
# deploy/README.md ("Image"). Pins match docs/ebpf-toolchain: stable 1.95 for the
# agent, nightly 2026-05-19 (LLVM 22) + rust-src and bpf-linker 0.13 for the
# kernel side, which proxy/build.rs builds and embeds.

ARG RUST_VERSION=1.95.0
ARG NIGHTLY=nightly-2026-05-19

FROM rust:${RUST_VERSION}-bookworm AS build
ARG NIGHTLY
# llvm-22-dev: what bpf-linker links against (Debian 12 security updates carry it).
# cmake: pingora's zlib-ng.
RUN apt-get update \
 && apt-get install -y --no-install-recommends llvm-22-dev cmake \
 && rm -rf /var/lib/apt/lists/*
# ebpf/rust-toolchain.toml asks for `nightly`; an unpinned nightly would bring
# LLVM 23, which bpf-linker 0.13 cannot link. Install the pinned build and give
# it that name.
RUN rustup toolchain install "${NIGHTLY}" --profile minimal --component rust-src \
 && rustup toolchain link nightly "$(rustc +"${NIGHTLY}" --print sysroot)" \
 && rustc +nightly --version --verbose | grep 'LLVM version: 22'
RUN LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker@0.13.0 --locked \
      --no-default-features --features llvm-22
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p airlock --bin airlock \
 && cp target/release/airlock /airlock

FROM debian:bookworm-slim AS run
# ca-certificates: the bundle deploy/config/airlock.yaml trusts for public gateways.
# libLLVM is not needed at run time: only bpf-linker links it, at build time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /airlock /usr/local/bin/airlock
# Root inside the container: loading eBPF and attaching to cgroups need it
# (with the capabilities the DaemonSet grants, nothing more).
USER 0:0
EXPOSE 15080 15020
ENTRYPOINT ["/usr/local/bin/airlock"]
CMD ["run", "--config", "/etc/airlock/airlock.yaml"]
