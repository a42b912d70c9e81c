"""The policy judged on held-out prompts: greedy accuracy (:func:`greedy_eval`, used by the loop)
and the policy as a retriever with bootstrap intervals (:func:`retriever_eval`, ``larpo eval``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .encoding import encode_prompt, encode_response, length_limits, pad_id
from .io import write_json_atomic, write_jsonl_atomic
from .logprobs import collate_pairs, sequence_logps
from .metrics import HEADLINES, best_of_n, bootstrap_ci, mrr, ndcg_at_k, pass_at_k, wins
from .models import evaluating
from .rerankers import Reranker
from .sampling import Sample, generate
from .tasks import Example, Task
from .transfer import to_device


def _greedy(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, progress: bool = False) -> list[str]:
    """One greedy response per prompt (its text)."""
    samples = generate(model, tokenizer, prompts, 1, 0.0, max_new_tokens, batch_size=batch_size, progress=progress,
                       desc="greedy evaluation")
    return [group[0].text for group in samples]


def greedy_eval(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    max_new_tokens: int,
    batch_size: int = 64,
    progress: bool = False,
) -> dict:
    """:func:`score_responses` of the policy's greedy response to each of ``examples``."""
    prompts = [ex.prompt for ex in examples]
    return score_responses(task, prompts, _greedy(model, tokenizer, prompts, max_new_tokens, batch_size, progress))


def score_responses(task: Task, prompts: Sequence[str], responses: Sequence[str]) -> dict:
    """Exact accuracy (the task's ``correct``), mean gold reward and mean response length (characters);
    with ``strict_accuracy`` too where the task has a strict reading (an ``exact`` method: the reply is
    the answer and nothing else, as ``chat_arithmetic`` asks).

    ``per_prompt`` keeps each prompt's ``correct``, ``reward`` (and ``strict``), for paired tests
    between policies; ``responses`` the responses themselves, in the order of ``prompts``.
    """
    n = len(prompts)
    per_prompt = {"correct": [float(task.correct(p, r)) for p, r in zip(prompts, responses, strict=True)],
                  "reward": [task.reward(p, r) for p, r in zip(prompts, responses)]}
    scores = {"exact_accuracy": sum(per_prompt["correct"]) / n}
    if hasattr(task, "exact"):
        per_prompt["strict"] = [float(task.exact(p, r)) for p, r in zip(prompts, responses)]
        scores["strict_accuracy"] = sum(per_prompt["strict"]) / n
    return {**scores, "gold_reward": sum(per_prompt["reward"]) / n, "mean_length": sum(len(r) for r in responses) / n,
            "n_prompts": n, "per_prompt": per_prompt, "responses": list(responses)}


def eval_headline(scores: dict) -> dict:
    """A :func:`greedy_eval` result without its per-prompt lists: the row a metrics file logs."""
    return {k: v for k, v in scores.items() if k not in ("per_prompt", "responses")}


def save_greedy_eval(scores: dict, examples: Sequence[Example], out: Path) -> dict:
    """Write a :func:`greedy_eval` result: its responses to ``<out stem>.responses.jsonl`` (one row per
    prompt: id, prompt, response, reward, correct, and strict where scored), then the rest to ``out``
    (JSON, the stage's marker, last). Returns the result without the responses."""
    scores = dict(scores)
    responses = scores.pop("responses")
    per_prompt = scores["per_prompt"]
    strict = per_prompt.get("strict")
    rows = []
    for i, (ex, response) in enumerate(zip(examples, responses, strict=True)):
        row = {"prompt_id": ex.prompt_id, "prompt": ex.prompt, "response": response, "reward": per_prompt["reward"][i],
               "correct": bool(per_prompt["correct"][i])}
        rows.append(row if strict is None else {**row, "strict": bool(strict[i])})
    write_jsonl_atomic(out.with_suffix(".responses.jsonl"), rows)
    write_json_atomic(out, scores)
    return scores


