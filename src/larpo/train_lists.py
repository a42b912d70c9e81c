"""Train on ranked lists you already have: the ``larpo train-lists`` recipe and its library entry point.

As a library, on a model already in memory and with no files (:func:`train_on_lists`)::

    lists, report = lists_from_rows(rows)         # listwise rows or TRL pairs, any iterable of dicts
    result = train_on_lists(model, tokenizer, lists, TrainConfig(loss="listmle", beta=0.1, lr=5e-7))
    result.metrics                                # per step: loss, pair_accuracy, margin, grad_norm, lr

As a command (:func:`run_train_lists`): the data, the model directory and its tokenizer (and, with
``evaluate``, the task) are checked before anything is written. One training phase then runs from
``model.path`` with the reference = that model (its log-probs computed once, before the first
step), for ``train.epochs``, seeded as the loop seeds its first iteration, and the policy is saved
to ``OUT/policy`` as an iteration saves ``iter_<s>/policy``. Under ``torchrun`` / ``accelerate
launch`` every process runs it; the main process writes. The output directory holds::

    config.yaml         the resolved config
    data_report.json    source, layout, fields, rows, lists, responses kept, every dropped row and why
    metrics.jsonl       every training step (and each held-out evaluation)
    tracker/            with ``report_to``: the trackers' local files (:mod:`larpo.tracking`)
    policy/             the trained policy (safetensors + tokenizer; the adapters for LoRA)
    eval_initial.json   with evaluate: greedy held-out evaluation of the starting model ...
    eval.json           ... and of the trained one
    summary.json        written last; its existence marks the run done
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

from accelerate import Accelerator
from torch import nn
from transformers import PreTrainedTokenizerBase

from . import config as config_mod
from .config import Config, ConfigError, TrainConfig
from .encoding import length_limits, pad_id
from .evaluate import eval_headline, greedy_eval, save_greedy_eval
from .io import TMP_PREFIX, remove_stale_temporaries, write_json_atomic, write_text_atomic
from .listdata import Fields, ListReport, check_tokenizer, lists_digest, read_lists
from .metrics import HEADLINES
from .lists import RankedList, list_sizes
from .models import adapter_base, check_local_model_dir, is_adapter_dir, load_tokenizer, policy_from_config
from .runlock import HOLDER, LOCK, run_dir_lock
from .seeding import seed_everything, stage_seed
from .tasks import Example, Task, build_task
from .tracking import METRICS, TRACKER_DIR, MetricsLog, tracked
from .trainer import PhaseResult, encode_lists, make_accelerator, reference_logps, train_phase

CONFIG, REPORT, POLICY, SUMMARY = "config.yaml", "data_report.json", "policy", "summary.json"
EVAL_INITIAL, EVAL_FINAL = "eval_initial.json", "eval.json"
OUTPUTS = (CONFIG, REPORT, METRICS, POLICY, EVAL_INITIAL, EVAL_FINAL, SUMMARY, TRACKER_DIR)


def train_on_lists(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    lists: Sequence[RankedList],
    cfg: TrainConfig | None = None,
    *,
    ref_model: nn.Module | None = None,
    seed: int = 0,
    accelerator: Accelerator | None = None,
    metrics_path: str | Path | MetricsLog | None = None,
    tag: dict | None = None,
    save_to: str | Path | None = None,
    progress: bool = False,
) -> PhaseResult:
    """Train ``model`` in place on ranked ``lists`` (best first) with ``cfg``'s loss; return the steps' metrics.

    ``cfg`` defaults to ``TrainConfig()`` (lambdarank, β = 1, as larpo's tiny default; real models
    want β ≈ 0.1 and a small lr). ``ref_model`` is the reference policy, as in TRL's
    ``DPOTrainer``; None takes ``model`` itself as it is now, with no second model in memory. Either
    way the reference log-probs are computed once, before the first step. ``result.metrics`` holds
    one dict per optimizer step (loss, pair_accuracy, margin, grad_norm, lr, and ``tag``), also
    appended to ``metrics_path`` when given; ``save_to`` saves the trained policy and tokenizer.
    A list's prompt may be a message list when the tokenizer has a chat template.
    """
    if not lists:
        raise ValueError("train_on_lists needs at least one ranked list")
    cfg = cfg or TrainConfig()
    check_tokenizer(lists, tokenizer)
    accelerator = accelerator or make_accelerator(cfg)
    encoded = encode_lists(tokenizer, lists)
    ref_logps = None
    if ref_model is not None:
        ref_logps = reference_logps(ref_model.to(accelerator.device), encoded, pad_id(tokenizer), cfg.ref_batch_size,
                                    accelerator, progress, cfg.shared_prompt)
    return train_phase(model, tokenizer, encoded, cfg, accelerator, seed=seed, metrics_path=metrics_path, tag=tag,
                       ref_logps=ref_logps, progress=progress, save_to=save_to)


# ---------------------------------------------------------------------------------------------
# the command: checks, the output directory, the phase, the evaluations


def _check_model(cfg: Config) -> PreTrainedTokenizerBase:
    """The tokenizer of a checked model directory (a whole model, or LoRA adapters and their base)."""
    if cfg.model.path is None:
        raise ConfigError("--model: required (or model.path in --config); expected the directory of the model to train")
    path = Path(cfg.model.path)
    if is_adapter_dir(path):
        adapter_base(path, "--model")
    else:
        check_local_model_dir(path, "--model", tokenizer=True)
    return load_tokenizer(path, "--model", cfg.model.trust_remote_code)


def _held_out(cfg: Config) -> tuple[Task, list[Example]]:
    """The task's held-out prompts (``eval.n_prompts`` of them), its reward called once as a check."""
    task = build_task(cfg.task)
    held_out = task.eval_examples()[: cfg.eval.n_prompts]
    if not held_out:
        raise ConfigError(f"task.name: {cfg.task.name!r} has no held-out prompts to evaluate on")
    task.reward(held_out[0].prompt, held_out[0].answer or "")  # a user reward function fails here, not after training
    return task, held_out


