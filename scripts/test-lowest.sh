#!/usr/bin/env bash
# Run the test suite on the lowest versions pyproject.toml declares, in .venv-lowest: every dependency
# and the extras of scripts/constraints.py's LOWEST_EXTRAS at their lower bounds (its `lowest` command),
# torch on the CPU build of scripts/install.sh when no torch is importable. Tests of trl (whose lower
# bound is the version constraints.txt pins) are skipped there. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-lowest/bin/python ]; then
  python3 -m venv .venv-lowest
fi
py=.venv-lowest/bin/python
if ! "$py" -c "import torch" 2>/dev/null; then
  "$py" -m pip install -q --upgrade pip
  "$py" -m pip install -q torch==2.13.0
fi
lowest=$(mktemp)
trap 'rm -f "$lowest"' EXIT
python3 scripts/constraints.py lowest > "$lowest"
"$py" -m pip install -q -c "$lowest" -e ".[$(python3 scripts/constraints.py lowest-extras)]"
"$py" -m pip list --format=freeze 2>/dev/null | grep -iE "^(torch|transformers|accelerate|peft|tokenizers|datasets)==" | tr '\n' ' '
echo
exec "$py" -m pytest -q "$@"
