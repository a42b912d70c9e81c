"""Algorithm 1 of LarPO as a readable recipe: retrieve → rerank → distill, iterated.

    initial policy π_0 (built and SFT-warmed, or a local model)
    for s in 0..S-1:
        π_ref ← π_s
        sample K responses per prompt from π_s          (retriever)
        score them with the reranker                    (reranker)
        merge with earlier candidates, build lists      (memorization, list strategy)
        train π on the lists with the ranking loss      (distillation)
        π_{s+1} ← π ; evaluate it on held-out prompts

Every stage writes its output atomically, and an output's existence marks the stage done, so
running the same command again after a kill resumes at the first unfinished stage. Each stage is
seeded from (run seed, iteration) and the policy always comes back from its saved safetensors, so
a resumed run ends exactly where an uninterrupted one does.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from . import config as config_mod
from .candidates import iteration_dir, load_candidates, remembered, save_candidates
from .config import Config, ConfigError
from .evaluate import greedy_eval
from .io import append_jsonl, read_jsonl, write_json_atomic, write_jsonl_atomic, write_text_atomic
from .lists import Candidate, RankedList, build_lists, list_sizes
from .models import build_tiny_model, build_tokenizer, load_policy, save_policy
from .rerankers import Reranker, build_reranker
from .sampling import generate
from .sft import sft_train
from .tasks import Example, Task, build_task
from .trainer import make_accelerator, train_phase

METRICS = "metrics.jsonl"


def _stage_seed(seed: int, iteration: int) -> int:
    return seed * 1000 + iteration


def _replace_metric_rows(run_dir: Path, drop: Callable[[dict], bool], rows: list[dict] = ()) -> None:
    """Rewrite metrics.jsonl without the rows ``drop`` selects, then append ``rows``.

    A stage that reruns after a kill first removes what its killed attempt logged.
    """
    path = run_dir / METRICS
    kept = [r for r in read_jsonl(path) if not drop(r)] if path.exists() else []
    write_jsonl_atomic(path, [*kept, *rows])


def _check_or_write_config(cfg: Config, run_dir: Path) -> None:
    path = run_dir / "config.yaml"
    text = config_mod.dump(cfg)
    if path.exists() and path.read_text() != text:
        raise ConfigError(
            f"{path}: this run directory was made with a different config; "
            "pass another --out, or delete the directory to start again"
        )
    write_text_atomic(path, text)


def data_splits(task: Task, cfg: Config) -> tuple[list[Example], list[Example], list[Example], list[Example]]:
    """(SFT train, SFT validation, LarPO prompt pool, held-out eval) from the task's splits.

    The validation slice (the last ``sft.eval_prompts`` training examples) decides when SFT
    stops and is never trained on; the pool is the first ``loop.prompts_per_iteration`` of the
    rest (all of it when that is None), revisited every iteration so that memorization has
    something to merge.
    """
    train = task.train_examples()
    n_val = cfg.sft.eval_prompts if cfg.sft.enabled else 0
    if len(train) <= n_val:
        raise ConfigError(f"sft.eval_prompts: got {n_val}, expected fewer than the {len(train)} training prompts")
    sft_train_split, validation = train[: len(train) - n_val], train[len(train) - n_val :]
    pool = sft_train_split[: cfg.loop.prompts_per_iteration]
    held_out = task.eval_examples()[: cfg.eval.n_prompts]
    return sft_train_split, validation, pool, held_out


def initial_policy(cfg: Config, task: Task, run_dir: Path, progress: bool) -> Path:
    """Build (or load) π_0 and warm it up with SFT; return the directory it is saved in."""
    sft_dir = run_dir / "sft"
    if cfg.model.path is not None and not cfg.sft.enabled:
        return Path(cfg.model.path)
    if sft_dir.exists():
        return sft_dir
    if cfg.model.path is not None:
        model, tokenizer = load_policy(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    else:
        tokenizer = build_tokenizer(task.tokenizer_corpus(), cfg.model.vocab_size)
        model = build_tiny_model(cfg.model, tokenizer, seed=cfg.seed)
    if cfg.sft.enabled:
        sft_split, validation, _, _ = data_splits(task, cfg)
        _replace_metric_rows(run_dir, lambda r: r.get("stage") == "sft")
        sft_train(
            model, tokenizer, task, sft_split, validation, cfg.sft, cfg.sampling.max_new_tokens,
            seed=cfg.seed, metrics_path=run_dir / METRICS, progress=progress,
        )
    save_policy(model, tokenizer, sft_dir)
    return sft_dir


def sample_and_score(
    model, tokenizer, pool: list[Example], reranker: Reranker, cfg: Config, iteration: int, progress: bool
) -> list[Candidate]:
    """K samples per prompt from the current policy, each scored by the reranker."""
    prompts = [ex.prompt for ex in pool]
    samples = generate(
        model, tokenizer, prompts, cfg.sampling.k, cfg.sampling.temperature, cfg.sampling.max_new_tokens,
        top_p=cfg.sampling.top_p, batch_size=cfg.sampling.prompts_per_batch,
        seed=_stage_seed(cfg.seed, iteration), progress=progress,
    )
    flat_prompts = [p for p, group in zip(prompts, samples) for _ in group]
    flat_responses = [r for group in samples for r in group]
    rewards = reranker.score(flat_prompts, flat_responses)
    ids = [ex.prompt_id for ex, group in zip(pool, samples) for _ in group]
    return [
        Candidate(pid, p, r, float(w), cfg.sampling.temperature, "own", iteration)
        for pid, p, r, w in zip(ids, flat_prompts, flat_responses, rewards)
    ]


def make_lists(run_dir: Path, cfg: Config, iteration: int, current: list[Candidate]) -> tuple[list[RankedList], dict]:
    """This iteration's training lists: current candidates merged with remembered ones."""
    prompt_ids = {c.prompt_id for c in current}
    pool = current + remembered(run_dir, iteration, cfg.lists.memorization, prompt_ids)
    top, bottom = list_sizes(cfg.train.loss, cfg.lists.top, cfg.lists.bottom)
    lists, stats = build_lists(pool, cfg.lists.strategy, top, bottom)
    return lists, {
        "lists": stats.lists, "skipped_tied": stats.skipped_tied, "duplicates": stats.duplicates,
        "items": stats.items, "remembered": len(pool) - len(current), "sources": stats.sources,
    }