def _finished(out: Path, cfg: Config, digest: str) -> dict | None:
    """The summary when ``out`` holds this very run, finished; None when there is work to do.

    A ConfigError when ``out`` is not a directory, holds something other than a train-lists run,
    or a train-lists run finished with another config (but for how it is watched: ``report_to``)
    or other lists. Reads only.
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory; expected a directory")
    names = {p.name for p in out.iterdir() if not p.name.startswith(TMP_PREFIX)} - {LOCK, HOLDER}
    if not names:
        return None
    if REPORT not in names:
        raise ConfigError(f"--out {out}: not empty and not a train-lists output ({REPORT} missing); "
                          "expected a new or empty directory")
    if SUMMARY not in names:
        return None  # an earlier attempt stopped before the end: start again
    try:
        same = (config_mod.same_results((out / CONFIG).read_text(), cfg)
                and json.loads((out / REPORT).read_text())["lists_sha256"] == digest)
        summary = json.loads((out / SUMMARY).read_text())
    except (OSError, ValueError, KeyError):
        same = False
    if not same:
        raise ConfigError(f"--out {out}: holds a finished train-lists run with another config or other lists; "
                          "pass another --out, or delete it to train again")
    return summary


def _prepare(out: Path, config_text: str, record: dict, log: Callable[[str], None]) -> None:
    """Clear what an unfinished earlier attempt left in the (locked) ``out``; write the config and data report."""
    remove_stale_temporaries(out)
    leftover = [out / name for name in OUTPUTS if (out / name).exists()]
    for path in leftover:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if leftover:
        log(f"[larpo] {out}: an earlier train-lists stopped before the end; starting again "
            f"(removed {', '.join(p.name for p in leftover)})")
    write_text_atomic(out / CONFIG, config_text)
    write_json_atomic(out / REPORT, record)


def _evaluate(policy_dir: str | Path, task: Task, held_out: list[Example], cfg: Config, out: Path, policy: int,
              accelerator: Accelerator, metrics: MetricsLog, progress: bool) -> dict:
    """Greedy held-out accuracy and gold reward of one policy (main process), written to ``out`` and the metrics."""
    model, tokenizer = policy_from_config(policy_dir, cfg.model)
    scores = greedy_eval(model.to(accelerator.device), tokenizer, task, held_out, cfg.sampling.max_new_tokens,
                         cfg.eval.batch_size, progress)
    metrics.write({"stage": "eval", "policy": policy, **eval_headline(scores)})
    return eval_headline(save_greedy_eval(scores, held_out, out))


def format_evaluation(initial: dict, final: dict) -> str:
    """The held-out table: initial, final and the change, for each headline (accuracy, strict accuracy, gold reward)."""
    lines = [f"{'held-out (greedy)':<20}{'initial':>8}{'final':>8}{'change':>9}"]
    for key in (key for key in HEADLINES if key in initial and key in final):
        lines.append(f"{key:<20}{initial[key]:>8.3f}{final[key]:>8.3f}{final[key] - initial[key]:>+9.3f}")
    return "\n".join(lines + [f"{initial['n_prompts']} held-out prompts"])


def _load_lists(cfg: Config, data: str | Path, fields: Fields, split: str | None, drop_bad_rows: bool, strict: bool,
                log: Callable[[str], None]) -> tuple[list[RankedList], ListReport]:
    """The lists of ``data``, cut by ``lists.strategy`` with the sizes for ``train.loss``, and their report
    (logged); a ConfigError when none is left or the model's tokenizer cannot encode them."""
    top, bottom = list_sizes(cfg.train.loss, cfg.lists.top, cfg.lists.bottom)
    lists, report = read_lists(data, fields, split, cfg.lists.strategy, top, bottom, drop_bad_rows, strict)
    log(f"[larpo] {report.summary()}")
    for line in report.dropped_rows[:3]:
        log(f"[larpo]   dropped {line}")
    if not lists:
        raise ConfigError(f"DATA {data}: no list left to train on ({report.summary()})")
    check_tokenizer(lists, _check_model(cfg))
    return lists, report


