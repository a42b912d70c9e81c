#!/usr/bin/env bash
# The IR principles on a real instruct LLM: configs/ablations/smollm2_{objective,inclusiveness}.yaml
# (SmolLM2-135M-Instruct on chat_arithmetic, 3 seeds, one iteration) into one sweep directory, so the
# shared lambdarank K = 8 cell and the initial evaluation run once. Two lanes, one per core; a run one
# lane has claimed is left to it. About 40 minutes on 2 idle cores. Rerun to resume.
# Tables (mean, 95% interval over seeds, paired tests against the baseline cell): sweeps/smollm2/<grid name>.md
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev,gguf
bash scripts/fetch-smollm2.sh
out=${1:-sweeps/smollm2}
lane() { for g in "$@"; do OMP_NUM_THREADS=1 .venv/bin/larpo sweep "configs/ablations/$g.yaml" --out "$out" --quiet; done; }
lane smollm2_objective &
lane smollm2_inclusiveness smollm2_objective &
wait
