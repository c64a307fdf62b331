#!/usr/bin/env bash
# scripts/demo.sh — the virtio-nn demo on a fresh machine.
#
# Usage: scripts/demo.sh [--shell] [--model FILE]
#   (default)  builds what is missing (cached afterwards), starts the daemon
#              with the model, boots a QEMU guest with the driver, runs
#                echo 1,2,...,16 > /proc/neural_network/predict
#                cat /proc/neural_network/predict
#              in it (and the same through predict_q16), prints the guest's
#              answers next to nn-core's on the host (tests/avocado/demo.py,
#              with the guest tests' harness), and shuts everything down.
#   --shell    the same set-up, then leaves you at the guest's shell on this
#              terminal (`reboot -f` in the guest ends it; the daemon stops).
#   --model F  serve this model file (default weights/default.safetensors).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

shell=0 model="$REPO/weights/default.safetensors"
while (($#)); do
    case "$1" in
        --shell) shell=1; shift ;;
        --model) [[ $# -ge 2 ]] || die "--model needs a file"; model="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[[ -f $model ]] || die "no model file at $model"

"$REPO/scripts/build.sh"

if ((!shell)); then
    # tests/avocado/demo.py: the guest tests' harness (nnlib), which needs
    # qemu.qmp from the avocado venv
    PY="$("$REPO/scripts/setup-avocado.sh")"
    exec "$PY" "$REPO/tests/avocado/demo.py" --kernel "$KERNEL_IMAGE" --initrd "$INITRAMFS" "$model"
fi

dir="$(mktemp -d "${TMPDIR:-/tmp}/virtio-nn-demo.XXXXXX")"
"$REPO/target/release/vhost-user-nn" --socket-path "$dir/nn.sock" --model "$model" \
    2>"$dir/daemon.log" &
daemon=$!
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do [[ -S $dir/nn.sock ]] && break; sleep 0.1; done
[[ -S $dir/nn.sock ]] || { cat "$dir/daemon.log" >&2; die "the daemon did not start"; }
log "daemon log: $dir/daemon.log; guest shell follows (reboot -f to leave)"
"$REPO/scripts/qemu.sh" --socket "$dir/nn.sock"
