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

Under ``torchrun`` / ``accelerate launch`` every process runs this same function. Sampling and
scoring are sharded: the pool is cut into fixed chunks of ``sampling.prompts_per_batch`` prompts,
each seeded from (run seed, iteration, chunk) and dealt to processes round-robin, so the gathered
candidates are the very ones a single process draws. Training is sharded by ``train_phase``. SFT
and the held-out evaluations run on the main process while the others wait, and only the main
process writes files; a barrier follows every write, so the others read finished files.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, TypeVar

import torch
from accelerate import Accelerator

from .candidates import iteration_dir, load_candidates, remembered, save_candidates
from .config import Config, ConfigError
from .encoding import length_limits, pad_id
from .evaluate import eval_headline, greedy_eval, retriever_brief, retriever_eval, save_greedy_eval
from .io import read_jsonl, rewrite_jsonl, write_json_atomic, write_jsonl_atomic
from .lists import Candidate, RankedList, build_lists, list_sizes
from .metrics import differences
from .models import build_tiny_model, build_tokenizer, policy_from_config, save_policy
from .preflight import Inputs, check_inputs, check_reranker, prepare_run_dir
from .reference import reference_model
from .rerankers import Reranker, build_reranker
from .retrieve import negative_candidates, sample_and_score
from .runlock import run_dir_lock
from .seeding import seed_everything, stage_seed
from .sft import sft_train
from .tasks import Example
from .tracking import METRICS, TRACKER_DIR, MetricsLog, stage_seconds, timed, tracked
from .trainer import EncodedList, encode_lists, make_accelerator, reference_logps, train_phase

T = TypeVar("T")


def _main_first(accelerator: Accelerator, stage: Callable[[], T]) -> T:
    """Run a resumable stage on the main process, then on the others, which find it done.

    ``stage`` must return its saved result without redoing work once its output exists.
    """
    result = stage() if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    return result if accelerator.is_main_process else stage()


def initial_policy(cfg: Config, inputs: Inputs, run_dir: Path, progress: bool, metrics: MetricsLog,
                   device: torch.device) -> Path:
    """Build (or load) π_0 and warm it up with SFT on ``device``; return the directory it is saved in."""
    sft_dir = run_dir / "sft"
    if cfg.model.path is not None and not cfg.sft.enabled:
        return Path(cfg.model.path)
    if sft_dir.exists():
        return sft_dir
    with timed(run_dir, "initial policy", None):
        seed_everything(cfg.seed)  # dropout in SFT
        if cfg.model.path is not None:
            model, tokenizer = policy_from_config(cfg.model.path, cfg.model)
        else:
            tokenizer = build_tokenizer(inputs.task.tokenizer_corpus(), cfg.model.vocab_size)
            model = build_tiny_model(cfg.model, tokenizer, seed=cfg.seed)
        model.to(device)
        if cfg.sft.enabled:
            rewrite_jsonl(run_dir / METRICS, lambda r: r.get("stage") == "sft")
            sft_train(
                model, tokenizer, inputs.task, inputs.sft_train, inputs.validation, cfg.sft, cfg.sampling.max_new_tokens,
                seed=cfg.seed, metrics_path=metrics, progress=progress,
            )
        save_policy(model, tokenizer, sft_dir)
    return sft_dir


def make_lists(
    run_dir: Path, cfg: Config, iteration: int, current: list[Candidate], negatives: list[Candidate]
) -> tuple[list[RankedList], dict]:
    """This iteration's training lists: current candidates merged with remembered ones, and the
    configured hard negatives (for any source but ``own``, they replace the list's bottom)."""
    prompt_ids = {c.prompt_id for c in current}
    pool = current + remembered(run_dir, iteration, cfg.lists.memorization, prompt_ids)
    top, bottom = list_sizes(cfg.train.loss, cfg.lists.top, cfg.lists.bottom)
    lists, stats = build_lists(pool, cfg.lists.strategy, top, bottom, None if cfg.lists.negatives == "own" else negatives,
                               cfg.lists.unfinished)
    return lists, {**asdict(stats), "remembered": len(pool) - len(current)}


