#!/usr/bin/env bash
# scripts/setup-host.sh — install everything the host side needs.
#
#  1. Debian (bookworm) packages via apt: debootstrap, busybox-static,
#     clang/lld/llvm 19 + libclang, kernel build dependencies.
#  2. $QEMU_ROOT: a minimal Debian trixie tree (debootstrap) with
#     qemu-system-x86 from trixie-backports (QEMU >= 10.2, which has the
#     generic vhost-user-test-device). It is run without chroot through the
#     tree's own loader (see QEMU_CMD / qemu_bin in lib.sh).
#  3. $TOOLCHAIN: Rust for the kernel — Debian's rustc-web, rust-web-src and
#     libstd-rust-web debs extracted (not installed: rustc-web conflicts with
#     rustup) plus a rustc wrapper, and bindgen-cli 0.69.5 (cargo install);
#     Debian's rust-web-clippy of the same version, extracted beside them,
#     for the module's clippy (scripts/clippy-module.sh).
#
# Idempotent: every step leaves a stamp and is skipped on the next run.
# Must run as root (apt, debootstrap). Env overrides:
#   RUST_WEB_VERSION   Debian version of rustc-web to use
#                      (default 1.85.0+dfsg3-1~deb12u3, falling back to the
#                      apt candidate if that one cannot be downloaded)
#   TRIXIE_MIRROR      Debian mirror for the trixie tree (default deb.debian.org)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUST_WEB_VERSION_DEFAULT="1.85.0+dfsg3-1~deb12u3"
BINDGEN_VERSION="0.69.5"
TRIXIE_MIRROR="${TRIXIE_MIRROR:-http://deb.debian.org/debian}"
MIN_QEMU_VERSION="10.2"

HOST_PACKAGES=(
    # QEMU tree + initramfs
    debootstrap debian-archive-keyring busybox-static cpio gzip
    # clang/LLVM toolchain for the kernel (LLVM=-19) and libclang for bindgen
    clang-19 lld-19 llvm-19 libclang-19-dev
    # kernel build dependencies
    make gcc libc6-dev bc bison flex libelf-dev libssl-dev xz-utils perl python3
    # misc used by the scripts / test harness
    python3-venv socat
)

mkdir -p "$CACHE" "$OUT"

# ---------------------------------------------------------------------------
# 1. host packages
# ---------------------------------------------------------------------------
APT_UPDATED=0
apt_update_once() {
    if [[ $APT_UPDATED == 0 ]]; then
        log "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
}

install_host_packages() {
    local missing=() p
    for p in "${HOST_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        log "host packages: all present"
        return
    fi
    log "host packages: installing ${missing[*]}"
    apt_update_once
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}"
}

# ---------------------------------------------------------------------------
# 2. QEMU >= 10.2 in a debootstrapped trixie tree
# ---------------------------------------------------------------------------
qemu_version_ok() {
    local v
    v="$(qemu_bin --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9][0-9.]*\).*/\1/p')"
    [[ -n $v ]] || return 1
    # version compare via sort -V
    [[ "$(printf '%s\n%s\n' "$MIN_QEMU_VERSION" "$v" | sort -V | head -n1)" == "$MIN_QEMU_VERSION" ]] \
        || return 1
    QEMU_VERSION="$v"
}

