#!/usr/bin/env bash
# The benchmarks of docs/performance.md in one command, from a fresh clone:
#   bash scripts/bench.sh            # the full run (about 1.5 hours on 2 idle CPU cores)
#   bash scripts/bench.sh --quick    # 12 minutes on 2 idle CPU cores (measured)
#   bash scripts/bench.sh --smoke    # everything shrunk: checks the plumbing, measures nothing
# Installs larpo with the bench extra (trl) through scripts/install.sh, fetches
# SmolLM2-135M-Instruct (scripts/fetch-smollm2.sh; if that fails, training uses a from-config
# model of its shape and the sampling benchmark is skipped), then runs bench/train_throughput.py
# and bench/sample_throughput.py. Their tables go to the terminal and to
# runs/bench/<UTC time>[-quick|-smoke].md. THREADS=N sets torch's threads (default: torch's choice).
# Run it on an otherwise idle machine: on shared cores the timings mean nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=()
case "${1:-}" in
  --quick|--smoke) mode=("$1") ;;
  "") ;;
  *) echo "usage: bash scripts/bench.sh [--quick|--smoke]" >&2; exit 2 ;;
esac
threads=()
if [ -n "${THREADS:-}" ]; then threads=(--threads "$THREADS"); fi

bash scripts/install.sh dev,gguf,bench
sample=1
if ! bash scripts/fetch-smollm2.sh; then
  echo "bench: SmolLM2 not fetched: training uses a from-config model of its shape; sampling is skipped" >&2
  sample=0
fi
mkdir -p runs/bench
out="runs/bench/$(date -u +%Y%m%dT%H%M%SZ)${mode[0]:+-${mode[0]#--}}.md"
{
  echo "# larpo benchmarks: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), ${mode[0]:-full run}"
  echo
  echo "## Training"
  .venv/bin/python bench/train_throughput.py ${mode[@]+"${mode[@]}"} ${threads[@]+"${threads[@]}"}
  if [ "$sample" = 1 ] || [ "${mode[0]:-}" = --smoke ]; then
    echo
    echo "## Sampling"
    .venv/bin/python bench/sample_throughput.py ${mode[@]+"${mode[@]}"} ${threads[@]+"${threads[@]}"}
  fi
} | tee "$out"
echo "bench: tables written to $out" >&2
