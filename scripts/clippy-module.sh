#!/usr/bin/env bash
# scripts/clippy-module.sh — clippy on the guest driver (virtio_nn.ko); any
# finding fails.
#
# Linux's `make CLIPPY=1` compiles the Rust crate with $(CLIPPY_DRIVER)
# instead of rustc, with the kernel's lint set (rust_common_flags in its
# top-level Makefile: clippy::all, undocumented_unsafe_blocks,
# unnecessary_safety_comment, unnecessary_safety_doc, ...). Those are
# warnings; KRUSTFLAGS=-Dwarnings here makes every warning (clippy's and
# rustc's) an error.
#
# The clippy-driver must be the one of the kernel's rustc, same version and
# build: it reads the kernel's core/kernel metadata and gets the flags the
# kernel chose for that rustc. The rustup clippy-driver (1.95) is not: it
# rejects -Zno-jump-tables, which arch/x86/Makefile passes to rustc < 1.93
# (CONFIG_X86_KERNEL_IBT; newer ones get -Cjump-tables=n), and could not read
# 1.85 metadata anyway. Debian builds rust-web-clippy with every rustc-web
# (1.85 in bookworm, 1.96 in bookworm-security); scripts/setup-host.sh
# extracts the one of the kernel toolchain's version beside it, and
# $CLIPPY_WRAPPER (scripts/lib.sh) runs it. No flag filtering is needed.
#
# Built from a copy in $CACHE/mod-clippy (guest-driver/ plus the nn-core
# files its crate root includes with #[path], in the repository's layout),
# so the repository's objects and .ko stay rustc's and nothing is rebuilt
# twice. Needs the built kernel tree ($KDIR, scripts/build-kernel.sh).
# Log: $OUT/module-clippy.log.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ -f $KDIR/Module.symvers ]] || die "no built kernel in $KDIR: run scripts/build.sh first"
"$CLIPPY_WRAPPER" --version >/dev/null 2>&1 \
    || die "no kernel clippy-driver ($CLIPPY_WRAPPER): run scripts/setup-host.sh"

# The driver's unsafe code lives in its binding layer (bind.rs, bind/): the
# files that hold its logic have none.
outside=$(cd "$REPO/guest-driver" && grep -rlw --include='*.rs' unsafe . \
    | sed 's|^\./||' | grep -v '^bind\(\.rs\|/\)\|^consumer/' | sort || true)
[[ -z $outside ]] || die "unsafe outside the guest driver's binding layer (bind/): $(echo $outside)"

COPY="$CACHE/mod-clippy"
# the nn-core files the crate root includes, from its #[path] lines
mapfile -t shared < <(sed -n 's|^#\[path = "\.\./\(nn-core/src/[a-z_]*\.rs\)"\]$|\1|p' \
    "$REPO/guest-driver/virtio_nn_main.rs")
rm -rf "$COPY"
mkdir -p "$COPY/guest-driver" "$COPY/nn-core/src" "$OUT"
# sources only: no objects or .ko of the plain build
tar -C "$REPO/guest-driver" --exclude='*.o' --exclude='*.ko' --exclude='*.mod' \
    --exclude='*.mod.c' --exclude='.*.cmd' --exclude='Module.symvers' \
    --exclude='modules.order' --exclude='.tmp*' --exclude='consumer' -cf - . \
    | tar -C "$COPY/guest-driver" -xf -
for f in "${shared[@]}"; do cp "$REPO/$f" "$COPY/$f"; done

LOGFILE="$OUT/module-clippy.log"
log "clippy on the guest driver ($("$CLIPPY_WRAPPER" --version), -Dwarnings; log: $LOGFILE)"
if ! kmake -C "$KDIR" M="$COPY/guest-driver" CLIPPY=1 CLIPPY_DRIVER="$CLIPPY_WRAPPER" \
    KRUSTFLAGS=-Dwarnings modules >"$LOGFILE" 2>&1; then
    # the findings, with paths of the repository rather than of the copy
    sed "s|$COPY/||g" "$LOGFILE" | grep -v '^make\|^  [A-Z]' >&2 || true
    die "clippy found problems in the guest driver (full log: $LOGFILE)"
fi
grep -q ' CLIPPY .*virtio_nn_main.o' "$LOGFILE" \
    || die "the Rust crate was not compiled through clippy (see $LOGFILE)"
log "guest driver: clippy clean"
