#!/usr/bin/env bash
# Runs nn-core's tests for aarch64 under qemu-user, so that the NEON kernel is
# executed (and compared with the scalar reference by the property tests) on
# an x86-64 machine. Installs what it needs: the Rust std for the target
# (rustup) and Debian's qemu-user, cross gcc (as the linker) and arm64 libc.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! timeout 300 rustup target add aarch64-unknown-linux-gnu >/dev/null; then
    # The std for the target comes from the Rust distribution server, which
    # is not one of the package registries every machine here reaches.
    echo "test-aarch64: SKIPPED: rustup cannot install the aarch64 std here" >&2
    exit 0
fi
if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
cargo test --release -p nn-core --target aarch64-unknown-linux-gnu "$@"