def _lists_stage(
    model, tokenizer, pool: list[Example], reranker: Reranker, cfg: Config, run_dir: Path, iteration: int,
    accelerator: Accelerator, progress: bool,
) -> list[RankedList]:
    """Hard negatives (when configured) and the ranked lists of one iteration, resumable; the lists."""
    d = iteration_dir(run_dir, iteration)
    main = accelerator.is_main_process
    if cfg.lists.negatives != "own" and not (d / "negatives.jsonl").exists():
        negatives = negative_candidates(
            model, tokenizer, pool, load_candidates(run_dir, iteration), reranker, cfg, iteration, accelerator, progress
        )
        if main:
            write_jsonl_atomic(d / "negatives.jsonl", (c.to_row() for c in negatives))
        accelerator.wait_for_everyone()
    if main and not (d / "lists.jsonl").exists():
        negatives = ([Candidate.from_row(r) for r in read_jsonl(d / "negatives.jsonl")]
                     if cfg.lists.negatives != "own" else [])
        lists, stats = make_lists(run_dir, cfg, iteration, load_candidates(run_dir, iteration), negatives)
        write_jsonl_atomic(d / "lists.jsonl", (rl.to_row() for rl in lists))
        write_json_atomic(d / "lists_stats.json", stats)
    accelerator.wait_for_everyone()
    lists = [RankedList.from_row(row) for row in read_jsonl(d / "lists.jsonl")]
    if not lists:
        raise ConfigError(f"iteration {iteration + 1}: every prompt's candidates tied, so there is nothing to train on; "
                          "raise sampling.k or sampling.temperature, or use task.reward=graded")
    return lists


def _encode(run_dir: Path, iteration: int, tokenizer, lists: list[RankedList], main: bool) -> list[EncodedList]:
    """The iteration's lists as token ids; the main process logs how many encodings the length limits cut."""
    limits = length_limits(tokenizer)
    before = (limits.truncated_prompts, limits.truncated_responses)
    encoded = encode_lists(tokenizer, lists)
    if main and (limits.max_prompt_tokens or limits.max_response_tokens):
        rewrite_jsonl(run_dir / METRICS, lambda r: r.get("stage") == "truncation" and r.get("iteration") == iteration, [
            {"stage": "truncation", "iteration": iteration,
             "truncated_prompt_encodings": limits.truncated_prompts - before[0],
             "truncated_response_encodings": limits.truncated_responses - before[1]}])
    return encoded


def _separate_reference_logps(
    cfg: Config, initial_dir: Path, previous_dir: Path, encoded: list[EncodedList], pad: int, accelerator: Accelerator
):
    """Reference log-probs from a model other than the policy (``train.reference`` = initial | mix).

    None for ``previous``: the trainer then takes the policy's own log-probs at the start of the phase.
    """
    ref = reference_model(cfg.train.reference, initial_dir, previous_dir, cfg.train.reference_mix,
                          lambda path: policy_from_config(path, cfg.model))
    if ref is None:
        return None
    return reference_logps(ref.to(accelerator.device), encoded, pad,
                           cfg.train.ref_batch_size, accelerator, shared_prompt=cfg.train.shared_prompt)


def _evaluate(policy_dir: Path, inputs: Inputs, cfg: Config, out: Path, validation_out: Path, policy: int,
              run_dir: Path, metrics: MetricsLog, progress: bool, device: torch.device) -> tuple[dict, dict | None]:
    """Greedy evaluation of one policy on ``device``, the policy loaded once for both splits: held-out
    (``out``, JSON, and its responses beside it, JSON lines) and validation (``validation_out``, JSON,
    per-prompt scores without responses; None when the run has no validation prompts)."""
    load = functools.cache(lambda: policy_from_config(policy_dir, cfg.model, device=device))
    iteration = policy - 1 if policy else None  # the evaluation follows iteration policy - 1
    if not out.exists():
        with timed(run_dir, "greedy evaluation", iteration):
            scores = greedy_eval(*load(), inputs.task, inputs.held_out, cfg.sampling.max_new_tokens, cfg.eval.batch_size,
                                 progress)
        metrics.write({"stage": "eval", "policy": policy, **eval_headline(scores)},
                      replaces=lambda r: r.get("stage") == "eval" and r.get("policy") == policy)
        save_greedy_eval(scores, inputs.held_out, out)
    if inputs.validation and not validation_out.exists():
        with timed(run_dir, "validation evaluation", iteration):
            scores = greedy_eval(*load(), inputs.task, inputs.validation, cfg.sampling.max_new_tokens, cfg.eval.batch_size,
                                 progress)
        write_json_atomic(validation_out, {k: v for k, v in scores.items() if k != "responses"})
    return json.loads(out.read_text()), json.loads(validation_out.read_text()) if inputs.validation else None


