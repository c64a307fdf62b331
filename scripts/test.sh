#!/usr/bin/env bash
# scripts/test.sh — the whole test suite on a fresh machine.
#
# Builds what is missing (see build.sh), then runs:
#  1. rustfmt and clippy (warnings are errors)
#  2. the unit tests of every crate and the daemon's integration tests
#     (cargo test --workspace; backend/tests drive the daemon binary cargo
#     just built through a vhost-user test frontend)
#  3. nn-core without std (no_std + alloc build), and nn-core's tests for
#     aarch64 under qemu-user (the NEON kernel against the reference)
#  4. the guest driver suite (tests/guest): bad input, per-file answers,
#     concurrency, timeouts with late answers, hot-swap seen through the event
#     queue, rmmod under load, device unplug/replug with a daemon restart
#  5. the avocado smoke subset (scripts/matrix.sh --smoke, tests/avocado):
#     builds the debug kernel (KASAN + lockdep) and its module if missing
#     (~7-10 min once), then 3 cells x every test (~17 min). Its Functional
#     tests are the end-to-end checks: each starts the daemon, boots a QEMU
#     guest with the real driver and compares its /proc and /dev answers bit
#     for bit with nn-core on the host (whole-number, Q16.16, extreme and
#     saturating inputs), bad writes, rmmod/insmod
# Every test that boots a guest uses one harness, tests/avocado/nnlib.py.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

"$REPO/scripts/build.sh"

log "rustfmt + clippy"
cargo fmt --all -- --check
rustfmt --check --edition 2021 guest-driver/virtio_nn_main.rs   # the module and its files
"$REPO/scripts/clippy-module.sh"   # clippy on the module (make CLIPPY=1, kernel lints, -Dwarnings)
cargo clippy --quiet --workspace --all-targets -- -D warnings

log "unit tests"
cargo test --workspace

log "nn-core without std"
cargo build --quiet -p nn-core --no-default-features

log "nn-core on aarch64 under qemu-user (runs the NEON kernel)"
"$REPO/nn-core/scripts/test-aarch64.sh"
log "crates outside the workspace: nn-core/bench, backend/fuzz (cargo check; fuzz smoke runs with nightly); the backend for aarch64 (clippy)"; "$REPO/scripts/check-extra.sh"

log "guest driver suite (timeouts, hot-swap, unplug/replug, rmmod under load)"
PY="$("$REPO/scripts/setup-avocado.sh")"   # the harness (tests/avocado/nnlib.py) needs qemu.qmp
"$PY" "$REPO/tests/guest/run-guest-test.py"
log "guest driver suite again with 2 request queues and 2 vCPUs (per-CPU queues)"
"$PY" "$REPO/tests/guest/run-guest-test.py" --queues 2 --smp 2

log "avocado smoke subset (tests/avocado/smoke.yaml: plain + debug kernel cells; /proc, /dev and the API vs the host reference, bad input, rmmod/insmod, hot-swap, daemon restart, slow daemon, rmmod under load, reboot; the supervisor's worker killed and upgraded under load)"
"$REPO/scripts/matrix.sh" --smoke --build-debug
