#!/usr/bin/env bash
# scripts/check-extra.sh — the crates outside the main workspace, which
# `cargo test --workspace` never builds (called by scripts/test.sh):
#
#  1. nn-core/bench (its own workspace: tract, ort): cargo check --all-targets
#  2. backend/fuzz (cargo-fuzz crate, its own workspace): cargo check of every
#     fuzz target with the stable toolchain
#  3. the backend for aarch64 (cargo clippy --all-targets -D warnings, no
#     linking, so no cross compiler): its seccomp allow lists are per
#     architecture (aarch64 has no open, poll, epoll_wait, unlink, mkdir,
#     rmdir, fork...), and only a build for it shows a name it lacks. rustup
#     installs the target's standard library if missing; without it the
#     script fails.
#  4. if a nightly toolchain is available ($VIRTIO_NN_FUZZ_TOOLCHAIN, default
#     nightly; rustup installs it if missing and the Rust distribution
#     server answers): cargo-fuzz (installed into
#     $CACHE/cargo-fuzz if missing) builds the targets with AddressSanitizer
#     and runs each for $VIRTIO_NN_FUZZ_SECS seconds (default 20); the
#     executions reached are printed per target, and a crash fails the run.
#     Without nightly the smoke runs are skipped with a message saying so
#     (cargo check still ran).
#
# Everything it builds lives under $CACHE (target directories, the fuzz
# corpora, which grow from run to run, crash artifacts and libFuzzer logs).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

FUZZ_SECS="${VIRTIO_NN_FUZZ_SECS:-20}"
[[ $FUZZ_SECS =~ ^[1-9][0-9]*$ ]] || die "VIRTIO_NN_FUZZ_SECS must be a number of seconds"
EXTRA="$CACHE/extra"
NIGHTLY="${VIRTIO_NN_FUZZ_TOOLCHAIN:-nightly}"
CARGO_FUZZ_VERSION=0.13.2
CARGO_FUZZ_ROOT="$CACHE/cargo-fuzz"
CARGO_FUZZ="$CARGO_FUZZ_ROOT/bin/cargo-fuzz"

log "nn-core/bench: cargo check (own workspace; tract, ort)"
CARGO_TARGET_DIR="$EXTRA/target-bench" \
    cargo check --quiet --locked --all-targets --manifest-path nn-core/bench/Cargo.toml

log "backend/fuzz: cargo check of the fuzz targets (own workspace)"
CARGO_TARGET_DIR="$EXTRA/target-fuzz-check" \
    cargo check --quiet --locked --bins --manifest-path backend/fuzz/Cargo.toml

AARCH64=aarch64-unknown-linux-gnu
if ! rustup target list --installed 2>/dev/null | grep -qx "$AARCH64"; then
    log "rustup target add $AARCH64"
    timeout 300 rustup target add "$AARCH64" >/dev/null 2>&1 ||
        die "cannot install the $AARCH64 target (rustup target add $AARCH64); the aarch64" \
            "build of the backend (per-architecture seccomp lists) is not checked"
fi
log "backend: cargo clippy for $AARCH64 (per-architecture seccomp lists)"
CARGO_TARGET_DIR="$EXTRA/target-aarch64" \
    cargo clippy --quiet --locked -p vhost-user-nn --all-targets --target "$AARCH64" -- -D warnings

if ! rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1 &&
    ! timeout 300 rustup toolchain install "$NIGHTLY" --profile minimal >/dev/null 2>&1; then
    log "fuzz smoke runs SKIPPED: no $NIGHTLY toolchain here and rustup cannot install it" \
        "(cargo-fuzz needs nightly); the fuzz targets were only compiled (cargo check)"
    exit 0
fi
log "fuzz toolchain: $(rustup run "$NIGHTLY" rustc --version)"

if [[ ! -x $CARGO_FUZZ ]] || ! "$CARGO_FUZZ" --version | grep -qF " $CARGO_FUZZ_VERSION"; then
    log "cargo-fuzz: cargo install --locked cargo-fuzz $CARGO_FUZZ_VERSION (~2 min)"
    cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION" \
        --root "$CARGO_FUZZ_ROOT"
fi

# cargo fuzz, from backend/ (whose fuzz/ it finds), with the nightly
# toolchain; its default sanitizer is ASan.
fuzz() {
    (cd backend && CARGO_TARGET_DIR="$EXTRA/target-fuzz" \
        ${FUZZ_TIMEOUT:+timeout "$FUZZ_TIMEOUT"} rustup run "$NIGHTLY" "$CARGO_FUZZ" "$@")
}

mapfile -t targets < <(fuzz list)
((${#targets[@]})) || die "cargo fuzz list: no fuzz targets in backend/fuzz"
log "backend/fuzz: cargo fuzz build (nightly, AddressSanitizer): ${targets[*]}"
fuzz build --debug-assertions

summary=()
for t in "${targets[@]}"; do
    corpus="$EXTRA/fuzz/corpus/$t" artifacts="$EXTRA/fuzz/artifacts/$t" flog="$EXTRA/fuzz/$t.log"
    mkdir -p "$corpus" "$artifacts"
    log "fuzz $t for ${FUZZ_SECS} s (corpus $corpus)"
    rc=0
    FUZZ_TIMEOUT=$((FUZZ_SECS + 300)) fuzz run --debug-assertions "$t" "$corpus" -- \
        -max_total_time="$FUZZ_SECS" -artifact_prefix="$artifacts/" -print_final_stats=1 \
        >"$flog" 2>&1 || rc=$?
    runs="$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 runs in \2 s/p' "$flog" | tail -n 1)"
    if ((rc != 0)) || [[ -z $runs ]]; then
        tail -n 40 "$flog" >&2
        die "fuzz target $t failed (exit $rc; log $flog, artifacts in $artifacts)"
    fi
    cov="$(grep -o 'cov: [0-9]*' "$flog" | tail -n 1)"
    summary+=("$t: $runs, ${cov:-cov: ?}, corpus $(find "$corpus" -type f | wc -l) inputs")
done
# cargo fuzz makes fuzz/artifacts/<target> even when told to put them elsewhere
find backend/fuzz/artifacts -depth -type d -empty -delete 2>/dev/null || true
log "fuzz smoke runs (executions reached):"
printf '    %s\n' "${summary[@]}" >&2
