"""Rerankers: what orders the policy's candidates (a gold rule, a reward model, or user code).

Every reranker maps parallel lists of prompts and responses to one float reward per pair,
higher is better. Build one from the config with :func:`build_reranker`.
"""

from __future__ import annotations

import math
from pathlib import Path
from numbers import Real
from typing import Protocol

import torch
from transformers import AutoModelForSequenceClassification

from .callables import call_user, load_callable
from .config import ConfigError, RerankerConfig
from .models import DTYPES, check_local_model_dir, load_options, load_tokenizer


class Reranker(Protocol):
    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        """One reward per (prompt, response) pair, higher is better."""
        ...


class RewardFunction(Protocol):
    """Anything with a gold reward, e.g. a :class:`larpo.tasks` task."""

    def reward(self, prompt: str, response: str) -> float: ...


class RuleReranker:
    """The task's own gold reward (a verifier), one pair at a time."""

    def __init__(self, task: RewardFunction):
        self.task = task

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return [float(self.task.reward(p, r)) for p, r in zip(prompts, responses, strict=True)]


class CallableReranker:
    """A user function ``(prompts, responses) -> rewards`` named as ``"module:function"``."""

    def __init__(self, spec: str):
        self.spec = spec
        self.function = load_callable(spec, "reranker.function")

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        out = call_user(self.function, "reranker.function", self.spec, prompts, responses,
                        where=f" on a batch of {len(prompts)} responses")
        rewards = out.tolist() if hasattr(out, "tolist") else out  # a tensor or an array is fine too
        if not isinstance(rewards, (list, tuple)):
            raise ConfigError(
                f"reranker.function {self.spec!r}: returned {type(out).__name__}, expected a list of floats"
            )
        if len(rewards) != len(prompts):
            raise ConfigError(
                f"reranker.function {self.spec!r}: returned {len(rewards)} rewards for {len(prompts)} responses"
            )
        for i, value in enumerate(rewards):
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise ConfigError(
                    f"reranker.function {self.spec!r}: reward {i} is {value!r}, expected a finite number"
                )
        return [float(v) for v in rewards]


class HFReranker:
    """A sequence-classification reward model with a single logit, loaded from a local directory.

    Each pair is rendered with the tokenizer's chat template when it has one (user turn = prompt,
    assistant turn = response), else as ``prompt + response``; the reward is the logit, returned
    in float32 whatever ``dtype`` the model runs in. The model runs on ``device`` (in a run: the
    process's accelerator device).
    """

    def __init__(self, path: str | Path, batch_size: int = 32, device: str | torch.device = "cpu",
                 trust_remote_code: bool = False, dtype: torch.dtype = torch.float32, hub_kernels: bool = False):
        path = check_local_model_dir(path, "reranker.path", tokenizer=True)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.tokenizer = load_tokenizer(path, "reranker.path", trust_remote_code)
        self.tokenizer.padding_side = "right"
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, use_safetensors=True, trust_remote_code=trust_remote_code, dtype=dtype, **load_options(hub_kernels)
        )
        if self.model.config.num_labels != 1:
            raise ConfigError(
                f"reranker.path: {path} is a classifier with {self.model.config.num_labels} labels; "
                "expected a reward model with a single output"
            )
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()

    def _token_ids(self, prompt: str | list[dict], response: str) -> list[int]:
        if self.tokenizer.chat_template is None:
            if not isinstance(prompt, str):
                raise ConfigError("reranker.path: a prompt given as messages needs a reward model tokenizer with a chat template")
            return self.tokenizer(prompt + response, add_special_tokens=True)["input_ids"]
        turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        messages = [*turns, {"role": "assistant", "content": response}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]  # the template has its own BOS

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        rows = [self._token_ids(p, r) for p, r in zip(prompts, responses, strict=True)]
        rewards: list[float] = []
        for start in range(0, len(rows), self.batch_size):
            batch = self.tokenizer.pad({"input_ids": rows[start : start + self.batch_size]}, return_tensors="pt")
            logits = self.model(**batch.to(self.device)).logits  # [b, 1]
            rewards.extend(logits[:, 0].float().tolist())
        return rewards


def build_reranker(
    cfg: RerankerConfig, task: RewardFunction, device: str | torch.device = "cpu", default_dtype: str = "float32",
    hub_kernels: bool = False,
) -> Reranker:
    """The reranker named by ``cfg.kind``: ``"rule"`` (the task's gold reward), ``"hf"`` or ``"callable"``.

    An ``hf`` reward model goes on ``device`` in ``cfg.dtype``, else ``default_dtype`` (the policy's),
    loaded with Hub kernels only if ``hub_kernels`` (``model.hub_kernels``).
    """
    if cfg.kind == "rule":
        return RuleReranker(task)
    if cfg.kind == "hf":
        return HFReranker(cfg.path, batch_size=cfg.batch_size, device=device,
                          dtype=DTYPES[cfg.dtype or default_dtype], hub_kernels=hub_kernels)
    if cfg.kind == "callable":
        return CallableReranker(cfg.function)
    raise ConfigError(f"reranker.kind: got {cfg.kind!r}, expected 'rule', 'hf' or 'callable'")
