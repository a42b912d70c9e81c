"""Everything a run checks before it writes anything, and the run directory made ready.

A run that fails on bad input must not leave files that block the corrected command. So the
config, the data files, the policy and reward-model directories, and the user's reward functions
(called on a few examples) are all checked first (:func:`check_inputs`, :func:`check_reranker`);
only then is the run directory created, locked and given its config (:func:`prepare_run_dir`).
A failure that only shows later leaves a directory with no finished iteration, which a corrected
config may take over.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from . import config as config_mod
from .config import Config, ConfigError
from .io import remove_stale_temporaries, rewrite_jsonl, write_text_atomic
from .models import adapter_base, check_local_model_dir, is_adapter_dir, load_tokenizer
from .rerankers import Reranker
from .tasks import Example, Task, build_task
from .tracking import METRICS, TRACKER_DIR


@dataclass(frozen=True)
class Inputs:
    """A run's checked data: the task and its splits."""

    task: Task
    sft_train: list[Example]  # SFT training examples
    validation: list[Example]  # decides when SFT stops; never trained on
    pool: list[Example]  # the LarPO prompts, the same every iteration
    held_out: list[Example]  # held-out evaluation


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


def check_inputs(cfg: Config, log: Callable[[str], None] = print) -> Inputs:
    """Build the task (reading its files and importing its reward function), call the gold reward on
    one example, and check the policy directory; a ConfigError names the first problem."""
    task = build_task(cfg.task)
    for note in getattr(task, "notes", ()):
        log(f"[larpo] {note}")
    if cfg.sft.enabled and any(ex.answer is None for ex in task.train_examples()):
        raise ConfigError("sft.enabled: the task has prompts without an answer; set sft.enabled=false")
    inputs = Inputs(task, *data_splits(task, cfg))
    probe = inputs.pool[0]
    task.reward(probe.prompt, probe.answer or "")  # a user reward function fails here, not after SFT
    if cfg.model.path is not None:
        path = Path(cfg.model.path)
        if is_adapter_dir(path):
            adapter_base(path)
        else:
            check_local_model_dir(path, "model.path", tokenizer=True)
        load_tokenizer(path, "model.path", cfg.model.trust_remote_code)
    return inputs


def check_reranker(reranker: Reranker, inputs: Inputs) -> None:
    """Score a few candidates (two prompts, an empty and a gold or placeholder response each), so
    that a reranker that raises or returns a bad value fails before any work, naming itself."""
    examples = inputs.pool[:2]
    prompts = [ex.prompt for ex in examples for _ in range(2)]
    responses = [r for ex in examples for r in ("", ex.answer or "0")]
    reranker.score(prompts, responses)


def _initial_policy_fields(cfg: Config) -> list:
    """What the initial policy (``sft/``) depends on."""
    d = config_mod.to_dict(cfg)
    return [d["seed"], d["task"], d["model"], d["sft"], d["sampling"]["max_new_tokens"]]


def _take_over(old_text: str, cfg: Config, run_dir: Path, log: Callable[[str], None]) -> None:
    """Let ``cfg`` take over a run directory whose earlier config finished no iteration, or refuse.

    The initial policy is kept when the change does not affect it; its evaluations and any partial
    iteration are removed, to be redone under the new config.
    """
    done = [name for name in ("summary.json",) if (run_dir / name).exists()]
    done += sorted(f"{p.parent.name}/policy" for p in run_dir.glob("iter_*/policy"))
    if done:
        raise ConfigError(
            f"{run_dir / 'config.yaml'}: this run directory was made with a different config and has finished "
            f"iterations ({', '.join(done[:4])}); pass another --out, or delete the directory to start again"
        )
    try:
        keep_sft = _initial_policy_fields(config_mod.from_dict(yaml.safe_load(old_text))) == _initial_policy_fields(cfg)
    except (ConfigError, yaml.YAMLError):
        keep_sft = False
    removed = [p for p in [run_dir / "sft", *sorted(run_dir.glob("*.json")), *sorted(run_dir.glob("iter_*")),
                           run_dir / TRACKER_DIR] if p.exists() and (p.name != "sft" or not keep_sft)]
    for path in removed:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if keep_sft:
        rewrite_jsonl(run_dir / METRICS, lambda r: r.get("stage") != "sft")
    else:
        (run_dir / METRICS).unlink(missing_ok=True)
    kept = "; the initial policy (sft/) is kept, since the change does not affect it" if keep_sft and (run_dir / "sft").exists() else ""
    log(f"[larpo] {run_dir} was made with another config that finished no iteration: starting again with this one"
        + (f" (removed {', '.join(p.name for p in removed)})" if removed else "") + kept)


def prepare_run_dir(cfg: Config, run_dir: Path, log: Callable[[str], None] = print) -> None:
    """Make the (created and locked) run directory ready: remove what killed writes left, then
    write the config, or check it is the one the directory was made with.

    A directory made with another config is refused once an iteration has finished there; before
    that (a run that failed on an input only its later stages read, such as a prompt whose
    samples all tie), the new config takes it over (:func:`_take_over`), saying so.
    """
    stale = remove_stale_temporaries(run_dir)
    if stale:
        log(f"[larpo] removed {len(stale)} temporary file(s) left by an interrupted write")
    path = run_dir / "config.yaml"
    text = config_mod.dump(cfg)
    if path.exists() and not config_mod.same_results(path.read_text(), cfg):
        _take_over(path.read_text(), cfg, run_dir, log)
    write_text_atomic(path, text)