def _evaluate(policy_dir: Path, task: Task, held_out: list[Example], cfg: Config, out: Path, policy: int, run_dir: Path,
              progress: bool) -> dict:
    if out.exists():
        return json.loads(out.read_text())
    model, tokenizer = load_policy(policy_dir, trust_remote_code=cfg.model.trust_remote_code)
    scores = greedy_eval(model, tokenizer, task, held_out, cfg.sampling.max_new_tokens, cfg.eval.batch_size, progress)
    row = {"stage": "eval", "policy": policy, **scores}
    _replace_metric_rows(run_dir, lambda r: r.get("stage") == "eval" and r.get("policy") == policy, [row])
    write_json_atomic(out, scores)
    return scores


def _setup(cfg: Config, run_dir: str | Path) -> tuple[Path, Task, list[Example], list[Example]]:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_or_write_config(cfg, run_dir)
    task = build_task(cfg.task)
    if cfg.sft.enabled and any(ex.answer is None for ex in task.train_examples()):
        raise ConfigError("sft.enabled: the task has prompts without an answer; set sft.enabled=false")
    _, _, pool, held_out = data_splits(task, cfg)
    return run_dir, task, pool, held_out


def run_sft_only(cfg: Config, run_dir: str | Path, progress: bool = True) -> dict:
    """Build (or load) and warm up the initial policy; return its held-out evaluation."""
    run_dir, task, _, held_out = _setup(cfg, run_dir)
    policy_dir = initial_policy(cfg, task, run_dir, progress)
    return _evaluate(policy_dir, task, held_out, cfg, run_dir / "eval_sft.json", 0, run_dir, progress)


def run(cfg: Config, run_dir: str | Path, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the whole method in ``run_dir``; return the summary it also writes."""
    start = time.time()
    run_dir, task, pool, held_out = _setup(cfg, run_dir)
    accelerator = make_accelerator(cfg.train)
    if accelerator.num_processes > 1:
        raise ConfigError("larpo run: the loop runs on one process; multi-process runs are not supported yet")
    reranker = build_reranker(cfg.reranker, task)

    log(f"[larpo] run directory: {run_dir}")
    policy_dir = initial_policy(cfg, task, run_dir, progress)
    evals = [_evaluate(policy_dir, task, held_out, cfg, run_dir / "eval_sft.json", 0, run_dir, progress)]
    log(f"[larpo] initial policy: exact accuracy {evals[0]['exact_accuracy']:.3f}, gold reward {evals[0]['gold_reward']:.3f}")

    for s in range(cfg.loop.iterations):
        d = iteration_dir(run_dir, s)
        if not (d / "policy").exists():
            model, tokenizer = load_policy(policy_dir, trust_remote_code=cfg.model.trust_remote_code)
            if not (d / "candidates.jsonl").exists():
                save_candidates(run_dir, s, sample_and_score(model, tokenizer, pool, reranker, cfg, s, progress))
            if not (d / "lists.jsonl").exists():
                lists, stats = make_lists(run_dir, cfg, s, load_candidates(run_dir, s))
                write_jsonl_atomic(d / "lists.jsonl", (rl.to_row() for rl in lists))
                write_json_atomic(d / "lists_stats.json", stats)
            lists = [RankedList.from_row(row) for row in read_jsonl(d / "lists.jsonl")]
            if not lists:
                raise ConfigError(
                    f"iteration {s + 1}: every prompt's candidates tied, so there is nothing to train on; "
                    "raise sampling.k or sampling.temperature, or use task.reward=graded"
                )
            _replace_metric_rows(run_dir, lambda r: r.get("stage") == "train" and r.get("iteration") == s)
            train_phase(
                model, tokenizer, lists, cfg.train, accelerator, seed=_stage_seed(cfg.seed, s),
                metrics_path=run_dir / METRICS, tag={"stage": "train", "iteration": s}, progress=progress,
            )
            save_policy(model, tokenizer, d / "policy")
        policy_dir = d / "policy"
        evals.append(_evaluate(policy_dir, task, held_out, cfg, d / "eval.json", s + 1, run_dir, progress))
        log(f"[larpo] iteration {s + 1}/{cfg.loop.iterations}: exact accuracy {evals[-1]['exact_accuracy']:.3f}, "
            f"gold reward {evals[-1]['gold_reward']:.3f}")

    summary = {"sft": evals[0], "final": evals[-1], "per_policy": evals, "wall_seconds": round(time.time() - start, 2)}
    write_json_atomic(run_dir / "summary.json", summary)
    return summary
