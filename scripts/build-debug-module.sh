#!/usr/bin/env bash
# scripts/build-debug-module.sh — build the guest driver (virtio_nn.ko) and
# its API users (consumer/nn_consumer.ko, nn_bench.ko) for the DEBUG kernel
# ($KDIR_DEBUG, scripts/build-kernel.sh --variant debug).
#
# Built from a copy, so the plain guest-driver/*.ko in the repository are not
# clobbered: guest-driver/ is copied (sources only) to
# $MOD_DEBUG/guest-driver and the nn-core files the crate root includes with
# #[path = "../nn-core/src/..."] (protocol.rs, proc_text.rs, dev_abi.rs) to
# $MOD_DEBUG/nn-core/src/, the same layout as the repository, so the
# includes still resolve.
# Output: $MODULE_DIR_DEBUG/virtio_nn.ko and $MODULE_DIR_DEBUG/consumer/*.ko
# (what tests/avocado and tests/guest/run-guest-test.py, with
# VIRTIO_NN_MODULE_DIR, use). Always rebuilt (about 10-30 s).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ -f $KERNEL_IMAGE_DEBUG ]] || die "no debug kernel: run scripts/build-kernel.sh --variant debug"
mkdir -p "$MOD_DEBUG/nn-core/src" "$OUT"
# the nn-core files the crate root includes, from its #[path] lines
mapfile -t shared < <(sed -n 's|^#\[path = "\.\./\(nn-core/src/[a-z_]*\.rs\)"\]$|\1|p' \
    "$REPO/guest-driver/virtio_nn_main.rs")
((${#shared[@]})) || die "virtio_nn_main.rs includes no nn-core file: update this script"
log "copying guest-driver/ and ${shared[*]} to $MOD_DEBUG"
rm -rf "$MODULE_DIR_DEBUG"
mkdir -p "$MODULE_DIR_DEBUG"
# sources only: no objects or .ko of the plain build
tar -C "$REPO/guest-driver" --exclude='*.o' --exclude='*.ko' --exclude='*.mod' \
    --exclude='*.mod.c' --exclude='.*.cmd' --exclude='Module.symvers' \
    --exclude='modules.order' --exclude='.tmp*' -cf - . | tar -C "$MODULE_DIR_DEBUG" -xf -
for f in "${shared[@]}"; do cp "$REPO/$f" "$MOD_DEBUG/$f"; done
LOGFILE="$OUT/module-build-debug.log"
log "building virtio_nn.ko for the debug kernel (log: $LOGFILE)"
kmake -C "$KDIR_DEBUG" M="$MODULE_DIR_DEBUG" modules >"$LOGFILE" 2>&1 ||
    { tail -n 40 "$LOGFILE" >&2; die "debug module build failed"; }
if [[ -d $MODULE_DIR_DEBUG/consumer ]]; then
    kmake -C "$KDIR_DEBUG" M="$MODULE_DIR_DEBUG/consumer" \
        KBUILD_EXTRA_SYMBOLS="$MODULE_DIR_DEBUG/Module.symvers" modules >>"$LOGFILE" 2>&1 ||
        { tail -n 40 "$LOGFILE" >&2; die "debug consumer build failed"; }
fi
ls "$MODULE_DIR_DEBUG"/*.ko "$MODULE_DIR_DEBUG"/consumer/*.ko 2>/dev/null | while read -r ko; do
    log "built $ko"
done
echo "$MODULE_DIR_DEBUG"
