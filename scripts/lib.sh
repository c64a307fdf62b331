# shellcheck shell=bash
# scripts/lib.sh — common definitions for the virtio-nn host scripts.
#
# Source it (from bash):   source "$(dirname "$0")/lib.sh"
# It sets no shell options (so it is safe to source into an interactive shell)
# and runs nothing expensive; it only defines paths and helpers.
#
# Everything downloaded or built lives under $CACHE (override with
# VIRTIO_NN_CACHE); nothing is installed system-wide except the Debian
# packages that setup-host.sh installs with apt.

# --- paths -------------------------------------------------------------------
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${VIRTIO_NN_CACHE:-$HOME/.cache/virtio-nn}"

# Debian trixie tree (debootstrap) that holds QEMU >= 10.2 from trixie-backports.
QEMU_ROOT="$CACHE/qemu-root"

# Private Rust-for-Linux toolchain: Debian rustc-web + rust-web-src extracted
# with dpkg-deb -x (not installed), a rustc wrapper, and bindgen-cli.
TOOLCHAIN="$CACHE/toolchain"
RUST_PREFIX="$TOOLCHAIN/rust"            # dpkg-deb -x target
RUSTC_WRAPPER="$TOOLCHAIN/bin/rustc"     # sets LD_LIBRARY_PATH, execs the real rustc
RUSTDOC_WRAPPER="$TOOLCHAIN/bin/rustdoc"
CLIPPY_WRAPPER="$TOOLCHAIN/bin/clippy-driver" # Debian rust-web-clippy of the same version (make CLIPPY=1)
BINDGEN="$TOOLCHAIN/bindgen/bin/bindgen" # cargo install --root $TOOLCHAIN/bindgen
LLVM_SUFFIX="-19"                        # clang-19 / ld.lld-19 / llvm-*-19 from bookworm
LIBCLANG_PATH="/usr/lib/llvm${LLVM_SUFFIX}/lib"

# Guest kernel: Debian linux-source-6.12 extracted and built in place
# (the tree is kept so that out-of-tree modules can be built against it).
KDIR="$CACHE/linux"
KERNEL_IMAGE="$KDIR/arch/x86/boot/bzImage"

# Debug variant of the guest kernel (scripts/build-kernel.sh --variant debug):
# KASAN (generic, inline), lockdep (PROVE_LOCKING), DEBUG_ATOMIC_SLEEP,
# kmemleak; its own tree, so the plain one stays as it is.
KDIR_DEBUG="$CACHE/linux-debug"
KERNEL_IMAGE_DEBUG="$KDIR_DEBUG/arch/x86/boot/bzImage"
# The guest driver built for the debug kernel (scripts/build-debug-module.sh):
# built from a copy of the sources, laid out as in the repository
# ($MOD_DEBUG/guest-driver + the nn-core/src files the crate root includes
# with #[path]), so the plain guest-driver/*.ko stay.
MOD_DEBUG="$CACHE/mod-debug"
MODULE_DIR_DEBUG="$MOD_DEBUG/guest-driver"

# Build outputs.
OUT="$CACHE/out"
INITRAMFS="$OUT/initramfs.cpio.gz"

# --- logging -----------------------------------------------------------------
# log MSG...   — progress message on stderr, prefixed with the script name.
log() {
    printf '[%s %s] %s\n' "$(date +%H:%M:%S)" "$(basename "${0:-virtio-nn}")" "$*" >&2
}

# die MSG...   — log and exit 1.
die() {
    log "ERROR: $*"
    exit 1
}

# --- kernel build ------------------------------------------------------------
# kmake ARGS...  — make with the toolchain the guest kernel was built with
# (clang/lld 19, the private rustc and bindgen). Examples:
#   kmake -C "$KDIR" olddefconfig
#   kmake -C "$KDIR" M="$REPO/guest-driver" modules
# Parallelism defaults to $(nproc); override with KMAKE_JOBS=N.
kmake() {
    LIBCLANG_PATH="$LIBCLANG_PATH" \
    make -j"${KMAKE_JOBS:-$(nproc)}" \
        LLVM="$LLVM_SUFFIX" \
        RUSTC="$RUSTC_WRAPPER" \
        HOSTRUSTC="$RUSTC_WRAPPER" \
        RUSTDOC="$RUSTDOC_WRAPPER" \
        BINDGEN="$BINDGEN" \
        "$@"
}

# --- QEMU --------------------------------------------------------------------
# The trixie QEMU is run WITHOUT chroot, through the tree's own dynamic loader
# and libraries; -L points it at its firmware/ROM directories.
QEMU_CMD=(
    "$QEMU_ROOT/lib64/ld-linux-x86-64.so.2"
    --library-path "$QEMU_ROOT/lib/x86_64-linux-gnu:$QEMU_ROOT/usr/lib/x86_64-linux-gnu"
    "$QEMU_ROOT/usr/bin/qemu-system-x86_64"
    -L "$QEMU_ROOT/usr/share/qemu"
    -L "$QEMU_ROOT/usr/share/seabios"
)
# Loadable QEMU modules (if any are needed) live in the tree, not in /usr/lib.
export QEMU_MODULE_DIR="$QEMU_ROOT/usr/lib/x86_64-linux-gnu/qemu"

# qemu_bin ARGS...  — run the trixie qemu-system-x86_64 (e.g. qemu_bin --version).
qemu_bin() {
    "${QEMU_CMD[@]}" "$@"
}
