"""Rerankers: the task's gold rule, a user callable, and a local HF reward model."""

from __future__ import annotations

import textwrap

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from larpo.config import ConfigError, RerankerConfig
from larpo.rerankers import CallableReranker, HFReranker, RuleReranker, build_reranker

from conftest import cpu_process_env

PROMPTS = ["1+2=", "123+456=", "98-7=", "5-999=", "0+0="]
RESPONSES = ["3", "579", "91", "-994", "00000"]


class LastDigitTask:
    """A stand-in task: reward 1 when the response ends in the prompt's first digit."""

    def reward(self, prompt: str, response: str) -> float:
        return 1.0 if response.endswith(prompt[0]) else 0.0


def test_rule_reranker_returns_the_task_rewards():
    reranker = build_reranker(RerankerConfig(kind="rule"), LastDigitTask())
    assert isinstance(reranker, RuleReranker)
    assert reranker.score(["1+2=", "5-1=", "9+9="], ["31", "4", "9"]) == [1.0, 0.0, 1.0]


# ------------------------------------------------------------------------------------------------
# callable


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        import torch

        def length(prompts, responses):
            return [float(len(r)) for r in responses]

        def as_tensor(prompts, responses):
            return torch.tensor([len(r) for r in responses], dtype=torch.float32)

        def one_short(prompts, responses):
            return [0.0] * (len(responses) - 1)

        def words(prompts, responses):
            return ["good"] * len(responses)

        def nan(prompts, responses):
            return [float("nan")] * len(responses)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def test_callable_reranker_calls_the_user_function(user_module):
    reranker = build_reranker(RerankerConfig(kind="callable", function=f"{user_module}:length"), None)
    assert isinstance(reranker, CallableReranker)
    assert reranker.score(PROMPTS, RESPONSES) == [1.0, 3.0, 2.0, 4.0, 5.0]


def test_callable_reranker_accepts_a_tensor(user_module):
    assert CallableReranker(f"{user_module}:as_tensor").score(PROMPTS, RESPONSES) == [1.0, 3.0, 2.0, 4.0, 5.0]


@pytest.mark.parametrize(
    ("name", "message"),
    [("one_short", "returned 4 rewards for 5 responses"), ("words", "'good', expected a finite number"),
     ("nan", "nan, expected a finite number")],
)
def test_callable_reranker_rejects_bad_output_naming_the_function(user_module, name, message):
    reranker = CallableReranker(f"{user_module}:{name}")
    with pytest.raises(ConfigError, match=f"reranker.function '{user_module}:{name}'.*{message}"):
        reranker.score(PROMPTS, RESPONSES)


def test_callable_reranker_reports_a_missing_function(user_module):
    with pytest.raises(ConfigError, match="reranker.function: module 'my_rewards' has no attribute 'absent'"):
        CallableReranker(f"{user_module}:absent")


# ------------------------------------------------------------------------------------------------
# hf


def reward_model(tokenizer, num_labels: int = 1) -> LlamaForSequenceClassification:
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    model = LlamaForSequenceClassification(config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # large weights, so that rewards are O(1) and differ between pairs
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3, generator=g)
    return model.eval()


@pytest.fixture
def reward_model_dir(tmp_path, tiny_tokenizer):
    model = reward_model(tiny_tokenizer)
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    return tmp_path, model


def one_at_a_time(model, ids: list[list[int]]) -> list[float]:
    with torch.no_grad():
        return [model(torch.tensor([row])).logits[0, 0].item() for row in ids]


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_hf_reranker_scores_equal_unbatched_forward(reward_model_dir, tiny_tokenizer, batch_size):
    path, model = reward_model_dir
    reranker = build_reranker(RerankerConfig(kind="hf", path=str(path), batch_size=batch_size), None)
    assert isinstance(reranker, HFReranker)
    expected = one_at_a_time(model, [tiny_tokenizer(p + r)["input_ids"] for p, r in zip(PROMPTS, RESPONSES)])
    scores = reranker.score(PROMPTS, RESPONSES)
    assert len(set(scores)) == len(scores)
    assert scores == pytest.approx(expected, abs=1e-5)


def test_hf_reranker_applies_the_chat_template(reward_model_dir, tiny_tokenizer):
    path, model = reward_model_dir
    reranker = HFReranker(str(path), batch_size=2)
    reranker.tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}={% endfor %}"
    expected = one_at_a_time(model, [tiny_tokenizer(f"{p}={r}=")["input_ids"] for p, r in zip(PROMPTS, RESPONSES)])
    assert reranker.score(PROMPTS, RESPONSES) == pytest.approx(expected, abs=1e-5)


def test_hf_reranker_scores_message_list_prompts_through_its_chat_template(reward_model_dir, tiny_tokenizer):
    path, model = reward_model_dir
    reranker = HFReranker(str(path), batch_size=2)
    reranker.tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}={% endfor %}"
    conversations = [[{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"}, {"role": "user", "content": p}]
                     for p in PROMPTS]
    expected = one_at_a_time(model, [tiny_tokenizer(f"1=2={p}={r}=")["input_ids"] for p, r in zip(PROMPTS, RESPONSES)])
    assert reranker.score(conversations, RESPONSES) == pytest.approx(expected, abs=1e-5)
    reranker.tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="chat template"):
        reranker.score(conversations[:1], RESPONSES[:1])


def test_hf_reranker_rejects_a_multi_label_classifier(tmp_path, tiny_tokenizer):
    reward_model(tiny_tokenizer, num_labels=2).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="reranker.path: .* 2 labels"):
        build_reranker(RerankerConfig(kind="hf", path=str(tmp_path)), None)


def test_hf_reranker_rejects_a_missing_directory(tmp_path):
    with pytest.raises(ConfigError, match="reranker.path: .* not a directory"):
        build_reranker(RerankerConfig(kind="hf", path=str(tmp_path / "absent")), None)


def test_hf_reranker_runs_in_the_dtype_it_is_given(reward_model_dir, tiny_tokenizer):
    path, model = reward_model_dir
    reranker = build_reranker(RerankerConfig(kind="hf", path=str(path), dtype="bfloat16"), None)
    assert reranker.model.dtype == torch.bfloat16
    scores = reranker.score(PROMPTS, RESPONSES)
    assert all(isinstance(s, float) for s in scores)
    want = build_reranker(RerankerConfig(kind="hf", path=str(path)), None).score(PROMPTS, RESPONSES)
    assert scores == pytest.approx(want, abs=0.1)  # bf16 rounding only
    default = build_reranker(RerankerConfig(kind="hf", path=str(path)), None, default_dtype="bfloat16")
    assert default.model.dtype == torch.bfloat16  # no reranker.dtype: the policy's


def test_scores_sharded_over_two_processes_equal_one_process_scores(reward_model_dir, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    path, _ = reward_model_dir
    worker = str(Path(__file__).parent / "score_worker.py")
    env = cpu_process_env()
    subprocess.run([sys.executable, worker, str(path), str(tmp_path / "one.json")], env=env, check=True, timeout=120)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", worker,
                          str(path), str(tmp_path / "two.json")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert two["processes"] == 2 and len(two["scores"]) == 2
    (want,) = one["scores"]
    assert len(want) == 14 and len(set(want)) > 1
    assert two["scores"][0] == two["scores"][1] == pytest.approx(want, abs=1e-6)  # every process gets every score