# ---------------------------------------------------------------------------------------------
# the policy as a retriever: pass@k, Best-of-N, NDCG/MRR of its log-prob order, win rate


def _stat(values: Sequence[float], seed: int) -> dict:
    """Mean over prompts with its 95 % bootstrap interval; None entries when there are no prompts."""
    mean, low, high = bootstrap_ci(list(values), seed=seed)
    clean = lambda x: None if math.isnan(x) else x  # noqa: E731 — strict JSON has no NaN
    return {"mean": clean(mean), "low": clean(low), "high": clean(high), "n_prompts": len(values)}


def _powers_of_two(limit: int, cap: int | None = None) -> list[int]:
    out, k = [], 1
    while k <= limit and (cap is None or k <= cap):
        out.append(k)
        k *= 2
    return out


@torch.no_grad()
def _response_logps(model, tokenizer, prompts: list, samples: list[Sample], batch_size: int,
                    progress: bool = False) -> list[float]:
    """Summed log π(y|x) of each sampled response, its drawn ids (+ EOS if it finished) (``sequence_logps``)."""
    pad = pad_id(tokenizer)
    pairs = [(encode_prompt(tokenizer, p), encode_response(tokenizer, s.text, s.ids, s.finished))
             for p, s in zip(prompts, samples)]
    out: list[float] = []
    with evaluating(model):
        for start in tqdm(range(0, len(pairs), batch_size), desc="retriever evaluation: log-probs", unit="batch",
                          disable=not progress):
            batch = collate_pairs(pairs[start : start + batch_size], pad)
            out.extend(sequence_logps(model, to_device(batch, model.device)).tolist())
    return out


