"""A user task: prompts from JSON-lines files, gold reward from the user's function.

Each non-blank line of ``task.path`` (training) and ``task.eval_path`` (held out) is a JSON object
with a ``"prompt"`` (required), a string ``"id"`` (default ``"<file stem>-<line number>"``) and a
string ``"answer"`` for SFT (optional); other keys are ignored. A prompt is a string or, in the
conversational format, a list of ``{"role": ..., "content": ...}`` messages (rendered with the
policy's chat template, see :mod:`larpo.encoding`). Ids and prompts must be unique across both
files, so no held-out prompt is trained on.

The files decide the size: ``task.n_train`` and ``task.n_eval`` only cap it, keeping the first
rows. Without ``task.eval_path``, the last ``task.n_eval`` rows of the training file are held out
and the first ``task.n_train`` of the rest are trained on.

``task.reward_fn`` is a ``"module:function"`` called as ``fn(prompt, response) -> float`` in
[0, 1] (``prompt`` exactly as in the file: a string or a message list). A response is correct
when it scores 1.0; with ``task.reward: exact`` the reward is that correctness as 1.0 / 0.0, with
``graded`` the function's value itself.

:class:`UserTask` holds what this task shares with the ``dataset`` task (:mod:`larpo.tasks.dataset`):
the checks on each row, the held-out split and the reward function.
"""

from __future__ import annotations

import json
import math
import numbers
from abc import ABC, abstractmethod
from pathlib import Path

from ..callables import call_user, load_callable
from ..config import ConfigError, TaskConfig
from ..io import text_lines
from .base import Example

_EXPECTED = 'expected a JSON object with a string "prompt"'


def check_prompt(value, where: str, expected: str) -> str | list[dict]:
    """``value`` if it is a prompt (a string, or a non-empty list of string role/content messages)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: {expected}")
    for i, message in enumerate(value):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise ConfigError(f"{where}: message {i} is {message!r}; expected {{\"role\": str, \"content\": str}}")
    return value


def prompt_key(prompt: str | list[dict]) -> str:
    """A hashable identity of a prompt, for finding duplicates."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def prompt_texts(prompt: str | list[dict]) -> list[str]:
    """The texts a prompt is made of (its messages' contents for a message list)."""
    return [prompt] if isinstance(prompt, str) else [m["content"] for m in prompt]


class UserTask(ABC):
    """Prompts read by a subclass's :meth:`_read`, held out as ``task.n_eval`` says, scored by ``task.reward_fn``."""

    name: str

    def __init__(self, cfg: TaskConfig) -> None:
        if cfg.path is None or cfg.reward_fn is None:
            raise ConfigError(f"task.path and task.reward_fn: required when task.name is {self.name!r}")
        self._spec = cfg.reward_fn
        self._fn = load_callable(cfg.reward_fn, "task.reward_fn")
        self._graded = cfg.reward == "graded"
        self._ids: dict[str, str] = {}
        self._prompts: dict[str, str] = {}
        train = self._read_train(cfg)
        held_out = self._read_held_out(cfg)
        if held_out is not None:
            held_out = held_out[: cfg.n_eval]
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
        self._id_of = {prompt_key(e.prompt): e.prompt_id for e in self._train + self._eval}
        self.notes = [f"task.n_train={cfg.n_train}: training on the first {cfg.n_train} of {len(train)} training prompts "
                      f"from {cfg.path}"] if len(train) > cfg.n_train else []

    @abstractmethod
    def _read_train(self, cfg: TaskConfig) -> list[Example]:
        """The training examples, in source order."""

    @abstractmethod
    def _read_held_out(self, cfg: TaskConfig) -> list[Example] | None:
        """The held-out examples when they have their own source; None to hold out the last training rows."""

    def _example(self, where: str, prompt, prompt_id, answer, expected: str) -> Example:
        """An Example from one row's values, checked; ``where`` names the row in errors."""
        prompt = check_prompt(prompt, where, expected)
        for key, value, optional in (("id", prompt_id, False), ("answer", answer, True)):
            if not isinstance(value, str) and not (optional and value is None):
                raise ConfigError(f"{where}: got {key!r} = {value!r}, expected a string")
        example = Example(prompt_id, prompt, answer)
        for kind, value, seen in (("id", prompt_id, self._ids), ("prompt", prompt_key(prompt), self._prompts)):
            if value in seen:
                raise ConfigError(f"{where}: duplicate {kind} {value!r} (first at {seen[value]}); expected each {kind} once")
            seen[value] = where
        return example

    def train_examples(self) -> list[Example]:
        return list(self._train)

    def eval_examples(self) -> list[Example]:
        return list(self._eval)

    def _score(self, prompt, response: str) -> float:
        prompt_id = self._id_of.get(prompt_key(prompt), "(not one of the task's prompts)")
        raw = call_user(self._fn, "task.reward_fn", self._spec, prompt, response, prompt_id=prompt_id)
        value = float(raw) if isinstance(raw, numbers.Real) else math.nan
        if not 0 <= value <= 1:
            raise ConfigError(f"task.reward_fn: {self._spec} returned {raw!r} on prompt {prompt_id}, "
                              "expected a number in [0, 1]")
        return value

    def correct(self, prompt, response: str) -> bool:
        """The reward function gives the response full marks (1.0)."""
        return self._score(prompt, response) >= 1.0

    def reward(self, prompt, response: str) -> float:
        if self._graded:
            return self._score(prompt, response)
        return float(self.correct(prompt, response))

    def tokenizer_corpus(self) -> list[str]:
        """Prompts and answers of both splits, so that no character of a held-out prompt is unknown."""
        examples = self._train + self._eval
        return [*(t for e in examples for t in prompt_texts(e.prompt)), *(e.answer for e in examples if e.answer)]


class JsonlTask(UserTask):
    name = "jsonl"

    def _read_train(self, cfg: TaskConfig) -> list[Example]:
        return self._read(Path(cfg.path))

    def _read_held_out(self, cfg: TaskConfig) -> list[Example] | None:
        return None if cfg.eval_path is None else self._read(Path(cfg.eval_path))

    def _read(self, path: Path) -> list[Example]:
        """The examples of one file."""
        examples = []
        for number, line in text_lines(path, "prompts file"):
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{where}: not valid JSON ({e.msg}); {_EXPECTED}") from None
            if not isinstance(row, dict) or "prompt" not in row:
                raise ConfigError(f"{where}: {_EXPECTED}")
            examples.append(self._example(
                where, row["prompt"], row.get("id", f"{path.stem}-{number}"), row.get("answer"),
                f"{_EXPECTED} or a list of messages",
            ))
        if not examples:
            raise ConfigError(f"{path}: empty; {_EXPECTED} on each line")
        return examples
