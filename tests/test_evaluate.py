"""larpo.evaluate.retriever_eval and `larpo eval` on the tiny random policy."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from larpo.cli import main
from larpo.config import RerankerConfig, TaskConfig
from larpo.encoding import encode_prompt
from larpo.evaluate import format_table, greedy_eval, retriever_eval
from larpo.models import load_policy
from larpo.rerankers import build_reranker
from larpo.sampling import generate
from larpo.tasks import build_task


@pytest.fixture(scope="module")
def task():
    return build_task(TaskConfig(digits=1, n_train=20, n_eval=10))


def _in_unit(stat):
    return 0 <= stat["low"] <= stat["mean"] <= stat["high"] <= 1


def test_retriever_eval_has_every_block(tiny_model_dir, task):
    model, tokenizer = load_policy(tiny_model_dir)
    reranker = build_reranker(RerankerConfig(kind="rule"), task)
    examples = task.eval_examples()[:6]
    result = retriever_eval(model, tokenizer, task, examples, reranker, n_samples=8, temperatures=[0.7, 1.2],
                            max_new_tokens=4, batch_size=16, seed=0, baseline=(model, tokenizer))
    result = json.loads(json.dumps(result, allow_nan=False))  # strict JSON
    assert result["n_prompts"] == 6
    assert result["greedy"]["n_prompts"] == 6 and result["greedy"]["n_samples"] == 1
    assert _in_unit(result["greedy"]["exact_accuracy"]) and _in_unit(result["greedy"]["gold_reward"])
    assert set(result["sampled"]) == {"0.7", "1.2"}
    for block in result["sampled"].values():
        assert block["n_prompts"] == 6 and block["n_samples"] == 8
        assert list(block["pass_at_k"]) == ["1", "2", "4", "8"]
        assert list(block["best_of_n"]) == ["1", "2", "4", "8"]
        means = [s["mean"] for s in block["pass_at_k"].values()]
        assert all(a <= b + 1e-12 for a, b in zip(means, means[1:]))  # non-decreasing in k
        assert block["best_of_n"]["1"]["mean"] == pytest.approx(block["gold_reward"]["mean"])
        assert all(_in_unit(s) for s in [*block["pass_at_k"].values(), *block["best_of_n"].values()])
        ranking = block["ranking"]
        assert ranking["n_samples"] == 8 and 0 <= ranking["n_prompts"] <= 6
        assert 1 <= ranking["mean_distinct_candidates"] <= 8
        for k in ("ndcg@1", "ndcg@5", "ndcg", "mrr"):  # undefined (None) exactly when no prompt has an order
            assert _in_unit(ranking[k]) if ranking["n_prompts"] else ranking[k]["mean"] is None
    base = result["baseline"]
    assert base["n_prompts"] == 6 and base["n_samples"] == 1
    # the same policy against itself ties on every prompt
    assert base["win_rate_reranker"]["mean"] == 0.5 and base["win_rate_gold"]["mean"] == 0.5
    assert "pass@8" in format_table(result) and "win rate gold" in format_table(result)


def test_retriever_eval_agrees_with_greedy_eval(tiny_model_dir, task):
    model, tokenizer = load_policy(tiny_model_dir)
    examples = task.eval_examples()[:5]
    result = retriever_eval(model, tokenizer, task, examples, build_reranker(RerankerConfig(), task), 2, [1.0], 4)
    old = greedy_eval(model, tokenizer, task, examples, 4)
    assert result["greedy"]["exact_accuracy"]["mean"] == pytest.approx(old["exact_accuracy"])
    assert result["greedy"]["gold_reward"]["mean"] == pytest.approx(old["gold_reward"])
    assert "baseline" not in result


def test_cli_eval_writes_json(tiny_model_dir, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("task: {digits: 1, n_train: 20, n_eval: 10}\nsampling: {max_new_tokens: 4}\n")
    out = tmp_path / "x.json"
    cmd = [sys.executable, "-m", "larpo.cli", "eval", str(tiny_model_dir), "--config", str(config),
           "--samples", "4", "--prompts", "5", "--temperatures", "1.0", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "pass@4" in proc.stdout and "95% CI" in proc.stdout
    result = json.loads(out.read_text())
    assert result["n_prompts"] == 5 and result["sampled"]["1.0"]["n_samples"] == 4


def test_cli_eval_loads_the_policy_in_model_dtype_with_its_token_limits(tiny_model_dir, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("task: {digits: 1, n_train: 20, n_eval: 10}\nsampling: {max_new_tokens: 4}\n"
                      "model: {dtype: bfloat16, max_prompt_tokens: 2}\n")
    out = tmp_path / "x.json"
    assert main(["eval", str(tiny_model_dir), "--config", str(config), "--samples", "2", "--prompts", "3", "--out", str(out)]) == 0
    settings = json.loads(out.read_text())["settings"]
    assert settings["dtype"] == "bfloat16" and settings["max_prompt_tokens"] == 2
    assert settings["truncated_prompt_encodings"] > 0  # prompts such as "3+4=" are cut to their last 2 tokens


@pytest.mark.parametrize("extra", [[], ["--temperatures", "0.5,x"], ["--samples", "0"]])
def test_cli_eval_user_errors(tmp_path, tiny_model_dir, capsys, extra):
    policy = tmp_path / "missing" if not extra else tiny_model_dir
    assert main(["eval", str(policy), "--out", str(tmp_path / "x.json"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("larpo: error:") and err.count("\n") == 1
    assert not (tmp_path / "x.json").exists()


def _logp64(model, prompt_ids, response_ids) -> float:
    """log π(response | prompt) from one unpadded forward pass, summed in float64."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logps = torch.log_softmax(logits[:-1], dim=-1)
    targets = ids[0, 1:]
    return float(logps[torch.arange(len(targets)), targets][len(prompt_ids) - 1 :].sum())


