#!/usr/bin/env bash
# scripts/build-kernel.sh — build the guest kernel (Linux 6.12 with Rust).
#
#  1. Fetch Debian's linux-source-6.12 (apt-get download; the .deb holds
#     /usr/src/linux-source-6.12.tar.xz) and extract it to $KDIR.
#  2. Add the headers the guest driver needs to rust/bindings/bindings_helper.h
#     (an idempotent, marked block).
#  3. Configure: tinyconfig + the options in WANT_Y / WANT_VAL below, then check
#     that every one of them really ended up in .config (tinyconfig silently
#     drops options whose dependencies are missing).
#  4. Check 'make rustavailable', build with clang/lld 19 + the private rustc
#     (see kmake in lib.sh), -j$(nproc).
#
# The tree is kept: out-of-tree modules are built against it with
#   source scripts/lib.sh; kmake -C "$KDIR" M="$REPO/guest-driver" modules
#
# Cached: if the inputs (this script, the source version, the toolchain
# versions) match the stamp and the bzImage exists, nothing is done.
# Env: LINUX_SOURCE_VERSION=<debian version> pins the linux-source-6.12 .deb
# (default: apt's candidate); FORCE=1 rebuilds.
# Prints the bzImage path on stdout at the end.
# >>> variant
#
# Usage: scripts/build-kernel.sh [--variant plain|debug]
#   plain (default)  -> $KDIR ($CACHE/linux), $KERNEL_IMAGE
#   debug            -> $KDIR_DEBUG ($CACHE/linux-debug), $KERNEL_IMAGE_DEBUG:
#                       the same options plus KASAN (generic, inline),
#                       lockdep (PROVE_LOCKING), DEBUG_ATOMIC_SLEEP, kmemleak,
#                       debugfs (WANT_Y_DEBUG below). Its own source tree (the
#                       .deb is fetched again), so the plain tree is untouched.
#                       Build the driver for it with scripts/build-debug-module.sh.
# (Lines between "# >>> variant" and "# <<< variant" are the variant support;
# the plain kernel's stamp hashes this script without them.)
# <<< variant
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SELF="$(readlink -f "${BASH_SOURCE[0]}")"
LOGFILE="$OUT/kernel-build.log"
# >>> variant
variant=plain
while (($#)); do
    case "$1" in
        --variant) [[ $# -ge 2 ]] || die "--variant needs a value"; variant="$2"; shift 2 ;;
        --variant=*) variant="${1#--variant=}"; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
case "$variant" in
    plain) ;;
    debug) KDIR="$KDIR_DEBUG"; KERNEL_IMAGE="$KERNEL_IMAGE_DEBUG"
           LOGFILE="$OUT/kernel-build-debug.log" ;;
    *) die "--variant must be plain or debug" ;;
esac
# <<< variant

# Options that must be =y. Base set (known to work with Rust) first, then the
# ones this project needs on top.
WANT_Y=(
    64BIT PRINTK EARLY_PRINTK TTY SERIAL_8250 SERIAL_8250_CONSOLE
    BLK_DEV_INITRD RD_GZIP BINFMT_ELF BINFMT_SCRIPT
    DEVTMPFS DEVTMPFS_MOUNT PROC_FS SYSFS SHMEM TMPFS
    PCI VIRTIO_MENU VIRTIO VIRTIO_PCI
    MODULES MODULE_UNLOAD RUST KALLSYMS FUTEX MULTIUSER
    # SMP and the interrupt plumbing it needs without ACPI (MP table from SeaBIOS)
    SMP X86_LOCAL_APIC X86_IO_APIC X86_MPPARSE
    # PCIe hotplug on a pcie-root-port of q35 (daemon restart = unplug/replug)
    PCI_MSI PCIEPORTBUS HOTPLUG_PCI HOTPLUG_PCI_PCIE
    # time keeping / console niceties
    PRINTK_TIME HIGH_RES_TIMERS NO_HZ_IDLE HZ_250
    # syscalls user space (busybox, test tools) may use
    EPOLL SIGNALFD TIMERFD EVENTFD POSIX_TIMERS PROC_SYSCTL FILE_LOCKING
    AIO ADVISE_SYSCALLS
    # useful diagnostics for driver development
    BUG
    # transport canary: virtio-rng lets tests check virtio-pci (INTx with
    # -device virtio-rng-pci,vectors=0, hotplug on rp0) without the daemon
    HW_RANDOM HW_RANDOM_VIRTIO
    # system sleep (PM_SLEEP follows from SUSPEND): the driver's freeze/restore
    # run on `echo freeze > /sys/power/state`; PM_DEBUG gives
    # /sys/power/pm_test, whose "devices" level resumes after the devices'
    # suspend callbacks without a wake-up source (there is no ACPI here)
    SUSPEND PM_SLEEP PM_DEBUG PM_SLEEP_DEBUG
)
# Options that must be off (RUST needs MODVERSIONS off).
WANT_N=(MODVERSIONS)

