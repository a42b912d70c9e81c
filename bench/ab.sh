#!/usr/bin/env bash
# A/B of larpo's training phase between two commits, in fresh processes, alternating sides:
#   bash bench/ab.sh OLD NEW [ROUNDS] [WORKER ...]
# Each side runs from a git worktree of its commit (under a temporary directory), with this
# checkout's .venv and models/; one line per round, side and worker: phase seconds and the matmul
# peak of that process (GFLOP/s: a slow host shows there). Workers are bench/train_throughput.py's
# --worker names (default: 20M/larpo-shared smollm2/larpo-shared), in its --quick shape.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: bash bench/ab.sh OLD NEW [ROUNDS] [WORKER ...]" >&2; exit 2; }
old=$1 new=$2 rounds=${3:-5}
shift $(( $# < 3 ? $# : 3 ))
workers=("$@")
[ $# -gt 0 ] || workers=(20M/larpo-shared smollm2/larpo-shared)
tmp=$(mktemp -d)
trap 'git worktree remove --force "$tmp/old" 2>/dev/null; git worktree remove --force "$tmp/new" 2>/dev/null; rm -rf "$tmp"' EXIT
git worktree add -q --detach "$tmp/old" "$old"
git worktree add -q --detach "$tmp/new" "$new"
for round in $(seq "$rounds"); do
  for side in old new; do
    for w in "${workers[@]}"; do
      line=$(PYTHONPATH="$tmp/$side/src:$tmp/$side/bench" TQDM_DISABLE=1 .venv/bin/python "$tmp/$side/bench/train_throughput.py" \
               --quick --repeats 1 --worker "$w" 2>/dev/null | grep '^RESULT ')
      echo "$round $side $w $(python3 -c "import json,sys; r=json.loads(sys.argv[1][7:]); print(round(r['phase_s'], 3), round(r['peak_flops'] / 1e9))" "$line")"
    done
  done
done