def _train(cfg: Config, lists: list[RankedList], report: ListReport, out: Path, accelerator: Accelerator,
           metrics: MetricsLog, progress: bool, log: Callable[[str], None]) -> dict:
    """Train ``model.path`` on ``lists`` and save the policy to ``out``; the summary of what was trained."""
    seed = stage_seed(cfg.seed, 0)  # as the loop's first iteration: LoRA's initialisation, list order
    seed_everything(seed)
    model, tokenizer = policy_from_config(cfg.model.path, cfg.model, train=True)  # LoRA, checkpointing, dtype
    result = train_on_lists(model, tokenizer, lists, cfg.train, seed=seed, accelerator=accelerator,
                            metrics_path=metrics, tag={"stage": "train"}, save_to=out / POLICY, progress=progress)
    limits = length_limits(tokenizer)
    log(f"[larpo] trained {result.steps} steps ({cfg.train.loss}, {len(lists)} lists × {cfg.train.epochs} "
        f"epoch(s)): loss {result.losses[0]:.4f} → {result.losses[-1]:.4f}; policy in {out / POLICY}")
    return {"data": report.summary(), "lists": len(lists), "steps": result.steps, "epochs": cfg.train.epochs,
            "first_loss": result.losses[0], "last_loss": result.losses[-1], "policy": str(out / POLICY),
            "truncated_prompt_encodings": limits.truncated_prompts,
            "truncated_response_encodings": limits.truncated_responses}


def run_train_lists(
    cfg: Config,
    data: str | Path,
    out: str | Path,
    fields: Fields = Fields(),
    split: str | None = None,
    drop_bad_rows: bool = False,
    evaluate: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    strict: bool = False,
) -> dict:
    """``larpo train-lists``: train ``model.path`` on the lists in ``data``, into ``out``; return the summary.

    ``fields``, ``split``, ``drop_bad_rows`` and ``strict`` are :func:`larpo.listdata.read_lists`'s; the lists
    are cut by ``lists.strategy`` with the sizes for ``train.loss``, as the loop cuts its own.
    With ``evaluate``, the starting and the trained policy are evaluated (greedy) on the held-out
    prompts of ``task``. Rerunning a finished run (same config, same lists) returns its summary;
    an unfinished one starts again. Every process returns the summary; the main one writes and logs.
    """
    start = time.time()
    out = Path(out)
    accelerator = make_accelerator(cfg.train, trackers=cfg.trackers, tracker_dir=out / TRACKER_DIR)
    main = accelerator.is_main_process
    log = log if main else (lambda _: None)
    lists, report = _load_lists(cfg, data, fields, split, drop_bad_rows, strict, log)
    task, held_out = _held_out(cfg) if evaluate else (None, [])
    config_text = config_mod.dump(cfg)
    record = {**report.to_dict(), "lists_sha256": lists_digest(lists)}
    done = _finished(out, cfg, record["lists_sha256"])  # every process reads, before anyone writes
    accelerator.wait_for_everyone()
    if done is not None:
        log(f"[larpo] {out} already holds this run, finished: nothing to do")
        return done

    with run_dir_lock(out) if main else contextlib.nullcontext():
        if main:
            _prepare(out, config_text, record, log)
            if report.dropped_rows:
                log(f"[larpo]   every dropped row: {out / REPORT}")
        accelerator.wait_for_everyone()
        with tracked(cfg, out, accelerator, log) as metrics:
            initial = (_evaluate(cfg.model.path, task, held_out, cfg, out / EVAL_INITIAL, 0, accelerator, metrics, progress)
                       if main and evaluate else None)
            accelerator.wait_for_everyone()
            summary = _train(cfg, lists, report, out, accelerator, metrics, progress, log)
            if main:
                if evaluate:
                    final = _evaluate(out / POLICY, task, held_out, cfg, out / EVAL_FINAL, 1, accelerator, metrics, progress)
                    summary.update(initial=initial, final=final)
                    log(format_evaluation(initial, final))
                summary["wall_seconds"] = round(time.time() - start, 2)
                write_json_atomic(out / SUMMARY, summary)
            accelerator.wait_for_everyone()
    return json.loads((out / SUMMARY).read_text())
