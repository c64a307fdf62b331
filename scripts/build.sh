#!/usr/bin/env bash
# scripts/build.sh — build everything the demo and the tests need, installing
# what is missing. Every step is cached: a second run takes seconds.
#
#  1. host set-up (apt packages, QEMU >= 10.2 tree, kernel Rust toolchain)
#  2. guest kernel (Linux 6.12 with Rust)           -> $KERNEL_IMAGE
#  3. guest driver module (guest-driver/virtio_nn.ko) and its API users
#     (guest-driver/consumer/nn_consumer.ko, nn_bench.ko)
#  4. initramfs with the module                      -> $INITRAMFS
#  5. host binaries (daemon, nn-model, the host benchmarks), release profile
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$REPO/scripts/setup-host.sh"
"$REPO/scripts/build-kernel.sh"
log "building the guest driver"
kmake -C "$KDIR" M="$REPO/guest-driver" modules >"$OUT/module-build.log" 2>&1 ||
    { cat "$OUT/module-build.log" >&2; die "guest driver build failed"; }
# Users of its kernel API (nn_consumer.ko for the guest tests, nn_bench.ko).
kmake -C "$KDIR" M="$REPO/guest-driver/consumer" \
    KBUILD_EXTRA_SYMBOLS="$REPO/guest-driver/Module.symvers" modules \
    >>"$OUT/module-build.log" 2>&1 ||
    { cat "$OUT/module-build.log" >&2; die "guest driver consumer build failed"; }
"$REPO/scripts/build-initramfs.sh" >/dev/null
log "building the host binaries"
(cd "$REPO" && cargo build --quiet --release --workspace --bins)
log "build done"
