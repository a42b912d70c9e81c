"""Summed response-token log-probabilities of a causal LM: log π(y|x) for pairs and for lists.

Prompt and response ids are tokenised separately (``larpo.encoding``) and concatenated. Three
layouts compute the same log-probs (:func:`list_logps` picks one): a right-padded row per pair
(:func:`sequence_logps`); each list's prompt once, its cache read by a row per response
(:func:`shared_prompt_logps`); lists one after another in one row, attention list by list
(:func:`packed_logps`). In each, positions restart at 0 at each response's own prompt, and a
response sees nothing of its neighbours.

Log-probs are taken only at the positions that predict a response token. With a plain linear LM
head they are computed inside the model's forward from the head's weight, a chunk of tokens at a
time (:class:`larpo.lm_head.LinearLogps`): no [N, L, V] logits tensor exists, in forward or in
backward. Any other head (e.g. LoRA on ``lm_head``, or a model that scales its logits after the
head) gets its logits from the model and only the selected positions are kept.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Callable, Sequence

import torch
from torch import nn
from transformers import DynamicCache

from . import lm_head, segment_attention
from .packing import LAYOUTS, Lists, head_dim, layout_costs, pack_lists, packing_is_exact
from .transfer import to_device


def collate_pairs(pairs: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad (prompt ids, response ids) pairs into one batch.

    Returns ``input_ids`` [N, L] long, ``attention_mask`` [N, L] long and ``response_mask``
    [N, L] bool (True on response tokens), with L the longest prompt + response.
    """
    if not pairs:
        raise ValueError("collate_pairs needs at least one (prompt, response) pair")
    width = max(len(p) + len(r) for p, r in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(pairs), width), dtype=torch.long)
    response_mask = torch.zeros((len(pairs), width), dtype=torch.bool)
    for row, (prompt, response) in enumerate(pairs):
        if not prompt or not response:
            raise ValueError(f"pair {row}: prompt and response must each have at least one token")
        n_p, n = len(prompt), len(prompt) + len(response)
        input_ids[row, :n] = torch.tensor([*prompt, *response], dtype=torch.long)
        attention_mask[row, :n] = 1
        response_mask[row, n_p:n] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def sequence_logps(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of log π(y_t | x, y_<t) over response tokens only: a float32 tensor [N].

    ``batch`` is the output of :func:`collate_pairs` (tensors on the model's device). Log-probs
    are logit − logsumexp(logits) in float32, so a bf16 model loses no precision here. The last
    column predicts nothing and is not run.
    """
    input_ids, response_mask = batch["input_ids"], batch["response_mask"]
    predicts = response_mask[:, 1:]  # position t predicts token t + 1
    token_logps = _selected_logps(
        model, lambda x: x[predicts], input_ids[:, 1:][predicts],
        input_ids=input_ids[:, :-1], attention_mask=batch["attention_mask"][:, :-1], use_cache=False,
    )
    return _row_sums(token_logps, predicts)


def collate_lists(lists: Sequence[tuple[list[int], Sequence[list[int]]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Batch lists that share a prompt: each prompt once, left-padded; responses right-padded.

    Returns ``prompt_ids`` / ``prompt_mask`` [B, P] (left padding, so every prompt ends at column
    P − 1), ``response_ids`` / ``response_mask`` [N, R] (right padding; N = Σ m over lists) and
    ``owner`` [N], the list (row of the prompt batch) each response belongs to.
    """
    if not lists or any(not p or not rs or any(not r for r in rs) for p, rs in lists):
        raise ValueError("collate_lists needs non-empty prompts, each with at least one non-empty response")
    prompt_ids, prompt_mask = left_pad([list(p) for p, _ in lists], pad_id)
    responses = [r for _, rs in lists for r in rs]
    width_r = max(len(r) for r in responses)
    response_ids = torch.full((len(responses), width_r), pad_id, dtype=torch.long)
    response_mask = torch.zeros((len(responses), width_r), dtype=torch.bool)
    for row, response in enumerate(responses):
        response_ids[row, : len(response)] = torch.tensor(response, dtype=torch.long)
        response_mask[row, : len(response)] = True
    owner = torch.tensor([i for i, (_, rs) in enumerate(lists) for _ in rs], dtype=torch.long)
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "response_ids": response_ids,
            "response_mask": response_mask, "owner": owner}


def left_pad(rows: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into ids [B, T] long and an attention mask [B, T] long (1 = real token), so
    that every row ends at column T − 1."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return ids, mask


def list_logps(model: nn.Module, lists: Lists, pad_id: int, device: torch.device | str, shared_prompt: bool = True,
               layout: str | None = None,
               sum_over_processes: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """log π of every response of ``lists`` ((prompt ids, [response ids, ...]) each): float32 [N], list by list.

    Runs ``layout``, by default :func:`choose_layout`'s (with ``sum_over_processes``): ``packed``
    (:func:`packed_logps`), ``shared`` (:func:`shared_prompt_logps`) or ``pairs``
    (:func:`sequence_logps`, a row per (prompt, response)). With ``shared_prompt`` False every
    response is a list of its own, its prompt repeated, in any layout.
    """
    if not shared_prompt:
        lists = [(p, [r]) for p, rs in lists for r in rs]
    if layout is None:
        layout = choose_layout(model, lists, shared_prompt, sum_over_processes)
    elif layout not in (exact := exact_layouts(model, shared_prompt)):
        raise ValueError(f"list_logps: layout {layout!r} is not exact for this model, or unknown (exact: {', '.join(exact)})")
    if layout == "packed":
        flex = segment_attention.uses_flex(device, head_dim(base_model(model).config.get_text_config()))
        return packed_logps(model, to_device(pack_lists(lists, segment_attention.BLOCK if flex else 1), device))
    if layout == "shared":
        return shared_prompt_logps(model, to_device(collate_lists(lists, pad_id), device))
    return sequence_logps(model, to_device(collate_pairs([(p, r) for p, rs in lists for r in rs], pad_id), device))


def exact_layouts(model: nn.Module, shared_prompt: bool = True) -> list[str]:
    """The layouts :func:`list_logps` can run exactly on ``model`` as it is set up.

    ``packed`` where :func:`larpo.packing.packing_is_exact` (SDPA attention, no sliding window) and
    the model's forward takes any keyword (which transformers hands on to the attention layers);
    ``shared`` when ``shared_prompt`` and :func:`can_share_prompt`; ``pairs`` always.
    """
    base = base_model(model)
    packed = packing_is_exact(base.config.get_text_config()) and any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(base.forward).parameters.values())
    return [name for name, ok in (("packed", packed), ("shared", shared_prompt and can_share_prompt(model)), ("pairs", True))
            if ok]


def choose_layout(model: nn.Module, lists: Lists, shared_prompt: bool = True,
                  sum_over_processes: Callable[[torch.Tensor], torch.Tensor] | None = None) -> str:
    """The exact layout (:func:`exact_layouts`) with the fewest estimated FLOPs (:func:`larpo.packing.layout_costs`)
    for ``lists`` as they will run (one response each when ``shared_prompt`` is False).

    With ``sum_over_processes`` (:func:`larpo.parallel.sum_over_processes`) every process picks the
    same layout from the costs of all their lists, which a multi-process run needs, since the
    layouts run different numbers of forward passes and a DDP or FSDP forward is a collective.
    """
    costs = layout_costs(base_model(model).config.get_text_config(), lists)
    total = torch.tensor([costs[name] for name in LAYOUTS], dtype=torch.float64)
    total = sum_over_processes(total) if sum_over_processes is not None else total
    exact = exact_layouts(model, shared_prompt)
    return min(exact, key=lambda name: total[LAYOUTS.index(name)].item())


def packed_logps(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """:func:`sequence_logps` of lists packed one after another in one row, one forward pass: a float32 tensor [N].

    ``batch`` is the output of :func:`larpo.packing.pack_lists`, its tensors on the model's device
    (padded to a multiple of :data:`larpo.segment_attention.BLOCK` where FlexAttention runs);
    attention runs list by list (:mod:`larpo.segment_attention`). Exact where
    :func:`larpo.packing.packing_is_exact` holds and the model's forward hands keywords on to its
    attention layers (:func:`exact_layouts`); activation checkpointing works as for any forward.
    Nothing waits for the device: the row's structure is read from Python values.
    """
    segment_attention.install()
    select = batch["select"]
    segments = segment_attention.Segments(batch["prompt_lengths"], batch["response_positions"], batch["list_sizes"],
                                          batch["padding"])
    ids = batch["input_ids"]
    token_logps = _selected_logps(
        model, lambda x: x[0, select], batch["targets"], input_ids=ids, position_ids=batch["position_ids"],
        # A 4-D mask is used as it is (no [T, T] mask is built); the row's structure replaces it.
        attention_mask=torch.ones(1, 1, 1, 1, dtype=torch.bool, device=ids.device), use_cache=False,
        larpo_segments=segments,
    )
    if segments.calls == 0:
        raise RuntimeError(f"packed_logps: the attention of {type(base_model(model)).__name__} did not go through "
                           "transformers' attention functions; use list_logps(layout='shared')")
    return _row_sums(token_logps, batch["token_mask"])  # in a fixed order (no atomic adds on a GPU)


def shared_prompt_logps(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """:func:`sequence_logps` with one prompt pass per list: a float32 tensor [N].

    The B prompts run once and fill a key/value cache; the N responses then run on top of it, one
    row per response ([N, R − 1] positions), each reading a copy of its own prompt's keys and
    values (gradients flow back through that read into the shared prompt pass). ``batch`` is the
    output of :func:`collate_lists`, on the model's device. This layout suits any attention
    implementation; :func:`packed_logps` shares the prompt without a cache where it is exact.

    Under activation checkpointing (see :func:`can_share_prompt`) the prompt pass keeps its
    activations, since it writes the cache, and the response pass is checkpointed: it only reads
    the cache, so replaying a layer in backward reads exactly what the first run read.
    """
    if not can_share_prompt(model):
        raise ValueError("shared_prompt_logps: the model checkpoints activations in a way that cannot keep the prompt's "
                         "cache (see can_share_prompt); use sequence_logps on repeated prompts")
    prompt_mask, response_ids, response_mask, owner = (
        batch["prompt_mask"], batch["response_ids"], batch["response_mask"], batch["owner"])
    cache, cache_arg = _SharedPromptCache(), cache_argument(model)
    checkpointed = _checkpointed_layers(model)
    last_only = {"logits_to_keep": 1} if forward_accepts(model, "logits_to_keep") else {}
    with _set_attributes(checkpointed, gradient_checkpointing=False):
        # The prompt's last position predicts the first response token.
        logps = _selected_logps(
            model, lambda x: x[:, -1][owner], response_ids[:, 0],
            input_ids=batch["prompt_ids"], attention_mask=prompt_mask, position_ids=left_padded_positions(prompt_mask),
            use_cache=True, **last_only, **{cache_arg: cache},
        )
    if response_ids.shape[1] == 1:  # every response one token: still a response pass (its token, predicting
        # nothing), so that every process of a multi-process run makes the same forward calls whatever its responses
        response_ids = torch.cat([response_ids, response_ids], dim=1)
        response_mask = torch.cat([response_mask, torch.zeros_like(response_mask)], dim=1)
    predicts = response_mask[:, 1:]  # response position t predicts token t + 1
    cache.readers = owner
    width = response_ids.shape[1] - 1
    inputs = {"input_ids": response_ids[:, :-1],
              "attention_mask": torch.cat([prompt_mask[owner], response_mask[:, :-1].long()], dim=1),
              "position_ids": prompt_mask.sum(dim=1)[owner, None] + torch.arange(width, device=owner.device)[None, :]}
    with _set_attributes(checkpointed, _can_checkpoint_with_cache=True):
        rest = _selected_logps(model, lambda x: x[predicts], response_ids[:, 1:][predicts],
                               use_cache=False, **inputs, **{cache_arg: cache})
    return logps + _row_sums(rest, predicts)


def can_share_prompt(model: nn.Module) -> bool:
    """Whether :func:`shared_prompt_logps` is exact on ``model`` as it is set up.

    Always without activation checkpointing. With it, only when every checkpointed layer is a
    transformers ``GradientCheckpointingLayer`` that can keep a read-only cache (it has
    ``_can_checkpoint_with_cache``, as in transformers 5.24) and checkpoints non-reentrantly (the
    replayed layer reads the prompt's keys from the cache, outside its inputs: reentrant
    checkpointing would send them no gradient). Otherwise prompts are repeated per response.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    on = _checkpointing(model)
    if not on:
        return True
    layers = [m for m in on if isinstance(m, GradientCheckpointingLayer)]
    return (hasattr(GradientCheckpointingLayer, "_can_checkpoint_with_cache") and bool(layers)
            and all(getattr(m._gradient_checkpointing_func, "keywords", {}).get("use_reentrant") is False for m in layers))


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a DDP wrapper (``.module``) and a peft wrapper (``get_base_model``)."""
    base = getattr(model, "module", model)
    return base.get_base_model() if hasattr(base, "get_base_model") else base


def left_padded_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids [B, T] of left-padded rows, as ``generate`` gives them: 0 at each row's first real token."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


def forward_accepts(model: nn.Module, argument: str) -> bool:
    """Whether the forward of the transformers model inside ``model`` takes ``argument``."""
    return argument in inspect.signature(base_model(model).forward).parameters


def cache_argument(model: nn.Module) -> str:
    """The forward argument that takes a KV cache: ``cache`` in recent transformers, else ``past_key_values``."""
    return "cache" if forward_accepts(model, "cache") else "past_key_values"


def _row_sums(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row sums [N] of ``values`` [M], the entries of the True positions of ``mask`` [N, L] in row-major order."""
    return values.new_zeros(mask.shape).masked_scatter(mask, values).sum(dim=1)


def _selected_logps(model: nn.Module, select: Callable[[torch.Tensor], torch.Tensor], targets: torch.Tensor,
                    **inputs) -> torch.Tensor:
    """log π(targets) at the positions ``select`` picks: a float32 tensor [M].

    ``select`` maps the model's per-position output [B, L, ·] (hidden states for a plain linear
    head, else logits) to the [M, ·] rows that predict ``targets`` [M]. ``inputs`` go to the
    model's forward.
    """
    head = lm_head.plain_head(base_model(model))
    if head is None:
        logits = select(model(**inputs).logits).float()
        return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)

    # Runs inside the model's forward, where a sharded (FSDP) head's weight is whole.
    def logps(hidden: torch.Tensor) -> torch.Tensor:
        return lm_head.LinearLogps.apply(select(hidden), head.weight, head.bias, targets)

    with _set_attributes([head], forward=logps):
        return model(**inputs).logits


class _SharedPromptCache(DynamicCache):
    """The prompts' keys and values: written by the prompt pass, then only read.

    Once ``readers`` (owner [N]: the prompt each row reads) is set, ``update``
    returns each row's prompt keys/values followed by the row's own, and stores nothing: a layer
    replayed in backward under checkpointing sees the cache exactly as its first run did.
    """

    readers: torch.Tensor | None = None

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if self.readers is None:
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)
        layer = self.layers[layer_idx]
        return (torch.cat([layer.keys[self.readers], key_states], dim=-2),
                torch.cat([layer.values[self.readers], value_states], dim=-2))


def _checkpointing(model: nn.Module) -> list[nn.Module]:
    """The modules of the transformers model inside ``model`` with activation checkpointing on."""
    return [m for m in base_model(model).modules() if getattr(m, "gradient_checkpointing", False) is True]


def _checkpointed_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers that activation checkpointing replays (none when it is off)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in _checkpointing(model) if isinstance(m, GradientCheckpointingLayer)]


@contextlib.contextmanager
def _set_attributes(objects: Sequence[object], **values):
    """Inside the block, every object has the attributes ``values``; each object's own previous ones are restored after."""
    saved = [(obj, name, obj.__dict__.get(name, _MISSING)) for obj in objects for name in values]
    for obj in objects:
        for name, value in values.items():
            setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, value in saved:
            if value is _MISSING:
                delattr(obj, name)
            else:
                setattr(obj, name, value)


_MISSING = object()
