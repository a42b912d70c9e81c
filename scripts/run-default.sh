#!/usr/bin/env bash
# Install larpo (once) and run the embedded default: `larpo run` with no arguments.
# Extra arguments go to `larpo run`, e.g. `bash scripts/run-default.sh train.loss=listmle`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev
exec .venv/bin/larpo run "$@"
