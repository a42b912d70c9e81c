#!/usr/bin/env bash
# Re-measure the paper's IR principles: the tiny-model grids of configs/ablations/ at 5 seeds, into one
# sweep directory (equal configs run once across grids; SFT checkpoints shared per seed). Two lanes
# run side by side, one per core; a run one lane has claimed is left to it. Rerun to resume.
# Tables: sweeps/ablations/<grid>.md; for docs: .venv/bin/python bench/findings.py > docs/findings-tables.md
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev
out=${1:-sweeps/ablations}
lane() { for g in "$@"; do OMP_NUM_THREADS=1 .venv/bin/larpo sweep "configs/ablations/$g.yaml" --out "$out" --quiet; done; }
lane memorization negatives objective sft_vs_final &
lane inclusiveness temperature reference &
wait
