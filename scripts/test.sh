#!/usr/bin/env bash
# Install what the tests need, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev,trl,gguf,tensorboard
exec .venv/bin/python -m pytest -q "$@"
