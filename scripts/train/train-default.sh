#!/usr/bin/env bash
# Trains the default 16-32-4 model and writes it through the same import path
# a user would use (see weights/README.md):
#   1. a Python venv under ~/.cache/virtio-nn/venv with the pinned packages of
#      requirements.txt (numpy, scikit-learn, safetensors; CPU only, no
#      dataset download: the data ships in scikit-learn)
#   2. train_default.py: weights/default-float.safetensors (float state_dict)
#      and weights/default-test.csv (held-out test split)
#   3. nn-model import-safetensors -> weights/default.safetensors (Q16.16)
#   4. nn-model eval: the fixed-point accuracy on the test split
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${VIRTIO_NN_VENV:-$HOME/.cache/virtio-nn/venv}"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet -r "$here/requirements.txt"
cd "$repo"
"$venv/bin/python" "$here/train_default.py" --out-dir weights
chmod 644 weights/default-float.safetensors
cargo build --quiet --release -p nn-core --bin nn-model
target/release/nn-model import-safetensors weights/default-float.safetensors \
    --out weights/default.safetensors --name "default-16-32-4 (digits 0-3, 4x4 thumbnails)"
target/release/nn-model eval weights/default.safetensors --csv weights/default-test.csv