def retriever_eval(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    reranker: Reranker,
    n_samples: int,
    temperatures: Sequence[float],
    max_new_tokens: int,
    batch_size: int = 64,
    seed: int = 0,
    baseline: tuple[PreTrainedModel, PreTrainedTokenizerBase] | None = None,
    progress: bool = False,
    draw: str = "inverse_cdf",
) -> dict:
    """The policy judged as a retriever on ``examples``; a JSON-serialisable dict (see docs/evaluation.md).

    ``progress`` shows a bar for each of its passes (greedy, sampling per temperature, log-probs).

    Every metric is a mean over prompts with a 95 % percentile bootstrap interval
    (``{"mean", "low", "high", "n_prompts"}``); every block states its ``n_prompts`` and
    ``n_samples`` (responses per prompt). ``sampled`` is keyed by ``str(float(temperature))``.
    ``batch_size`` bounds the sequences per forward pass: prompts per greedy batch, prompts × samples
    per sampling batch, (prompt, response) pairs per log-prob batch. The temperature with index i
    samples with seed ``seed + i``, each token drawn as ``draw`` says (:func:`larpo.sampling.generate`).
    """
    if n_samples < 1:
        raise ValueError(f"n_samples: got {n_samples}, expected at least 1")
    prompts = [ex.prompt for ex in examples]
    n = len(prompts)
    if n == 0:
        raise ValueError("retriever_eval: no prompts")
    greedy = _greedy(model, tokenizer, prompts, max_new_tokens, batch_size, progress)
    scores = score_responses(task, prompts, greedy)
    greedy_gold = scores["per_prompt"]["reward"]
    result: dict = {
        "n_prompts": n,
        "settings": {"n_samples": n_samples, "temperatures": [float(t) for t in temperatures],
                     "max_new_tokens": max_new_tokens, "seed": seed, "draw": draw, "dtype": str(model.dtype).removeprefix("torch.")},
        "greedy": {"n_prompts": n, "n_samples": 1, **{key: _stat(scores["per_prompt"][field], seed)
                                                     for key, field in HEADLINES.items() if field in scores["per_prompt"]},
                   "mean_length": scores["mean_length"]},
        "sampled": {},
    }
    for t_index, temperature in enumerate(temperatures):
        samples = generate(model, tokenizer, prompts, n_samples, float(temperature), max_new_tokens,
                           batch_size=max(1, batch_size // n_samples), seed=seed + t_index, progress=progress,
                           desc=f"retriever evaluation: sampling at T={temperature}", draw=draw)
        result["sampled"][str(float(temperature))] = _sampled_block(model, tokenizer, task, prompts, samples, reranker,
                                                                    float(temperature), batch_size, seed, progress)
    if baseline is not None:
        result["baseline"] = _baseline_block(baseline, task, prompts, greedy, greedy_gold, reranker, max_new_tokens,
                                             batch_size, seed, progress)
    limits = length_limits(tokenizer)
    result["settings"].update(max_prompt_tokens=limits.max_prompt_tokens, max_response_tokens=limits.max_response_tokens,
                              truncated_prompt_encodings=limits.truncated_prompts,
                              truncated_response_encodings=limits.truncated_responses)
    return result


def _sampled_block(model, tokenizer, task: Task, prompts: list, samples: list[list[Sample]], reranker: Reranker,
                   temperature: float, batch_size: int, seed: int, progress: bool) -> dict:
    """One temperature's block: gold reward, pass@k, Best-of-N with the reranker, and the ranking of the
    policy's log-prob order against the reranker's (:func:`_ranking_block`)."""
    n_samples = len(samples[0])
    flat_p = [p for p, group in zip(prompts, samples) for _ in group]
    flat_r = [s.text for group in samples for s in group]
    scores = reranker.score(flat_p, flat_r)
    per_prompt = [  # (golds, correct, reranker scores) of each prompt's samples
        ([task.reward(p, s.text) for s in group], [float(task.correct(p, s.text)) for s in group],
         scores[i * n_samples : (i + 1) * n_samples])
        for i, (p, group) in enumerate(zip(prompts, samples))
    ]
    return {
        "temperature": temperature, "n_prompts": len(prompts), "n_samples": n_samples,
        "gold_reward": _stat([sum(g) / len(g) for g, _, _ in per_prompt], seed),
        "pass_at_k": {str(k): _stat([pass_at_k(n_samples, int(sum(c)), k) for _, c, _ in per_prompt], seed)
                      for k in _powers_of_two(n_samples)},
        "best_of_n": {str(k): _stat([best_of_n(sc, g, k) for g, _, sc in per_prompt], seed)
                      for k in _powers_of_two(n_samples, cap=16)},
        "ranking": _ranking_block(model, tokenizer, prompts, samples, [sc for _, _, sc in per_prompt], batch_size, seed,
                                  progress),
        "mean_length": sum(map(len, flat_r)) / len(flat_r),
    }


def _ranking_block(model, tokenizer, prompts: list, samples: list[list[Sample]], scores: list[list[float]],
                   batch_size: int, seed: int, progress: bool) -> dict:
    """NDCG and MRR of the policy's order of each prompt's distinct sampled sequences (by their log-probs:
    the retriever's order) against the reranker's ``scores``; prompts whose candidates all tie carry no order."""
    distinct = [list({(s.ids, s.finished): (s, sc) for s, sc in zip(group, group_scores)}.values())
                for group, group_scores in zip(samples, scores)]
    logps = _response_logps(model, tokenizer, [p for p, ds in zip(prompts, distinct) for _ in ds],
                            [s for ds in distinct for s, _ in ds], batch_size, progress)
    rankings, offset = [], 0
    for ds in distinct:
        rankings.append((logps[offset : offset + len(ds)], [sc for _, sc in ds]))
        offset += len(ds)
    informative = [(lp, rel) for lp, rel in rankings if len(set(rel)) > 1]
    ranking = {"n_prompts": len(informative), "n_samples": len(samples[0]),
               "mean_distinct_candidates": sum(len(d) for d in distinct) / len(prompts)}
    for k in (1, 5, None):
        ranking["ndcg" if k is None else f"ndcg@{k}"] = _stat([ndcg_at_k(lp, rel, k) for lp, rel in informative], seed)
    ranking["mrr"] = _stat([mrr(lp, rel) for lp, rel in informative], seed)
    return ranking


def _baseline_block(baseline: tuple[PreTrainedModel, PreTrainedTokenizerBase], task: Task, prompts: list,
                    greedy: list[str], greedy_gold: list[float], reranker: Reranker, max_new_tokens: int,
                    batch_size: int, seed: int, progress: bool) -> dict:
    """The baseline policy's greedy accuracy and gold reward, and the policy's greedy win rate over it
    (by the reranker and by the gold reward)."""
    base_model, base_tokenizer = baseline
    base = _greedy(base_model, base_tokenizer, prompts, max_new_tokens, batch_size, progress)
    base_gold = [task.reward(p, r) for p, r in zip(prompts, base)]
    return {
        "n_prompts": len(prompts), "n_samples": 1,
        "baseline_exact_accuracy": _stat([float(task.correct(p, r)) for p, r in zip(prompts, base)], seed),
        "baseline_gold_reward": _stat(base_gold, seed),
        "win_rate_reranker": _stat(wins(reranker.score(prompts, greedy), reranker.score(prompts, base)), seed),
        "win_rate_gold": _stat(wins(greedy_gold, base_gold), seed),
    }


def retriever_brief(result: dict) -> dict:
    """The headline retriever metrics at the first evaluation temperature: pass@k per k, NDCG, MRR."""
    block = next(iter(result["sampled"].values()))
    brief = {f"pass@{k}": v["mean"] for k, v in block["pass_at_k"].items()}
    brief.update(temperature=block["temperature"], ndcg=block["ranking"]["ndcg"]["mean"], mrr=block["ranking"]["mrr"]["mean"])
    return brief

def table_rows(result: dict) -> list[tuple[str, dict | float]]:
    """(metric name, stat or plain number) rows of a :func:`retriever_eval` result, for printing."""
    rows: list[tuple[str, dict | float]] = [
        *((f"greedy {key.replace('_', ' ')}", result["greedy"][key]) for key in HEADLINES if key in result["greedy"]),
        ("greedy mean length", result["greedy"]["mean_length"]),
    ]
    for key, block in result["sampled"].items():
        rows.append((f"T={key} sample gold reward", block["gold_reward"]))
        rows += [(f"T={key} pass@{k}", s) for k, s in block["pass_at_k"].items()]
        rows += [(f"T={key} best-of-{k}", s) for k, s in block["best_of_n"].items()]
        rows += [(f"T={key} {name} (n={block['ranking']['n_prompts']})", block["ranking"][name])
                 for name in ("ndcg@1", "ndcg@5", "ndcg", "mrr")]
        rows.append((f"T={key} mean length", block["mean_length"]))
    if "baseline" in result:
        rows += [(name.replace("_", " "), result["baseline"][name])
                 for name in ("baseline_exact_accuracy", "baseline_gold_reward", "win_rate_reranker", "win_rate_gold")]
    return rows


def format_table(result: dict) -> str:
    """A compact plain-text table: metric, value, 95 % CI."""
    rows = table_rows(result)
    width = max(len(name) for name, _ in rows)
    lines = [f"{'metric':<{width}}  {'value':>7}  95% CI", f"{'-' * width}  {'-' * 7}  {'-' * 15}"]
    for name, value in rows:
        if isinstance(value, dict):
            if value["mean"] is None:
                lines.append(f"{name:<{width}}  {'n/a':>7}")
            else:
                lines.append(f"{name:<{width}}  {value['mean']:>7.3f}  [{value['low']:.3f}, {value['high']:.3f}]")
        else:
            lines.append(f"{name:<{width}}  {value:>7.2f}")
    return "\n".join(lines)
