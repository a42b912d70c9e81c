"""One training phase on ranked lists: the reranker → retriever distillation step of LarPO.

The reference policy is frozen inside a phase, so its log-probs are computed once, without
autograd, and cached: no second model sits in memory while the policy trains. Each optimizer
step takes ``batch_size`` lists over all processes; every micro-batch puts all m responses of its
lists through the policy in one forward pass; γ = β·(log π − log π_ref); the loss is the mean
over the step's lists of the per-list ranking loss, exactly, however the step is split into
processes and micro-batches.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils.memory import clear_device_cache
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_cosine_schedule_with_warmup

from .config import TrainConfig
from .encoding import encode_prompt, encode_response, pad_id
from .lists import RankedList
from .logprobs import list_logps
from .losses import get_loss
from .models import evaluating, save_policy
from .parallel import gather_merged, my_share, sum_over_processes
from .seeding import seed_everything
from .tracking import MetricsLog, check_trackers, metrics_log
from .transfer import to_device
from .versions import internals_tested


@dataclass(frozen=True)
class EncodedList:
    """A ranked list as token ids: one prompt, m responses best first, and their rewards."""

    prompt_ids: list[int]
    response_ids: list[list[int]]
    rewards: list[float]


@dataclass
class PhaseResult:
    steps: int
    losses: list[float]  # mean loss of each optimizer step
    ref_logps: Sequence[torch.Tensor]  # per list: [m] reference log-probs, float32, on the CPU
    metrics: list[dict] = field(default_factory=list)  # per step: the row appended to metrics_path


def encode_lists(tokenizer: PreTrainedTokenizerBase, lists: Sequence[RankedList]) -> list[EncodedList]:
    """Token ids of each list: a sampled item's own ids (EOS appended only if it finished), else its text's."""
    out = []
    for rl in lists:
        ids = rl.response_ids or (None,) * len(rl.responses)
        finished = rl.finished or (True,) * len(rl.responses)
        out.append(EncodedList(
            prompt_ids=encode_prompt(tokenizer, rl.prompt),
            response_ids=[encode_response(tokenizer, r, i, f) for r, i, f in zip(rl.responses, ids, finished)],
            rewards=list(rl.rewards),
        ))
    return out


def make_accelerator(
    cfg: TrainConfig, threads: int | None = None, trackers: Sequence[str] = (), tracker_dir: str | Path | None = None
) -> Accelerator:
    """The run's Accelerator: one process or many (launched by accelerate/torchrun), CPU or GPU.

    ``threads`` sets torch's intra-op threads in this process (None: leave torch's default).
    ``trackers`` are accelerate's experiment trackers (``report_to``), keeping their local files in
    ``tracker_dir`` once :func:`larpo.tracking.tracked` starts them; a ConfigError names one that
    accelerate does not know or whose package is not installed.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    check_trackers(list(trackers))
    return Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available(),
                       log_with=list(trackers) or None, project_dir=tracker_dir if trackers else None)


def adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over ``model``'s parameters: fused (one kernel over all of them, as HF Trainer's default) where
    every parameter is a floating-point tensor on a CPU or CUDA device, else torch's per-parameter loop."""
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in model.parameters())
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused)


def list_tokens(el: EncodedList) -> int:
    """Token positions a list costs in one forward: prompt once plus every response."""
    return len(el.prompt_ids) + sum(len(r) for r in el.response_ids)