setup_qemu_root() {
    local stamp="$QEMU_ROOT/.virtio-nn-qemu.stamp"
    if [[ -f $stamp ]] && qemu_version_ok; then
        log "QEMU tree: present ($QEMU_ROOT, QEMU $QEMU_VERSION)"
        return
    fi
    if [[ ! -x $QEMU_ROOT/usr/bin/apt-get || ! -f $QEMU_ROOT/.virtio-nn-debootstrap.stamp ]]; then
        log "QEMU tree: debootstrap --variant=minbase trixie $QEMU_ROOT (~1 min)"
        umount "$QEMU_ROOT/proc" 2>/dev/null || true   # left over from an interrupted run
        rm -rf --one-file-system "$QEMU_ROOT"
        mkdir -p "$QEMU_ROOT"
        debootstrap --variant=minbase trixie "$QEMU_ROOT" "$TRIXIE_MIRROR" \
            >"$CACHE/debootstrap.log" 2>&1 \
            || { tail -n 30 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
        touch "$QEMU_ROOT/.virtio-nn-debootstrap.stamp"
    fi
    log "QEMU tree: installing qemu-system-x86 from trixie-backports"
    cat >"$QEMU_ROOT/etc/apt/sources.list" <<EOF
deb $TRIXIE_MIRROR trixie main
deb $TRIXIE_MIRROR trixie-backports main
EOF
    rm -f "$QEMU_ROOT/etc/apt/sources.list.d/debian.sources"
    # chroot needs /proc for some maintainer scripts; unmount on exit.
    mountpoint -q "$QEMU_ROOT/proc" || mount -t proc proc "$QEMU_ROOT/proc"
    trap 'umount "$QEMU_ROOT/proc" 2>/dev/null || true' EXIT
    chroot "$QEMU_ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        DEBIAN_FRONTEND=noninteractive LANG=C \
        sh -ec 'apt-get update -qq
                apt-get install -y -qq --no-install-recommends -t trixie-backports qemu-system-x86
                apt-get clean' \
        >"$CACHE/qemu-install.log" 2>&1 \
        || { tail -n 30 "$CACHE/qemu-install.log" >&2; die "installing QEMU in the trixie tree failed (log: $CACHE/qemu-install.log)"; }
    umount "$QEMU_ROOT/proc" 2>/dev/null || true
    trap - EXIT
    qemu_version_ok || die "QEMU in $QEMU_ROOT is older than $MIN_QEMU_VERSION or does not run"
    touch "$stamp"
    log "QEMU tree: ready (QEMU $QEMU_VERSION)"
}

verify_qemu() {
    qemu_version_ok || die "QEMU does not run or is too old"
    qemu_bin -device help 2>/dev/null | grep -q '"vhost-user-test-device-pci"' \
        || die "QEMU $QEMU_VERSION has no vhost-user-test-device-pci"
    log "QEMU $QEMU_VERSION OK: vhost-user-test-device-pci available"
}

# ---------------------------------------------------------------------------
# 3. Rust toolchain for the kernel
# ---------------------------------------------------------------------------
setup_rust() {
    local stamp="$TOOLCHAIN/.virtio-nn-rust.stamp"
    if [[ -f $stamp && -x $RUSTC_WRAPPER ]] && "$RUSTC_WRAPPER" --version >/dev/null 2>&1 \
        && [[ -z ${RUST_WEB_VERSION:-} || "$(cat "$stamp")" == "$RUST_WEB_VERSION" ]]; then
        log "kernel Rust: present ($("$RUSTC_WRAPPER" --version))"
        return
    fi
    local ver="${RUST_WEB_VERSION:-$RUST_WEB_VERSION_DEFAULT}"
    local debs="$TOOLCHAIN/debs"
    rm -rf "$debs" "$RUST_PREFIX"
    mkdir -p "$debs" "$RUST_PREFIX" "$TOOLCHAIN/bin"
    apt_update_once
    # libstd-rust-web-X.Y carries the major.minor in its name.
    fetch_rust_debs() {
        local v="$1" mm
        mm="$(sed -E 's/^([0-9]+\.[0-9]+).*/\1/' <<<"$v")"
        (cd "$debs" && apt-get download -qq -o APT::Sandbox::User=root \
            "rustc-web=$v" "rust-web-src=$v" \
            "libstd-rust-web-dev=$v" "libstd-rust-web-$mm=$v") || return 1
        # rustc links against libLLVM (1.85: libllvm19, which clang-19 brings
        # along; 1.96: libllvm22): extract it too if the host lacks it.
        local llvm_pkg
        llvm_pkg="$(apt-cache show "libstd-rust-web-$mm=$v" | sed -n 's/^Depends: //p' \
            | head -n1 | grep -o 'libllvm[0-9]*' | head -n1 || true)"
        if [[ -n $llvm_pkg ]] && ! dpkg-query -W -f='${Status}' "$llvm_pkg" 2>/dev/null \
                | grep -q 'install ok installed'; then
            log "kernel Rust: also fetching $llvm_pkg"
            (cd "$debs" && apt-get download -qq -o APT::Sandbox::User=root "$llvm_pkg") || return 1
        fi
    }
    log "kernel Rust: downloading rustc-web $ver debs"
    if ! fetch_rust_debs "$ver"; then
        local cand
        cand="$(apt-cache policy rustc-web | sed -n 's/^ *Candidate: //p')"
        [[ -n $cand && $cand != "(none)" && $cand != "$ver" ]] \
            || die "cannot download rustc-web $ver and no other candidate"
        log "kernel Rust: $ver not downloadable, falling back to $cand"
        rm -f "$debs"/*.deb
        ver="$cand"
        fetch_rust_debs "$ver"
    fi
    local d
    for d in "$debs"/*.deb; do
        log "kernel Rust: extracting $(basename "$d")"
        dpkg-deb -x "$d" "$RUST_PREFIX"
    done
    rm -rf "$debs"   # the extracted tree is all we need
    # Locate the real binaries (rustc-web ships them under /usr/lib/rust-web/bin
    # or similar; find rather than hard-code).
    local real_rustc real_rustdoc libdir
    real_rustc="$(find "$RUST_PREFIX" -type f -name rustc -perm -u+x | head -n1)"
    real_rustdoc="$(find "$RUST_PREFIX" -type f -name rustdoc -perm -u+x | head -n1)"
    [[ -n $real_rustc ]] || die "no rustc binary in the extracted debs"
    # librustc_driver-*.so lives in the prefix's lib dir(s).
    libdir="$(find "$RUST_PREFIX" -name 'librustc_driver-*.so' -printf '%h\n' | sort -u | paste -sd:)"
    [[ -n $libdir ]] || die "no librustc_driver in the extracted debs"
    write_wrapper() {
        cat >"$1" <<EOF
#!/bin/sh
# Generated by scripts/setup-host.sh: run the extracted Debian $(basename "$2") ($ver).
LD_LIBRARY_PATH="$libdir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$2" "\$@"
EOF
        chmod +x "$1"
    }
    write_wrapper "$RUSTC_WRAPPER" "$real_rustc"
    [[ -n $real_rustdoc ]] && write_wrapper "$RUSTDOC_WRAPPER" "$real_rustdoc"
    "$RUSTC_WRAPPER" --version >/dev/null || die "the rustc wrapper does not run"
    local src
    src="$("$RUSTC_WRAPPER" --print sysroot)/lib/rustlib/src/rust/library"
    [[ -d $src/core ]] || die "rust-src not found at $src (rust-web-src layout changed?)"
    echo "$ver" >"$stamp"
    log "kernel Rust: ready ($("$RUSTC_WRAPPER" --version))"
}

# clippy-driver for `make CLIPPY=1` on the guest driver. It must be the one of
# the kernel's rustc (same version and build: it reads the kernel's core and
# kernel metadata, and takes the flags the kernel chose for that rustc, such
# as -Zno-jump-tables before 1.93). Debian builds rust-web-clippy with every
# rustc-web: extract the one of the version in the stamp into the same prefix
# (its clippy-driver then finds librustc_driver and the sysroot there).
setup_kernel_clippy() {
    local ver stamp="$TOOLCHAIN/.virtio-nn-clippy.stamp"
    ver="$(cat "$TOOLCHAIN/.virtio-nn-rust.stamp")"
    if [[ "$(cat "$stamp" 2>/dev/null)" == "$ver" ]] \
        && "$CLIPPY_WRAPPER" --version >/dev/null 2>&1; then
        log "kernel clippy: present ($("$CLIPPY_WRAPPER" --version))"
        return
    fi
    local debs="$TOOLCHAIN/debs-clippy"
    rm -rf "$debs"
    mkdir -p "$debs"
    log "kernel clippy: downloading rust-web-clippy $ver"
    if ! (cd "$debs" && apt-get download -qq -o APT::Sandbox::User=root "rust-web-clippy=$ver"); then
        apt_update_once
        (cd "$debs" && apt-get download -qq -o APT::Sandbox::User=root "rust-web-clippy=$ver") \
            || die "cannot download rust-web-clippy=$ver (the clippy of the kernel's rustc-web)"
    fi
    dpkg-deb -x "$debs"/rust-web-clippy_*.deb "$RUST_PREFIX"
    rm -rf "$debs"
    local real libdir
    real="$(find "$RUST_PREFIX" -type f -name clippy-driver -perm -u+x | head -n1)"
    [[ -n $real ]] || die "no clippy-driver in rust-web-clippy $ver"
    libdir="$(find "$RUST_PREFIX" -name 'librustc_driver-*.so' -printf '%h\n' | sort -u | paste -sd:)"
    cat >"$CLIPPY_WRAPPER" <<EOF
#!/bin/sh
# Generated by scripts/setup-host.sh: run the extracted Debian clippy-driver ($ver).
LD_LIBRARY_PATH="$libdir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$real" "\$@"
EOF
    chmod +x "$CLIPPY_WRAPPER"
    # clippy 0.1.N goes with rustc 1.N.
    local cv rv
    cv="$("$CLIPPY_WRAPPER" --version | sed -n 's/^clippy 0\.1\.\([0-9]*\).*/\1/p')"
    rv="$("$RUSTC_WRAPPER" --version | sed -n 's/^rustc 1\.\([0-9]*\)\..*/\1/p')"
    [[ -n $cv && $cv == "$rv" ]] \
        || die "clippy-driver ($("$CLIPPY_WRAPPER" --version 2>&1)) does not match $("$RUSTC_WRAPPER" --version)"
    echo "$ver" >"$stamp"
    log "kernel clippy: ready ($("$CLIPPY_WRAPPER" --version))"
}

setup_bindgen() {
    if [[ -x $BINDGEN ]] && "$BINDGEN" --version 2>/dev/null | grep -q " $BINDGEN_VERSION\$"; then
        log "bindgen: present ($("$BINDGEN" --version))"
        return
    fi
    command -v cargo >/dev/null || die "cargo not found (needed to build bindgen-cli)"
    log "bindgen: cargo install --locked bindgen-cli $BINDGEN_VERSION (~1-2 min)"
    LIBCLANG_PATH="$LIBCLANG_PATH" cargo install --locked --quiet \
        --root "$TOOLCHAIN/bindgen" bindgen-cli --version "$BINDGEN_VERSION"
    LIBCLANG_PATH="$LIBCLANG_PATH" "$BINDGEN" --version >/dev/null || die "bindgen does not run"
    log "bindgen: ready ($("$BINDGEN" --version))"
}

# ---------------------------------------------------------------------------
log "cache: $CACHE"
install_host_packages
setup_qemu_root
verify_qemu
setup_rust
setup_kernel_clippy
setup_bindgen
log "host setup done (run scripts/build-kernel.sh next; it checks 'make rustavailable')"
