"""A run's metrics: rows in ``metrics.jsonl`` and, with ``report_to``, the same rows in experiment trackers.

Every row the training and the evaluations log goes through :class:`MetricsLog`, which appends it
to the file and passes it to the trackers of the run's ``Accelerator``. The trackers are
accelerate's own (``Accelerator(log_with=..., project_dir=...)``, ``init_trackers``, ``log``):
TensorBoard, W&B, MLflow, trackio, … whichever the installed accelerate supports, each through
its own package (an optional extra, e.g. ``pip install 'larpo[tensorboard]'``). Files a tracker
keeps locally go under ``<run>/tracker/``. Only the main process logs. A tracker gets:

- ``train/<metric>`` for each optimizer step (loss, pair_accuracy, margin, grad_norm, lr, epoch,
  iteration), at the run's training step, counted across iterations from 1;
- ``sft/<metric>`` for each evaluation of the SFT warm-up, at its SFT step;
- ``eval/<metric>`` for each held-out evaluation, at the policy's number (0: the initial policy,
  s: the policy after iteration s);
- the config, one hyperparameter per ``section.field``.

A resumed run logs on from where its killed attempt's ``metrics.jsonl`` ends (TensorBoard reads
the two attempts' event files in one directory as one run). The per-stage wall times
(:func:`timed`, summed by :func:`stage_seconds`) and truncation counts stay in ``metrics.jsonl`` only.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from accelerate import Accelerator

from .config import Config, ConfigError, to_dict
from .io import append_jsonl, read_jsonl, rewrite_jsonl

METRICS = "metrics.jsonl"
TRACKER_DIR = "tracker"  # in the run directory: the trackers' local files
PROJECT = "larpo"  # accelerate's project name: TensorBoard's subdirectory, W&B's and trackio's project
EXTRAS = ("tensorboard",)  # trackers with a larpo extra of their own: pip install 'larpo[<name>]'
_STEP = {"sft": "step", "eval": "policy"}  # the field that is a row's step; train rows are counted
_NOT_LOGGED = {"stage", "step", "steps", "policy", "n_prompts"}  # bookkeeping, or a row's step itself


def check_trackers(names: list[str]) -> None:
    """A ConfigError naming ``report_to`` unless accelerate supports each tracker and its package is installed."""
    if not names:
        return
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    supported = sorted(t.value for t in LoggerType if t.value != "all")
    available = {str(t.value if isinstance(t, LoggerType) else t) for t in get_available_trackers()}
    for name in names:
        if name not in supported:
            raise ConfigError(f"report_to: got {name!r}, expected none or one of {', '.join(supported)} "
                              "(the trackers of the installed accelerate)")
        if name not in available:
            install = f"pip install 'larpo[{name}]'" if name in EXTRAS else f"pip install {name.replace('_', '-')}"
            raise ConfigError(f"report_to: {name} needs its package, which is not installed; {install}")


def hyperparameters(cfg: Config) -> dict:
    """The config as flat ``section.field`` hyperparameters: numbers, strings, booleans and None; lists as JSON."""
    flat: dict = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        else:
            flat[prefix] = json.dumps(value) if isinstance(value, list) else value

    walk("", to_dict(cfg))
    return flat


def tracker_values(row: dict) -> dict[str, float]:
    """What a tracker gets of a metrics row: its numbers, named ``<stage>/<field>``."""
    stage = row["stage"]
    return {f"{stage}/{key}": value for key, value in row.items()
            if key not in _NOT_LOGGED and isinstance(value, (int, float)) and not isinstance(value, bool)}


class MetricsLog:
    """A run's ``metrics.jsonl``, and the trackers of ``accelerator`` that get the same rows (none: the file only)."""

    def __init__(self, path: str | Path, accelerator: Accelerator | None = None):
        self.path = Path(path)
        self.accelerator = accelerator
        self._train_steps: int | None = None  # train rows so far: counted in the file at the first one

    def write(self, row: dict, replaces: Callable[[dict], bool] | None = None) -> None:
        """Append ``row`` to the file (in place of the rows ``replaces`` selects, if given) and log it to the trackers."""
        if replaces is None:
            append_jsonl(self.path, row)
        else:
            rewrite_jsonl(self.path, replaces, [row])
        if self.accelerator is None or not self.accelerator.trackers or row.get("stage") not in ("train", *_STEP):
            return
        if row["stage"] == "train":
            if self._train_steps is None:  # this row is in the file already
                self._train_steps = sum(r.get("stage") == "train" for r in read_jsonl(self.path)) - 1
            self._train_steps += 1
            step = self._train_steps
        else:
            step = row[_STEP[row["stage"]]]
        self.accelerator.log(tracker_values(row), step=step)


def metrics_log(target: str | Path | MetricsLog) -> MetricsLog:
    """``target`` itself, or a :class:`MetricsLog` of the file ``target`` with no trackers."""
    return target if isinstance(target, MetricsLog) else MetricsLog(target)


@contextlib.contextmanager
def tracked(cfg: Config, run_dir: Path, accelerator: Accelerator,
            log: Callable[[str], None] = print) -> Iterator[MetricsLog]:
    """The run's :class:`MetricsLog`; with ``cfg.report_to``, the accelerator's trackers are started (the
    config as hyperparameters) and finished on leaving, on every process (accelerate logs on the main one).

    ``accelerator`` must come from :func:`larpo.trainer.make_accelerator` with the run's trackers and
    ``<run_dir>/tracker`` as its project directory. Each tracker is finished by itself rather than by
    ``accelerator.end_training()``, which would also end the process group that the rest of the
    command still uses.
    """
    if cfg.trackers:
        accelerator.init_trackers(PROJECT, config=hyperparameters(cfg), init_kwargs={
            "wandb": {"name": run_dir.name, "dir": str(run_dir / TRACKER_DIR)},
            "mlflow": {"run_name": run_dir.name},
        })
        log(f"[larpo] metrics also go to {', '.join(cfg.trackers)} (local files: {run_dir / TRACKER_DIR})")
    try:
        yield MetricsLog(run_dir / METRICS, accelerator)
    finally:
        for tracker in accelerator.trackers:
            tracker.finish()


@contextlib.contextmanager
def timed(run_dir: Path, name: str, iteration: int | None, write: bool = True):
    """Log the wall time of one stage's work (a ``time`` row in metrics.jsonl, replacing an earlier attempt's).

    ``iteration`` is the 0-based iteration the stage belongs to (None: before the first one).
    """
    start = time.time()
    yield
    if write:
        row = {"stage": "time", "name": name, "iteration": iteration, "seconds": round(time.time() - start, 3)}
        rewrite_jsonl(run_dir / METRICS, lambda r: r.get("stage") == "time" and (r["name"], r["iteration"]) == (name, iteration),
                      [row])


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Wall seconds per stage, summed over iterations and over the invocations that did the work."""
    totals: dict[str, float] = {}
    for row in read_jsonl(run_dir / METRICS) if (run_dir / METRICS).exists() else []:
        if row.get("stage") == "time":
            totals[row["name"]] = round(totals.get(row["name"], 0.0) + row["seconds"], 3)
    return totals