# >>> variant
# The debug variant: on top of WANT_Y. KASAN needs SLUB without SLUB_TINY
# (tinyconfig's); Rust accepts generic KASAN with clang.
WANT_Y_DEBUG=(
    DEBUG_KERNEL DEBUG_FS DEBUG_FS_ALLOW_ALL STACKTRACE KALLSYMS_ALL
    SLUB SLUB_DEBUG KASAN KASAN_GENERIC KASAN_INLINE
    PROVE_LOCKING LOCKDEP DEBUG_LOCK_ALLOC DEBUG_SPINLOCK DEBUG_MUTEXES
    DEBUG_ATOMIC_SLEEP DEBUG_KMEMLEAK DEBUG_KMEMLEAK_AUTO_SCAN DEBUG_LIST DEBUG_SG
)
WANT_N_DEBUG=(SLUB_TINY)
if [[ $variant == debug ]]; then
    WANT_Y+=("${WANT_Y_DEBUG[@]}")
    WANT_N+=("${WANT_N_DEBUG[@]}")
fi

# <<< variant
# Headers added to rust/bindings/bindings_helper.h for the guest driver.
# (If one of them breaks the bindgen/Rust build, move it to SKIPPED_HEADERS.)
BINDINGS_HEADERS=(
    linux/virtio.h linux/virtio_config.h linux/virtio_ids.h linux/mod_devicetable.h
    linux/scatterlist.h linux/proc_fs.h linux/seq_file.h linux/kobject.h linux/sysfs.h
    linux/completion.h linux/wait.h linux/jiffies.h linux/ktime.h linux/workqueue.h
    linux/miscdevice.h linux/interrupt.h linux/timer.h linux/uaccess.h linux/slab.h
    linux/spinlock.h linux/string.h linux/kstrtox.h
)
SKIPPED_HEADERS=()

mkdir -p "$OUT" "$CACHE/dl"

[[ -x $RUSTC_WRAPPER && -x $BINDGEN ]] || die "toolchain missing: run scripts/setup-host.sh first"
command -v clang-19 >/dev/null || die "clang-19 missing: run scripts/setup-host.sh first"

# ---------------------------------------------------------------------------
# 1. kernel source
# ---------------------------------------------------------------------------
src_version="${LINUX_SOURCE_VERSION:-}"
if [[ -z $src_version ]]; then
    src_version="$(apt-cache policy linux-source-6.12 2>/dev/null | sed -n 's/^ *Candidate: //p')"
    if [[ -z $src_version || $src_version == "(none)" ]]; then
        log "apt-get update (linux-source-6.12 not known to apt yet)"
        apt-get update -qq
        src_version="$(apt-cache policy linux-source-6.12 | sed -n 's/^ *Candidate: //p')"
    fi
fi
[[ -n $src_version && $src_version != "(none)" ]] || die "no linux-source-6.12 package available"

if [[ "$(cat "$KDIR/.virtio-nn-source" 2>/dev/null)" != "$src_version" ]]; then
    deb="$CACHE/dl/linux-source-6.12_${src_version//:/%3a}_all.deb"
    if [[ ! -f $deb ]]; then
        log "downloading linux-source-6.12=$src_version"
        rm -f "$CACHE"/dl/linux-source-6.12_*.deb
        (cd "$CACHE/dl" && apt-get download -qq -o APT::Sandbox::User=root \
            "linux-source-6.12=$src_version")
    fi
    log "extracting $(basename "$deb") to $KDIR"
    rm -rf "$KDIR" "$KDIR.tmp"
    mkdir -p "$KDIR.tmp"
    dpkg-deb --fsys-tarfile "$deb" \
        | tar -xO ./usr/src/linux-source-6.12.tar.xz \
        | tar -xJ --strip-components=1 -C "$KDIR.tmp"
    echo "$src_version" >"$KDIR.tmp/.virtio-nn-source"
    mv "$KDIR.tmp" "$KDIR"
    rm -f "$deb"   # 150 MB; the extracted tree is what we keep
else
    log "kernel source: $KDIR (linux-source-6.12 $src_version)"
fi

# ---------------------------------------------------------------------------
# cache check
# ---------------------------------------------------------------------------
# >>> variant
# The plain kernel's stamp hashes this script without the variant blocks, so
# adding the debug variant did not invalidate existing plain builds; the debug
# stamp hashes the whole script (WANT_Y_DEBUG included).
if [[ $variant == plain ]]; then
    self_filtered="$(mktemp)"
    trap 'rm -f "$self_filtered"' EXIT
    sed '/^# >>> variant/,/^# <<< variant/d' "$SELF" >"$self_filtered"
    SELF="$self_filtered"
