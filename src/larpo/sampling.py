"""Retrieval: K candidate responses per prompt from the current policy (HF ``generate``).

Prompts are encoded with :func:`larpo.encoding.encode_prompt` — the very ids that training
scores — and left-padded into batches, so a prompt's continuation does not depend on which other
prompts share its batch. Each prompt's forward pass runs once, not K times: its key/value cache
is copied to its K samples (:func:`_generate_k`), and each decoding step writes the cache in
place. Each sample keeps the token ids that were drawn and whether it ended with EOS, so training
scores exactly what was sampled and teaches stopping only where the policy stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import (DynamicCache, LogitsProcessor, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase,
                          TemperatureLogitsWarper, TopPLogitsWarper)
from transformers.cache_utils import DynamicLayer

from .encoding import encode_prompt, pad_id
from .logprobs import base_model, cache_argument, forward_accepts, left_pad, left_padded_positions
from .models import evaluating
from .versions import internals_tested


PREALLOCATED_CACHE_DEVICES = ("cpu",)  # device types whose decoding writes the KV cache in place (_PreallocatedLayer)


@dataclass(frozen=True)
class Sample:
    """One sampled response: its text, the drawn token ids (EOS excluded) and whether it finished."""

    text: str
    ids: tuple[int, ...]
    finished: bool  # the policy emitted EOS within max_new_tokens (else the response was cut)


def split_at_eos(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> Sample:
    """A generated continuation as a :class:`Sample`: cut at the first EOS; text without special tokens."""
    eos = tokenizer.eos_token_id
    finished = eos in ids
    if finished:
        ids = ids[: ids.index(eos)]
    return Sample(tokenizer.decode(ids, skip_special_tokens=True), tuple(ids), finished)


def _generate_k(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int, max_new_tokens: int,
    **generate_kwargs,
) -> torch.Tensor:
    """``model.generate`` with ``num_return_sequences=k``, each prompt's forward pass run once.

    ``input_ids`` / ``attention_mask``: [b, T], left-padded. Returns [b·k, T + new] ids, the k
    samples of a prompt adjacent. All but the last prompt token run through the model once, with
    the positions ``generate`` would give them; the key/value cache is repeated k times and
    ``generate`` continues from it on the k-times repeated ids, so its own prefill is the last
    prompt token alone. Sampling itself is ``generate``'s, with the same random draws in the same
    order as ``num_return_sequences=k`` (unless ``generate_kwargs`` bring a :class:`_InverseCdfSampler`). On a
    CPU, on a transformers release :class:`_PreallocatedLayer` was tested with (:mod:`larpo.versions`),
    the cache's full-attention layers keep room for the whole sequence, so a decoding step writes its
    keys and values in place; on a GPU, where a copy of the cache costs less than the extra operations
    of writing in place, and on any other release, they are transformers' own, which concatenate.
    """
    prefilled = {}  # generate's cache argument, when the prompts were prefilled here
    if input_ids.shape[1] > 1:
        cache = DynamicCache(config=base_model(model).config)
        if input_ids.device.type in PREALLOCATED_CACHE_DEVICES and internals_tested("transformers"):
            capacity = input_ids.shape[1] + max_new_tokens
            cache.layers = [_PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
        mask = attention_mask[:, :-1]
        model(
            input_ids=input_ids[:, :-1], attention_mask=mask, position_ids=left_padded_positions(mask),
            use_cache=True, **({"logits_to_keep": 1} if forward_accepts(model, "logits_to_keep") else {}),
            **{cache_argument(model): cache},
        )
        cache.batch_repeat_interleave(k)
        prefilled[cache_argument(model)] = cache
    return model.generate(
        input_ids=input_ids.repeat_interleave(k, dim=0), attention_mask=attention_mask.repeat_interleave(k, dim=0),
        num_return_sequences=1, max_new_tokens=max_new_tokens, **prefilled, **generate_kwargs,
    )


class _InverseCdfSampler(LogitsProcessor):
    """Samples each row's next token itself and leaves ``generate`` only that token to pick greedily.

    The scores [B, V] go through transformers' temperature and (when ``top_p`` < 1) nucleus
    warpers, as ``generate`` with ``do_sample=True`` would put them; then a token is drawn from
    their softmax by inverse CDF (one uniform number per row against the cumulative sum) and the
    returned scores are 0 at that token and −inf elsewhere. ``generate``'s own draw,
    ``torch.multinomial``, makes an exponential random number per vocabulary entry: on a CPU at
    128 rows × 49,152 that is 0.16–0.21 s per decoding step, this 0.02 s, for the same distribution.
    """

    def __init__(self, temperature: float, top_p: float):
        warpers = [TemperatureLogitsWarper(temperature)]
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
        self.warpers = LogitsProcessorList(warpers)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        cdf = torch.softmax(self.warpers(input_ids, scores), dim=-1).cumsum_(dim=-1)  # [B, V]
        u = (1 - torch.rand(cdf.shape[0], 1, dtype=cdf.dtype, device=cdf.device)) * cdf[:, -1:]  # in (0, total]
        drawn = torch.searchsorted(cdf, u)  # the first token whose cdf ≥ u: never one of probability 0
        return torch.full_like(scores, -torch.inf).scatter_(1, drawn, 0.0)


class _PreallocatedLayer(DynamicLayer):
    """A full-attention cache layer whose keys and values [B, H, n, D] are views of buffers [B, H, capacity, D].

    transformers' :class:`DynamicLayer` concatenates at every decoding step, so each step copies
    the whole cache into a newly allocated one; here a step writes its own positions in place.
    When something replaced ``keys`` / ``values`` by other tensors (``batch_repeat_interleave``,
    beam reordering), the next update moves them into new buffers first. Past ``capacity``
    positions it concatenates, as :class:`DynamicLayer` does.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, t = self.get_seq_length(), key_states.shape[-2]
        if n + t > self.capacity:
            return super().update(key_states, value_states, *args, **kwargs)
        in_buffers = self._buffers is not None and all(
            view.data_ptr() == buffer.data_ptr() and view.shape[:-2] == buffer.shape[:-2]
            for view, buffer in zip((self.keys, self.values), self._buffers))
        if not in_buffers:
            self._buffers = tuple(new.new_empty(*new.shape[:-2], self.capacity, new.shape[-1])
                                  for new in (key_states, value_states))
            if n:
                self._buffers[0][..., :n, :].copy_(self.keys)
                self._buffers[1][..., :n, :].copy_(self.values)
        keys, values = self._buffers
        keys[..., n : n + t, :].copy_(key_states)
        values[..., n : n + t, :].copy_(value_states)
        self.keys, self.values = keys[..., : n + t, :], values[..., : n + t, :]
        return self.keys, self.values


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    k: int,
    temperature: float,
    max_new_tokens: int,
    top_p: float = 1.0,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
    desc: str = "sampling",
    draw: str = "inverse_cdf",
) -> list[list[Sample]]:
    """Return ``k`` samples for each prompt: a list of ``len(prompts)`` lists of ``k`` :class:`Sample`.

    ``temperature == 0`` is greedy decoding (then ``k`` must be 1); otherwise responses are sampled
    at ``temperature`` with nucleus ``top_p`` and no top-k cut, each token drawn by :class:`_InverseCdfSampler`
    (``draw="inverse_cdf"``, faster at large vocabularies) or by ``generate``'s own ``torch.multinomial``
    (``"multinomial"``: the same distribution from other random numbers). Each response stops at EOS or after
    ``max_new_tokens`` tokens. The same ``seed`` gives the same responses; the global RNG is left
    untouched. The model's train/eval mode is restored afterwards.
    """
    if temperature < 0:
        raise ValueError(f"temperature: got {temperature}, expected a non-negative number")
    if temperature == 0 and k != 1:
        raise ValueError(f"greedy decoding (temperature 0) gives one response per prompt; got k={k}")
    if draw not in ("multinomial", "inverse_cdf"):
        raise ValueError(f"draw: got {draw!r}, expected 'multinomial' or 'inverse_cdf'")
    if temperature == 0:
        decoding = {"do_sample": False}
    elif draw == "inverse_cdf":  # greedy on the one token _InverseCdfSampler leaves
        decoding = {"do_sample": False, "logits_processor": LogitsProcessorList([_InverseCdfSampler(temperature, top_p)])}
    else:
        decoding = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
    pad = pad_id(tokenizer)
    responses: list[list[Sample]] = []
    device = model.device
    with evaluating(model), torch.random.fork_rng(devices=[] if device.type == "cpu" else [device], device_type=device.type):
        torch.manual_seed(seed)
        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc=desc, unit="batch", disable=not progress):
            input_ids, attention_mask = left_pad([encode_prompt(tokenizer, p) for p in prompts[start : start + batch_size]], pad)
            out = _generate_k(
                model, input_ids.to(device), attention_mask.to(device), k, max_new_tokens,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=pad, **decoding,
            )  # [b * k, T + new], the k samples of a prompt adjacent
            samples = [split_at_eos(tokenizer, ids) for ids in out[:, input_ids.shape[1] :].tolist()]
            responses.extend(samples[i : i + k] for i in range(0, len(samples), k))
    return responses
