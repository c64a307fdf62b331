#!/usr/bin/env bash
# Writes weights/default.safetensors: the default 16-32-4 model, trained on
# handwritten digits 0-3 (4x4 thumbnails) and imported through
# `nn-model import-safetensors` (see weights/README.md, the model card).
#
# The training itself is scripts/train/train-default.sh (Python venv with
# pinned numpy / scikit-learn / safetensors; the data ships in scikit-learn);
# with those versions the same command writes the same bytes.
set -euo pipefail
exec "$(dirname "$0")/train/train-default.sh" "$@"
