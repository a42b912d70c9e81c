"""Supervised warm-up: teach the policy the task's gold answers, stopping short of saturation.

The loss is the token-mean cross-entropy of the answer (and its EOS) given the prompt. Training
stops as soon as greedy exact accuracy on a validation slice, averaged over the last ``smooth``
evaluations, reaches ``target_accuracy``, so the aligned iterations that follow have room to show
an effect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_cosine_schedule_with_warmup

from .config import SFTConfig
from .encoding import encode_prompt, encode_response, pad_id
from .evaluate import greedy_eval
from .logprobs import collate_pairs, sequence_logps
from .tasks import Example, Task
from .tracking import MetricsLog, metrics_log
from .transfer import to_device


def reached(history: Sequence[float], smooth: int, target: float) -> bool:
    """Whether SFT stops after these validation accuracies (oldest first): the mean of the last
    ``smooth`` of them reaches ``target`` (never before there are ``smooth``)."""
    window = history[-smooth:]
    return len(window) == smooth and sum(window) / smooth >= target


def sft_train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    train: Sequence[Example],
    validation: Sequence[Example],
    cfg: SFTConfig,
    max_new_tokens: int,
    seed: int = 0,
    metrics_path: str | Path | MetricsLog | None = None,
    progress: bool = True,
) -> dict:
    """Train in place, on the model's device; return ``{"steps", "val_accuracy", "val_reward"}`` at the stopping point.

    Each evaluation's row goes to ``metrics_path``: a file, or a :class:`larpo.tracking.MetricsLog`
    that also logs it to the run's trackers.
    """
    if any(ex.answer is None for ex in train):
        raise ValueError("SFT needs a gold answer for every training example")
    pairs = [(encode_prompt(tokenizer, ex.prompt), encode_response(tokenizer, ex.answer)) for ex in train]
    pad = pad_id(tokenizer)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.max_steps)
    result = {"steps": 0, "val_accuracy": 0.0, "val_reward": 0.0}
    history: list[float] = []  # validation accuracy at each evaluation, oldest first
    bar = tqdm(total=cfg.max_steps, desc="sft", disable=not progress)
    model.train()
    for step in range(1, cfg.max_steps + 1):
        idx = torch.randint(len(pairs), (cfg.batch_size,), generator=generator).tolist()
        batch = to_device(collate_pairs([pairs[i] for i in idx], pad), model.device)
        loss = -sequence_logps(model, batch).sum() / batch["response_mask"].sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        bar.update(1)
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            scores = greedy_eval(model, tokenizer, task, validation, max_new_tokens)
            model.train()
            result = {"steps": step, "val_accuracy": scores["exact_accuracy"], "val_reward": scores["gold_reward"]}
            bar.set_postfix(loss=f"{loss.item():.3f}", val_acc=f"{result['val_accuracy']:.2f}")
            if metrics_path is not None:
                metrics_log(metrics_path).write({"stage": "sft", "step": step, "loss": loss.item(), **result})
            history.append(result["val_accuracy"])
            if reached(history, cfg.smooth, cfg.target_accuracy):
                break
    bar.close()
    model.eval()
    return result
