#!/usr/bin/env bash
# Writes weights/default.safetensors: the default 16-32-4 model.
#
# Until a trained model lands (see weights/README.md), the default model is a
# deterministic He-uniform initialisation from a fixed seed: the same command
# always writes the same bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --release -p nn-core --bin nn-model -- \
    generate --dims 16,32,4 --seed 2 --name "default-16-32-4 (seeded init, untrained)" \
    --out weights/default.safetensors
