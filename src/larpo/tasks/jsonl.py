"""A user task: prompts from JSON-lines files, gold reward from the user's function.

Each non-blank line of ``task.path`` (training) and ``task.eval_path`` (held out) is a JSON object
with a string ``"prompt"`` (required), a string ``"id"`` (default ``"<file stem>-<line number>"``)
and a string ``"answer"`` for SFT (optional); other keys are ignored. Ids and prompts must be
unique across both files, so no held-out prompt is trained on.

The files decide the size: ``task.n_train`` and ``task.n_eval`` only cap it, keeping the first
rows. Without ``task.eval_path``, the last ``task.n_eval`` rows of the training file are held out
and the first ``task.n_train`` of the rest are trained on.

``task.reward_fn`` is a ``"module:function"`` called as ``fn(prompt, response) -> float`` in
[0, 1]. A response is correct when it scores 1.0; with ``task.reward: exact`` the reward is that
correctness as 1.0 / 0.0, with ``graded`` the function's value itself.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

from ..callables import load_callable
from ..config import ConfigError, TaskConfig
from . import Example

_EXPECTED = 'expected a JSON object with a string "prompt"'


def _read(path: Path, ids: dict[str, str], prompts: dict[str, str]) -> list[Example]:
    """The examples of one file; ``ids`` and ``prompts`` map those already seen to where ("file:line")."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read prompts file ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; expected JSON lines") from None
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not valid JSON ({e.msg}); {_EXPECTED}") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ConfigError(f"{where}: {_EXPECTED}")
        for key in ("id", "answer"):
            if key in row and not isinstance(row[key], str):
                raise ConfigError(f"{where}: got {key!r} = {row[key]!r}, expected a string")
        example = Example(row.get("id", f"{path.stem}-{number}"), row["prompt"], row.get("answer"))
        for kind, value, seen in (("id", example.prompt_id, ids), ("prompt", example.prompt, prompts)):
            if value in seen:
                first = seen[value]
                raise ConfigError(f"{where}: duplicate {kind} {value!r} (first at {first}); expected each {kind} once")
            seen[value] = where
        examples.append(example)
    if not examples:
        raise ConfigError(f"{path}: empty; {_EXPECTED} on each line")
    return examples


class JsonlTask:
    name = "jsonl"

    def __init__(self, cfg: TaskConfig) -> None:
        if cfg.path is None or cfg.reward_fn is None:
            raise ConfigError("task.path and task.reward_fn: required when task.name is 'jsonl'")
        self._spec = cfg.reward_fn
        self._fn = load_callable(cfg.reward_fn, "task.reward_fn")
        self._graded = cfg.reward == "graded"
        ids: dict[str, str] = {}
        prompts: dict[str, str] = {}
        train = _read(Path(cfg.path), ids, prompts)
        if cfg.eval_path is not None:
            held_out = _read(Path(cfg.eval_path), ids, prompts)[: cfg.n_eval]
        elif len(train) > cfg.n_eval:
            cut = len(train) - cfg.n_eval
            train, held_out = train[:cut], train[cut:]
        else:
            raise ConfigError(
                f"task.n_eval: got {cfg.n_eval}, but {cfg.path} has only {len(train)} prompts; expected fewer than"
                " that to hold out (or set task.eval_path)"
            )
        self._train = train[: cfg.n_train]
        self._eval = held_out

    def train_examples(self) -> list[Example]:
        return list(self._train)

    def eval_examples(self) -> list[Example]:
        return list(self._eval)

    def _score(self, prompt: str, response: str) -> float:
        raw = self._fn(prompt, response)
        value = float(raw) if isinstance(raw, numbers.Real) else math.nan
        if not 0 <= value <= 1:
            raise ConfigError(f"task.reward_fn: {self._spec} returned {raw!r}, expected a number in [0, 1]")
        return value

    def correct(self, prompt: str, response: str) -> bool:
        """The reward function gives the response full marks (1.0)."""
        return self._score(prompt, response) >= 1.0

    def reward(self, prompt: str, response: str) -> float:
        if self._graded:
            return self._score(prompt, response)
        return float(self.correct(prompt, response))

    def tokenizer_corpus(self) -> list[str]:
        """Prompts and answers of both splits, so that no character of a held-out prompt is unknown."""
        examples = self._train + self._eval
        return [*(e.prompt for e in examples), *(e.answer for e in examples if e.answer)]
