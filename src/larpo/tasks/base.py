"""What every task is: :class:`Example`, the :class:`Task` protocol, and :class:`SyntheticTask`, the
base of the built-in synthetic tasks."""

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