def _to_matrix(flat: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter a flat [Σm] vector into a right-padded [B, max m] matrix and its mask (no host synchronisation)."""
    width = max(sizes)
    mask = to_device(torch.arange(width)[None, :] < torch.tensor(sizes)[:, None], flat.device)
    return flat.new_zeros(len(sizes), width).masked_scatter(mask, flat), mask


def reference_logps(
    model: nn.Module,
    encoded: Sequence[EncodedList],
    pad: int,
    batch_size: int,
    accelerator: Accelerator,
    progress: bool = False,
    shared_prompt: bool = True,
) -> list[torch.Tensor]:
    """log π_ref of every response of every list, without autograd, sharded over processes.

    Lists are taken in order of length (less padding), about ``batch_size`` responses per forward
    pass, through the same :func:`policy_logps` as training. Returns one float32 CPU tensor [m]
    per list, in the order of ``encoded``, on every process.
    """
    mine = sorted(my_share(len(encoded), accelerator), key=lambda i: list_tokens(encoded[i]))
    batches: list[list[int]] = []
    for i in mine:
        if not batches or sum(len(encoded[j].response_ids) for j in batches[-1]) + len(encoded[i].response_ids) > batch_size:
            batches.append([])
        batches[-1].append(i)
    flats = []  # on the device until the end: one wait for it, not one per batch
    bar = tqdm(total=len(mine), desc="reference log-probs", disable=not (progress and accelerator.is_main_process))
    with evaluating(model), torch.no_grad(), accelerator.autocast():
        for ids in batches:
            flats.append(policy_logps(model, [encoded[i] for i in ids], pad, accelerator.device, shared_prompt).float())
            bar.update(len(ids))
    bar.close()
    flat = torch.cat(flats).cpu() if flats else torch.zeros(0)
    local = dict(zip(mine, flat.split([len(encoded[i].response_ids) for i in mine])))
    merged = gather_merged(local, accelerator)
    return [merged[i] for i in range(len(encoded))]


@contextlib.contextmanager
def dropout_off(model: nn.Module):
    """Inside the block, every dropout of ``model`` has rate 0: ``nn.Dropout`` modules (LoRA's
    included) and the attention-dropout rate transformers' attention layers read. Restored after.

    The reference log-probs come from eval mode, so with dropout on in training γ would not start
    at 0 and the ranking loss would be noisy (TRL disables dropout in DPO for the same reason).
    """
    saved: list[tuple[nn.Module, str, float]] = []
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            saved.append((module, "p", module.p))
        if isinstance(getattr(module, "attention_dropout", None), float):
            saved.append((module, "attention_dropout", module.attention_dropout))
    for module, name, _ in saved:
        setattr(module, name, 0.0)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def pair_statistics(gamma: torch.Tensor, mask: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """[correct pairs, pairs, Σ margin] over the pairs the reranker orders strictly.

    gamma, rewards: [B, m]; mask: [B, m]. A pair (i, j) with reward_i > reward_j is correct when
    γ_i > γ_j and counts half when γ_i = γ_j; the margin is γ_i − γ_j. Returns a float64 tensor [3]
    (sums, for reduction).
    """
    ordered = ((rewards[:, :, None] > rewards[:, None, :]) & mask[:, :, None] & mask[:, None, :]).double()
    diff = (gamma[:, :, None] - gamma[:, None, :]).detach().double()
    correct = ((diff > 0).double() + 0.5 * (diff == 0).double()).mul(ordered).sum()
    return torch.stack([correct, ordered.sum(), diff.mul(ordered).sum()])


def policy_logps(
    model: nn.Module, batch: Sequence[EncodedList], pad: int, device: torch.device, shared_prompt: bool,
    sum_over_processes: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """log π of every response of a micro-batch of lists, flat [Σ m], list by list (:func:`larpo.logprobs.list_logps`).

    ``shared_prompt`` runs each list's prompt once for its m responses (packed one after another with
    them, or as a key/value cache they read), with or without activation checkpointing; otherwise
    every (prompt, response) pair is a sequence of its own. ``sum_over_processes`` makes every
    process choose the same layout (:func:`larpo.logprobs.choose_layout`).
    """
    return list_logps(model, [(el.prompt_ids, el.response_ids) for el in batch], pad, device, shared_prompt,
                      sum_over_processes=sum_over_processes)


def _save(accelerator: Accelerator, wrapped: nn.Module, tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> None:
    """The trained policy saved from its full state dict, which every process gathers (a collective under
    FSDP and ZeRO-3) and the main process writes."""
    state_dict = accelerator.get_state_dict(wrapped)
    if accelerator.is_main_process:
        save_policy(accelerator.unwrap_model(wrapped), tokenizer, directory, state_dict=state_dict)


def _release(accelerator: Accelerator, model: nn.Module, wrapped: nn.Module) -> None:
    """Make ``accelerator`` forget a finished phase's model and optimizer, so that their memory is freed.

    ``accelerator.free_memory()`` does that and runs a full ``gc.collect()``, which takes about
    0.3 s in a process that has imported transformers. A wrapper (DDP, FSDP, DeepSpeed) gets
    ``free_memory()``: a DDP wrapper sits in reference cycles that only a collection frees. On one
    process ``wrapped`` is the model itself, and dropping the accelerator's references (its private
    lists, on an accelerate release this was tested with: :mod:`larpo.versions`) frees the optimizer
    and its state at once; on another release, ``free_memory()`` again.
    """
    if wrapped is not model or not internals_tested("accelerate"):
        accelerator.free_memory()
        return
    for held in (accelerator._models, accelerator._optimizers, accelerator._schedulers, accelerator._dataloaders):
        held.clear()
    clear_device_cache()


def _step_row(totals: torch.Tensor, grad_norm, lists: int, lr: float, keys: dict) -> dict:
    """One optimizer step's metrics row: ``keys`` (tag, epoch, step), then the mean loss over its ``lists``,
    pair accuracy and mean γ margin (from ``totals`` [4]: Σ loss, correct pairs, pairs, Σ margin), grad norm, lr."""
    loss, correct, pairs, margin = totals.tolist()
    return {**keys, "loss": loss / lists, "pair_accuracy": correct / pairs if pairs else None,
            "margin": margin / pairs if pairs else None, "grad_norm": float(grad_norm), "lr": lr}


def _list_losses(
    model: nn.Module,
    batch: Sequence[EncodedList],
    ref: Sequence[torch.Tensor],
    loss_fn,
    cfg: TrainConfig,
    pad: int,
    device: torch.device,
    sum_over_processes: Callable[[torch.Tensor], torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-list losses [b] and pair statistics [3] for a micro-batch of lists."""
    sizes = [len(el.response_ids) for el in batch]
    policy, mask = _to_matrix(policy_logps(model, batch, pad, device, cfg.shared_prompt, sum_over_processes), sizes)
    reference, _ = _to_matrix(to_device(torch.cat(list(ref)), device), sizes)
    rewards, _ = _to_matrix(to_device(torch.tensor([r for el in batch for r in el.rewards], dtype=torch.float32), device), sizes)
    gamma = cfg.beta * (policy - reference)
    return loss_fn(gamma, mask, rewards), pair_statistics(gamma, mask, rewards)


