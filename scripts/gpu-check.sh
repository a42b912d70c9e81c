#!/usr/bin/env bash
# larpo on a GPU in one call (about 7 minutes on one H200, measured), ending with a markdown table:
#   bash scripts/gpu-check.sh [--smoke] [--logs DIR] [--parts peak,train,sample,default,tests]
# Parts, each time-boxed (seconds: PEAK_S, TRAIN_S, SAMPLE_S, DEFAULT_S, TESTS_S), each with its log in
# DIR (default runs/gpu-check/<UTC time>): the matmul peak; table-1 training rows in one process for
# SmolLM2-135M's shape and a 1B Llama (larpo shared / unshared prompt, TRL DPOTrainer as shipped, MFU;
# bench/gpu_check.py); sampling prefilled once vs HF generate on SmolLM2's shape
# (bench/sample_throughput.py); then, side by side, the embedded default (`larpo run`) and the test
# suite (pytest-xdist when installed; real_model tests need the network and are left out).
# --smoke runs the same plumbing on a CPU in a few minutes: shrunk shapes, a small default, a few test
# files; CI runs it. Its numbers mean nothing. --parts runs some parts only (to rerun one that failed);
# TESTS="pytest arguments" replaces the test selection, TEST_WORKERS=N sets pytest-xdist's workers (0: none).
# The exit status is 1 when a part failed or timed out.
# Python: $PYTHON, else .venv/bin/python, else python3. A machine without network that lacks packages:
# WHEELS=DIR installs the wheels in DIR into a temporary directory first (docs/performance.md, "GPU").
set -uo pipefail
cd "$(dirname "$0")/.."
smoke=0
logs=""
parts=peak,train,sample,default,tests
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --logs) logs="${2:?--logs needs a directory}"; shift ;;
    --parts) parts="${2:?--parts needs a comma-separated list}"; shift ;;
    *) echo "usage: bash scripts/gpu-check.sh [--smoke] [--logs DIR] [--parts peak,train,sample,default,tests]" >&2; exit 2 ;;
  esac
  shift
done
logs="${logs:-runs/gpu-check/$(date -u +%Y%m%dT%H%M%SZ)$([ "$smoke" = 1 ] && echo -smoke)}"
mkdir -p "$logs"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
if [ -n "${WHEELS:-}" ]; then
  site="$(mktemp -d)"
  "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$WHEELS"/*.whl > "$logs/setup.log" 2>&1 \
    || { echo "gpu-check: installing the wheels in $WHEELS failed: $logs/setup.log" >&2; exit 1; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if ! "$py" -c "import torch, transformers, accelerate, peft, trl, larpo.cli" >> "$logs/setup.log" 2>&1; then
  echo "gpu-check: $py cannot import larpo and what it needs: $logs/setup.log" >&2
  exit 1
fi
"$py" -c "import torch; print('gpu-check:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device (a CPU run)')" >&2

part() {  # part NAME SECONDS COMMAND...: run it time-boxed, its output to NAME.log, "NAME EXIT-STATUS" to status
  local name="$1" seconds="$2" start=$SECONDS
  shift 2
  case ",$parts," in *",$name,"*) ;; *) return 0 ;; esac
  timeout -k 10 "$seconds" "$@" > "$logs/$name.log" 2>&1
  local code=$?
  echo "$name $code" >> "$logs/status"
  echo "gpu-check: $name: exit $code after $((SECONDS - start)) s (limit $seconds s)" >&2
}

if [ "$smoke" = 1 ]; then
  train=(--smoke); sample=(--smoke)
  default=(seed=3 task.digits=2 task.n_train=400 task.n_eval=40 model.hidden_size=32 model.num_layers=2
           model.num_heads=2 model.intermediate_size=64 sft.max_steps=60 sft.eval_every=30 sft.eval_prompts=20
           sampling.k=4 loop.iterations=1 loop.prompts_per_iteration=16 eval.n_prompts=40 eval.samples=2)
  tests=(tests/test_logprobs.py tests/test_models.py)
else
  train=(); sample=(--model smollm2-shape --prompts 64 --ks 8 --repeats 3)
  default=()
  tests=(-m "not real_model" tests)
fi
if [ -n "${TESTS:-}" ]; then read -r -a tests <<< "$TESTS"; fi
xdist=()
if [ "${TEST_WORKERS:-12}" != 0 ] && "$py" -c "import xdist" 2>/dev/null; then xdist=(-n "${TEST_WORKERS:-12}"); fi

part peak "${PEAK_S:-30}" "$py" bench/gpu_check.py peak
part train "${TRAIN_S:-150}" "$py" bench/gpu_check.py train ${train[@]+"${train[@]}"}
part sample "${SAMPLE_S:-60}" "$py" bench/sample_throughput.py --result "${sample[@]}"
run_dir="$(mktemp -d)/default"
part default "${DEFAULT_S:-240}" "$py" bench/gpu_check.py default "$run_dir" ${default[@]+"${default[@]}"} &
TORCHINDUCTOR_COMPILE_THREADS=1 part tests "${TESTS_S:-270}" "$py" -m pytest -v --tb=short -p no:cacheprovider ${xdist[@]+"${xdist[@]}"} "${tests[@]}" &
wait
"$py" bench/gpu_check.py table "$logs" | tee "$logs/table.md"
echo "gpu-check: logs in $logs" >&2
if grep -qv ' 0$' "$logs/status"; then
  echo "gpu-check: a part failed or timed out (see the table)" >&2
  exit 1
fi