fi
# <<< variant
inputs_hash="$( {
    cat "$SELF"
    echo "$src_version"
    "$RUSTC_WRAPPER" --version
    "$BINDGEN" --version
    clang-19 --version | head -n1
} | sha256sum | cut -d' ' -f1)"
stamp="$KDIR/.virtio-nn-build.stamp"
if [[ ${FORCE:-0} != 1 && -f $KERNEL_IMAGE && "$(cat "$stamp" 2>/dev/null)" == "$inputs_hash" ]]; then
    log "kernel up to date (stamp matches): $KERNEL_IMAGE"
    echo "$KERNEL_IMAGE"
    exit 0
fi
rm -f "$stamp"

# ---------------------------------------------------------------------------
# 2. bindings_helper.h
# ---------------------------------------------------------------------------
helper="$KDIR/rust/bindings/bindings_helper.h"
begin_marker="/* BEGIN virtio-nn additions (scripts/build-kernel.sh) */"
end_marker="/* END virtio-nn additions */"
{
    # drop an old block (if any), then append the current one
    sed "\|^/\* BEGIN virtio-nn additions|,\|^/\* END virtio-nn additions|d" "$helper"
    echo "$begin_marker"
    for h in "${BINDINGS_HEADERS[@]}"; do echo "#include <$h>"; done
    echo "$end_marker"
} >"$helper.new"
if cmp -s "$helper" "$helper.new"; then
    rm -f "$helper.new"
else
    log "patching rust/bindings/bindings_helper.h (${#BINDINGS_HEADERS[@]} headers)"
    mv "$helper.new" "$helper"
fi
((${#SKIPPED_HEADERS[@]} == 0)) || log "headers NOT added (break bindgen): ${SKIPPED_HEADERS[*]}"

# ---------------------------------------------------------------------------
# 3. configure
# ---------------------------------------------------------------------------
log "checking 'make rustavailable'"
kmake -C "$KDIR" -s rustavailable 2>&1 | tee "$OUT/rustavailable.log" >&2
grep -q "Rust is available" "$OUT/rustavailable.log" || die "Rust is not available to the kernel build"

log "configuring: tinyconfig + ${#WANT_Y[@]} options"
kmake -C "$KDIR" -s tinyconfig >/dev/null
cfg_args=()
for o in "${WANT_Y[@]}"; do cfg_args+=(--enable "$o"); done
for o in "${WANT_N[@]}"; do cfg_args+=(--disable "$o"); done
cfg_args+=(--set-val HZ 250)
"$KDIR/scripts/config" --file "$KDIR/.config" "${cfg_args[@]}"
# Two rounds: options enabled in round 1 can unlock menus for round 2.
kmake -C "$KDIR" -s olddefconfig >/dev/null
"$KDIR/scripts/config" --file "$KDIR/.config" "${cfg_args[@]}"
kmake -C "$KDIR" -s olddefconfig >/dev/null

bad=()
for o in "${WANT_Y[@]}"; do
    grep -qx "CONFIG_$o=y" "$KDIR/.config" || bad+=("$o (wanted y)")
done
for o in "${WANT_N[@]}"; do
    grep -q "^CONFIG_$o=y" "$KDIR/.config" && bad+=("$o (wanted n)")
done
grep -qx "CONFIG_HZ=250" "$KDIR/.config" || bad+=("HZ (wanted 250)")
if ((${#bad[@]})); then
    log "these options did not end up as wanted in .config (missing dependencies?):"
    printf '    %s\n' "${bad[@]}" >&2
    die "kernel configuration check failed"
fi
log "configuration check passed"

# ---------------------------------------------------------------------------
# 4. build
# ---------------------------------------------------------------------------
log "building the kernel (3-5 min on 2 cores; log: $LOGFILE)"
start=$SECONDS
if ! kmake -C "$KDIR" all >"$LOGFILE" 2>&1; then
    grep -E 'error|Error' "$LOGFILE" | head -n 40 >&2 || true
    tail -n 20 "$LOGFILE" >&2
    die "kernel build failed (log: $LOGFILE)"
fi
[[ -f $KERNEL_IMAGE ]] || die "build finished but $KERNEL_IMAGE is missing"
echo "$inputs_hash" >"$stamp"
log "kernel built in $((SECONDS - start)) s: $KERNEL_IMAGE ($(du -h "$KERNEL_IMAGE" | cut -f1))"
echo "$KERNEL_IMAGE"