def train_phase(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, lists: Sequence[RankedList] | Sequence[EncodedList],
    cfg: TrainConfig, accelerator: Accelerator, seed: int = 0, metrics_path: str | Path | MetricsLog | None = None,
    tag: dict | None = None, ref_logps: Sequence[torch.Tensor] | None = None, progress: bool = True,
    save_to: str | Path | None = None,
) -> PhaseResult:
    """Train ``model`` in place on ``lists`` for ``cfg.epochs`` epochs; return the step losses.

    ``lists`` are ranked lists, or the same already encoded (:func:`encode_lists`).

    With ``save_to``, the trained policy is saved there (:func:`larpo.models.save_policy`) from
    its full state dict, gathered across processes first, so saving is right under FSDP full
    sharding and DeepSpeed ZeRO-3 as well as DDP.

    ``ref_logps`` (one [m] tensor per list) defaults to the model's own log-probs at the start of
    the phase (the paper's reference: the policy at the start of the iteration). Each step's
    metrics (loss, pair accuracy, mean γ margin, grad norm, lr), with ``tag`` merged in, are
    returned in ``PhaseResult.metrics`` and appended to ``metrics_path`` by the main process (a file, or
    a :class:`larpo.tracking.MetricsLog` that also logs them to the run's trackers).
    ``seed`` seeds every generator the phase uses (list order, and dropout masks when
    ``cfg.dropout`` keeps dropout on).
    """
    if not lists:
        raise ValueError("train_phase needs at least one ranked list")
    seed_everything(seed)
    with contextlib.nullcontext() if cfg.dropout else dropout_off(model):
        pad = pad_id(tokenizer)
        encoded = list(lists) if isinstance(lists[0], EncodedList) else encode_lists(tokenizer, lists)
        model.to(accelerator.device)
        if ref_logps is None:
            ref_logps = reference_logps(model, encoded, pad, cfg.ref_batch_size, accelerator, progress, cfg.shared_prompt)
        total_steps = math.ceil(len(encoded) / cfg.batch_size) * cfg.epochs
        optimizer = adamw(model, cfg.lr, cfg.weight_decay)
        scheduler = get_cosine_schedule_with_warmup(optimizer, round(cfg.warmup_ratio * total_steps), total_steps)
        wrapped, optimizer = accelerator.prepare(model, optimizer)
        wrapped.train()
        step = _Step(wrapped, encoded, ref_logps, cfg, accelerator, pad)
        main = accelerator.is_main_process
        log = _StepLog(tag, metrics_path if main else None, tqdm(total=total_steps, desc="train", disable=not (progress and main)))
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
        for epoch in range(cfg.epochs):
            order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
            for start in range(0, len(order), cfg.batch_size):
                step_ids = order[start : start + cfg.batch_size]
                totals = step.forward_backward(step_ids)
                grad_norm = accelerator.clip_grad_norm_(wrapped.parameters(), max_norm)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                log.add(totals, grad_norm, len(step_ids), lr, epoch)
        log.close()
        if save_to is not None:
            _save(accelerator, wrapped, tokenizer, save_to)
        accelerator.wait_for_everyone()
        _release(accelerator, model, wrapped)
        model.eval()
        return PhaseResult(steps=len(log.losses), losses=log.losses, ref_logps=ref_logps, metrics=log.rows)