def best_on_validation(accuracy: list[float]) -> int:
    """The iteration (1..S) whose policy scored best on the validation prompts, the earliest of those
    that tie; ``accuracy[p]`` is policy p's validation accuracy (p = 0: the initial policy, never chosen)."""
    return accuracy.index(max(accuracy[1:]), 1)


def _retriever_eval(policy_dir: Path, baseline_dir: Path | None, inputs: Inputs,
                    reranker: Reranker, cfg: Config, out: Path, progress: bool, device: torch.device) -> dict:
    """The policy as a retriever (pass@k, Best-of-N, NDCG/MRR, win rate over the baseline)."""
    if not out.exists():
        with timed(out.parent, f"retriever evaluation ({'initial' if baseline_dir is None else 'final'})", None):
            model, tokenizer = policy_from_config(policy_dir, cfg.model, device=device)
            baseline = policy_from_config(baseline_dir, cfg.model, device=device) if baseline_dir is not None else None
            write_json_atomic(out, retriever_eval(
                model, tokenizer, inputs.task, inputs.held_out, reranker, cfg.eval.samples, cfg.eval.temperatures,
                cfg.sampling.max_new_tokens, cfg.eval.batch_size, cfg.seed, baseline, progress, cfg.sampling.draw))
    return json.loads(out.read_text())