def _dcg(order_gains, k):
    return sum(g / math.log2(i + 2) for i, g in enumerate(order_gains[:k]))


@pytest.mark.parametrize("draw", ["multinomial", "inverse_cdf"])
def test_retriever_eval_samples_with_the_draw_it_is_given(tiny_model_dir, task, draw):
    model, tokenizer = load_policy(tiny_model_dir)
    examples = task.eval_examples()[:8]
    result = retriever_eval(model, tokenizer, task, examples, build_reranker(RerankerConfig(), task), n_samples=4,
                            temperatures=[1.0], max_new_tokens=4, batch_size=8, seed=5, draw=draw)
    samples = generate(model, tokenizer, [ex.prompt for ex in examples], 4, 1.0, 4, batch_size=2, seed=5, draw=draw)
    lengths = [len(s.text) for group in samples for s in group]
    assert result["settings"]["draw"] == draw
    assert result["sampled"]["1.0"]["mean_length"] == pytest.approx(sum(lengths) / len(lengths))


def test_ranking_metrics_and_mean_length_equal_an_independent_recomputation(tiny_model_dir, task):
    """NDCG@1/@5/full, MRR and mean length recomputed by hand from the same samples."""
    model, tokenizer = load_policy(tiny_model_dir)
    examples = task.eval_examples()[:8]
    prompts = [ex.prompt for ex in examples]
    result = retriever_eval(model, tokenizer, task, examples, build_reranker(RerankerConfig(), task), n_samples=8,
                            temperatures=[1.0], max_new_tokens=4, batch_size=16, seed=3)
    samples = generate(model, tokenizer, prompts, 8, 1.0, 4, batch_size=2, seed=3)  # 16 // 8 prompts per call
    ndcg = {1: [], 5: [], None: []}
    rr = []
    eos = [tokenizer.eos_token_id]
    for prompt, group in zip(prompts, samples):
        distinct = list({(s.ids, s.finished): s for s in group}.values())  # distinct sampled sequences
        gains = [task.reward(prompt, s.text) for s in distinct]
        if len(set(gains)) < 2:
            continue
        prompt_ids = encode_prompt(tokenizer, prompt)
        logps = [_logp64(model, prompt_ids, list(s.ids) + (eos if s.finished else [])) for s in distinct]
        order = sorted(range(len(distinct)), key=lambda i: -logps[i])
        ideal = sorted(gains, reverse=True)
        for k in ndcg:
            kk = len(distinct) if k is None else k
            ndcg[k].append(_dcg([gains[i] for i in order], kk) / _dcg(ideal, kk))
        best = gains.index(max(gains))
        rr.append(1 / (order.index(best) + 1))
    ranking = result["sampled"]["1.0"]["ranking"]
    assert ranking["n_prompts"] == len(rr) > 0
    for k, values in ndcg.items():
        assert ranking["ndcg" if k is None else f"ndcg@{k}"]["mean"] == pytest.approx(sum(values) / len(values), abs=1e-9)
    assert ranking["mrr"]["mean"] == pytest.approx(sum(rr) / len(rr), abs=1e-9)
    lengths = [len(s.text) for group in samples for s in group]
    assert result["sampled"]["1.0"]["mean_length"] == pytest.approx(sum(lengths) / len(lengths))
