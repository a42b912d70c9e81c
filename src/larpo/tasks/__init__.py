"""Tasks: prompts, gold answers and a gold reward — the ground truth a run is measured against.

A task is anything that satisfies the small :class:`Task` protocol; :func:`build_task` resolves
``task.name`` to one of the built-ins:

- ``arithmetic``: ``"123+456="`` → ``"579"`` (:mod:`larpo.tasks.arithmetic`)
- ``chat_arithmetic``: ``"What is 47 + 38? Reply with only the number."`` → ``"85"``, for chat
  models; graded for correctness and format (:mod:`larpo.tasks.chat_arithmetic`)
- ``sorting``: ``"sort 42 7 93 7 15:"`` → ``"7 7 15 42 93"`` (:mod:`larpo.tasks.sorting`)
- ``jsonl``: the user's prompts file and reward function (:mod:`larpo.tasks.jsonl`)
- ``dataset``: a ``datasets`` dataset saved on disk and the user's reward function (:mod:`larpo.tasks.dataset`)

The synthetic built-ins share :class:`SyntheticTask`: prompts are drawn without replacement from a
finite space, deterministically from ``task.seed``, and each prompt determines its own answer, so
``reward(prompt, response)`` needs nothing else.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

from ..config import ConfigError, TaskConfig


@dataclass(frozen=True)
class Example:
    """One prompt of a task, with its gold answer when the task has one."""

    prompt_id: str  # stable and unique within the task, e.g. "train-00017"
    prompt: str  # the text fed to the model, e.g. "123+456="
    answer: str | None  # the gold answer for SFT, e.g. "579"; None when the task has none


class Task(Protocol):
    """What the rest of larpo needs from a task; implement it to plug in your own."""

    name: str

    def train_examples(self) -> list[Example]:
        """SFT data and the LarPO prompt pool."""
        ...

    def eval_examples(self) -> list[Example]:
        """Held-out examples; no prompt is also a training prompt."""
        ...

    def reward(self, prompt: str, response: str) -> float:
        """Gold reward in [0, 1], exact or graded as ``task.reward`` says."""
        ...

    def correct(self, prompt: str, response: str) -> bool:
        """Exact correctness, whatever ``task.reward`` says."""
        ...

    def tokenizer_corpus(self) -> list[str]:
        """Texts a tiny tokenizer is trained on: every character the task's prompts and answers use."""
        ...


class SyntheticTask(ABC):
    """Base of the built-ins: a finite space of prompts, indexed 0..space-1, each with one answer.

    Subclasses set ``name`` and ``alphabet`` (every character their prompts and answers can use)
    and implement :meth:`prompt_at`, :meth:`solve` and :meth:`graded`.
    """

    name: str
    alphabet: str

    def __init__(self, cfg: TaskConfig, space: int, what: str) -> None:
        """Draw ``n_train + n_eval`` distinct prompts from ``space``; ``what`` describes the space in errors."""
        total = cfg.n_train + cfg.n_eval
        if total > space:
            raise ConfigError(
                f"task.n_train: got {cfg.n_train} (+ task.n_eval {cfg.n_eval}), expected at most {space} in total:"
                f" {what} has only {space} distinct prompts"
            )
        # Rejection sampling of indices, so the draw is a prefix of any longer draw: the training
        # prompts do not change when only n_eval does.
        rng = random.Random(cfg.seed)
        drawn: dict[int, None] = {}
        while len(drawn) < total:
            drawn[rng.randrange(space)] = None
        prompts = [self.prompt_at(i) for i in drawn]
        self._train = [Example(f"train-{i:05d}", p, self.solve(p)) for i, p in enumerate(prompts[: cfg.n_train])]
        self._eval = [Example(f"eval-{i:05d}", p, self.solve(p)) for i, p in enumerate(prompts[cfg.n_train :])]
        self._graded = cfg.reward == "graded"

    @abstractmethod
    def prompt_at(self, index: int) -> str:
        """The prompt with this index in the space (a bijection, so distinct indices give distinct prompts)."""
        ...

    @abstractmethod
    def solve(self, prompt: str) -> str:
        """The gold answer, parsed from the prompt alone."""
        ...

    @abstractmethod
    def graded(self, prompt: str, response: str) -> float:
        """Partial credit in [0, 1]; 1.0 exactly when the response is correct."""
        ...

    def train_examples(self) -> list[Example]:
        return list(self._train)

    def eval_examples(self) -> list[Example]:
        return list(self._eval)

    def correct(self, prompt: str, response: str) -> bool:
        """The response, stripped of surrounding whitespace, equals the gold answer."""
        return response.strip() == self.solve(prompt)

    def reward(self, prompt: str, response: str) -> float:
        if self._graded:
            return self.graded(prompt, response)
        return float(self.correct(prompt, response))

    def tokenizer_corpus(self) -> list[str]:
        """The alphabet (so that no character is ever unknown) and the training prompts and answers."""
        return [self.alphabet, *(e.prompt for e in self._train), *(e.answer for e in self._train if e.answer)]


# The task modules import Example and SyntheticTask from this package, so they come after them.
from .arithmetic import ArithmeticTask  # noqa: E402
from .chat_arithmetic import ChatArithmeticTask  # noqa: E402
from .dataset import DatasetTask  # noqa: E402
from .jsonl import JsonlTask  # noqa: E402
from .sorting import SortingTask  # noqa: E402

TASKS: dict[str, type] = {
    "arithmetic": ArithmeticTask, "chat_arithmetic": ChatArithmeticTask, "sorting": SortingTask, "jsonl": JsonlTask,
    "dataset": DatasetTask,
}


def build_task(cfg: TaskConfig) -> Task:
    """The task named by ``cfg.name``, built from the rest of ``cfg``."""
    if cfg.name not in TASKS:
        raise ConfigError(f"task.name: got {cfg.name!r}, expected one of {', '.join(map(repr, TASKS))}")
    return TASKS[cfg.name](cfg)


__all__ = ["ArithmeticTask", "ChatArithmeticTask", "DatasetTask", "Example", "JsonlTask", "SortingTask", "SyntheticTask", "TASKS", "Task", "build_task"]