def run_sft_only(cfg: Config, run_dir: str | Path, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Build (or load) and warm up the initial policy, evaluate it (held-out and validation prompts); return the held-out evaluation."""
    run_dir = Path(run_dir)
    accelerator = make_accelerator(cfg.train, cfg.threads, cfg.trackers, run_dir / TRACKER_DIR)
    inputs = check_inputs(cfg, log)
    with run_dir_lock(run_dir):
        prepare_run_dir(cfg, run_dir, log)
        with tracked(cfg, run_dir, accelerator, log) as metrics:
            policy_dir = initial_policy(cfg, inputs, run_dir, progress, metrics, accelerator.device)
            held_out, _ = _evaluate(policy_dir, inputs, cfg, run_dir / "eval_sft.json", run_dir / "validation_sft.json", 0,
                                    run_dir, metrics, progress, accelerator.device)
            return held_out


def run(cfg: Config, run_dir: str | Path, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the whole method in ``run_dir``; return the summary it also writes.

    On several processes every process returns the summary; only the main one writes and logs.
    """
    start = time.time()
    run_dir = Path(run_dir)
    accelerator = make_accelerator(cfg.train, cfg.threads, cfg.trackers, run_dir / TRACKER_DIR)
    main = accelerator.is_main_process
    log = log if main else (lambda _: None)
    inputs = check_inputs(cfg, log)  # nothing is written before the inputs are known to be good
    reranker = build_reranker(cfg.reranker, inputs.task, accelerator.device, cfg.model.dtype, cfg.model.hub_kernels)
    check_reranker(reranker, inputs)
    with run_dir_lock(run_dir) if main else contextlib.nullcontext():
        if main:
            prepare_run_dir(cfg, run_dir, log)
        accelerator.wait_for_everyone()
        with tracked(cfg, run_dir, accelerator, log) as metrics:
            summary = _algorithm(cfg, inputs, reranker, run_dir, accelerator, progress, log, metrics)
        summary["stage_seconds"] = stage_seconds(run_dir)
        summary["wall_seconds"] = round(time.time() - start, 2)
        if main:
            write_json_atomic(run_dir / "summary.json", summary)
        accelerator.wait_for_everyone()
    return summary


def _algorithm(cfg: Config, inputs: Inputs, reranker: Reranker, run_dir: Path, accelerator: Accelerator, progress: bool,
               log: Callable[[str], None], metrics: MetricsLog) -> dict:
    """Algorithm 1 in a ready run directory, resuming at the first unfinished stage; the summary."""
    main, device = accelerator.is_main_process, accelerator.device
    pool = inputs.pool

    def evaluate(policy_dir: Path, out: Path, validation_out: Path, policy: int) -> tuple[dict, dict | None]:
        return _main_first(accelerator, lambda: _evaluate(policy_dir, inputs, cfg, out, validation_out, policy, run_dir,
                                                          metrics, progress, device))

    log(f"[larpo] run directory: {run_dir}" + (f" ({accelerator.num_processes} processes)" if accelerator.num_processes > 1 else ""))
    policy_dir = initial_dir = _main_first(accelerator, lambda: initial_policy(cfg, inputs, run_dir, progress, metrics, device))
    held_out, validation = evaluate(policy_dir, run_dir / "eval_sft.json", run_dir / "validation_sft.json", 0)
    evals, validations = [held_out], [validation]
    log(f"[larpo] initial policy: exact accuracy {evals[0]['exact_accuracy']:.3f}, gold reward {evals[0]['gold_reward']:.3f}")

    for s in range(cfg.loop.iterations):
        d = iteration_dir(run_dir, s)
        # Each existence check below comes after a barrier and before anything writes that file,
        # so every process takes the same branch.
        if not (d / "policy").exists():
            seed_everything(stage_seed(cfg.seed, s))  # LoRA's initialisation draws from the global generators
            model, tokenizer = policy_from_config(policy_dir, cfg.model, train=True, device=device)  # LoRA, checkpointing
            if not (d / "candidates.jsonl").exists():
                with timed(run_dir, "sampling and scoring", s, write=main):
                    candidates = sample_and_score(model, tokenizer, pool, reranker, cfg, s, accelerator, progress)
                    if main:
                        save_candidates(run_dir, s, candidates)
                    accelerator.wait_for_everyone()
            with timed(run_dir, "lists", s, write=main):
                lists = _lists_stage(model, tokenizer, pool, reranker, cfg, run_dir, s, accelerator, progress)
                encoded = _encode(run_dir, s, tokenizer, lists, main)
            if main:
                rewrite_jsonl(run_dir / METRICS, lambda r: r.get("stage") == "train" and r.get("iteration") == s)
            with timed(run_dir, "training", s, write=main):  # the reference pass included
                train_phase(
                    model, tokenizer, encoded, cfg.train, accelerator, seed=stage_seed(cfg.seed, s),
                    metrics_path=metrics, tag={"stage": "train", "iteration": s}, progress=progress,
                    ref_logps=_separate_reference_logps(cfg, initial_dir, policy_dir, encoded, pad_id(tokenizer), accelerator),
                    save_to=d / "policy",
                )
        policy_dir = d / "policy"
        held_out, validation = evaluate(policy_dir, d / "eval.json", d / "validation.json", s + 1)
        evals.append(held_out)
        validations.append(validation)
        log(f"[larpo] iteration {s + 1}/{cfg.loop.iterations}: exact accuracy {held_out['exact_accuracy']:.3f}, "
            f"gold reward {held_out['gold_reward']:.3f}"
            + (f"; validation accuracy {validation['exact_accuracy']:.3f}" if validation else ""))

    final = cfg.loop.iterations
    if cfg.loop.select == "validation":
        final = best_on_validation([v["exact_accuracy"] for v in validations])
        log(f"[larpo] final policy: iteration {final} (best on the validation prompts)")
        policy_dir = iteration_dir(run_dir, final - 1) / "policy"
    summary = {"initial_label": cfg.initial_label, "sft": evals[0], "final": evals[final], "final_policy": final,
               "per_policy": evals, "difference": differences(evals[0], evals[final])}
    if inputs.validation:  # SFT's stopping prompts, scored apart from the held-out ones
        block = {"initial": validations[0], "final": validations[final],
                 "difference": differences(validations[0], validations[final]),
                 "per_policy": [eval_headline(v) for v in validations]}
        if main:
            write_json_atomic(run_dir / "validation.json", block)
        summary["validation"] = block
    if cfg.eval.samples > 0:  # the initial policy as a retriever, then the final one against it
        summary["retriever"] = {name: retriever_brief(_main_first(accelerator, lambda: _retriever_eval(
            current, baseline, inputs, reranker, cfg, run_dir / f"retriever_eval_{name}.json", progress, device)))
            for name, current, baseline in (("sft", initial_dir, None), ("final", policy_dir, initial_dir))}
    return summary
