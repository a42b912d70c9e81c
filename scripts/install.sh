#!/usr/bin/env bash
# Create .venv (once) and install larpo into it, at the exact versions the test suite last passed with
# (constraints.txt; README "Install" says how to move to newer ones). Torch is pinned to the CPU build
# first when no torch is importable, so a fresh CPU machine never pulls a multi-GB CUDA build; a
# machine that already has torch keeps it. Pass extras as arguments, e.g. `bash scripts/install.sh
# dev,trl`; the default, dev,gguf, includes the gguf reader that `larpo import-gguf`
# (scripts/fetch-smollm2.sh) needs.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev,gguf}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
py=.venv/bin/python
if ! "$py" -c "import torch" 2>/dev/null; then
  "$py" -m pip install -q --upgrade pip
  "$py" -m pip install -q torch==2.13.0
fi
"$py" -m pip install -q -c constraints.txt -e ".[${extras}]"