class _Step:
    """The forward and backward passes of one optimizer step's lists on this process, micro-batch by micro-batch.

    Lists of similar length share a micro-batch (less padding); the step's loss is the exact mean
    over its lists however it is split into processes and micro-batches. A process left without a
    list still runs a zero-weight pass, so that the collectives stay in step.
    """

    def __init__(self, wrapped: nn.Module, encoded: Sequence[EncodedList], ref_logps: Sequence[torch.Tensor],
                 cfg: TrainConfig, accelerator: Accelerator, pad: int):
        self.wrapped, self.encoded, self.ref_logps, self.cfg, self.accelerator, self.pad = (
            wrapped, encoded, ref_logps, cfg, accelerator, pad)
        self.lengths = [list_tokens(el) for el in encoded]
        self.loss_fn = get_loss(cfg.loss)
        if cfg.loss == "lambdarank":
            self.loss_fn = functools.partial(self.loss_fn, weighting=cfg.weighting)
        self.sum_over_processes = sum_over_processes(accelerator)

    def forward_backward(self, step_ids: list[int]) -> torch.Tensor:
        """Gradients of the step's mean loss accumulated in the model; the step's totals over all processes
        (Σ loss, correct pairs, pairs, Σ margin: float64 [4], on the device, not yet read)."""
        acc, cfg, world = self.accelerator, self.cfg, self.accelerator.num_processes
        mine = sorted(step_ids[acc.process_index :: world], key=lambda i: self.lengths[i])
        n_micro = math.ceil(math.ceil(len(step_ids) / world) / cfg.micro_batch_size)
        scale = world / len(step_ids)  # DDP averages over processes: Σ_all losses / lists in step
        totals = torch.zeros(4, dtype=torch.float64, device=acc.device)
        for micro in range(n_micro):
            ids = mine[micro * cfg.micro_batch_size : (micro + 1) * cfg.micro_batch_size]
            weight = 1.0 if ids else 0.0
            ids = ids or step_ids[:1]
            last = micro == n_micro - 1
            with contextlib.nullcontext() if last else acc.no_sync(self.wrapped), acc.autocast():
                per_list, stats = _list_losses(self.wrapped, [self.encoded[i] for i in ids], [self.ref_logps[i] for i in ids],
                                               self.loss_fn, cfg, self.pad, acc.device, self.sum_over_processes)
                acc.backward(per_list.sum() * (scale * weight))
            totals += weight * torch.cat([per_list.detach().sum().double().reshape(1), stats])
        return acc.reduce(totals, reduction="sum") if world > 1 else totals


class _StepLog:
    """Each optimizer step's metrics row (:func:`_step_row`), read from the device one step late: reading a
    step waits for it while the device runs the next one. Rows go to ``metrics_path`` (None: nowhere) and
    the progress bar; ``rows`` and ``losses`` hold them all after :meth:`close`."""

    def __init__(self, tag: dict | None, metrics_path: str | Path | MetricsLog | None, bar):
        self.tag, self.metrics_path, self.bar = tag or {}, metrics_path, bar
        self.rows: list[dict] = []
        self.losses: list[float] = []
        self._pending: list[tuple] = []  # steps whose totals are still on the device

    def add(self, totals: torch.Tensor, grad_norm, lists: int, lr: float, epoch: int) -> None:
        self._pending.append((totals, grad_norm, lists, lr, epoch))
        if len(self._pending) > 1:
            self._record(*self._pending.pop(0))
        self.bar.update(1)

    def close(self) -> None:
        for step in self._pending:
            self._record(*step)
        self._pending.clear()
        self.bar.close()

    def _record(self, totals: torch.Tensor, grad_norm, lists: int, lr: float, epoch: int) -> None:
        self.rows.append(_step_row(totals, grad_norm, lists, lr, {**self.tag, "epoch": epoch, "step": len(self.rows) + 1}))
        self.losses.append(self.rows[-1]["loss"])
        if self.metrics_path is not None:
            metrics_log(self.metrics_path).write(self.rows[-1])
        self.bar.set_postfix(loss=f"{self.losses[-1]:.4f}")
