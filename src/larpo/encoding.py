"""How prompts and responses become token ids — one place, used by SFT, sampling and training.

A prompt and its response are tokenised separately and concatenated, so the boundary between
them is exact: the response's log-probability never depends on how a tokenizer would have merged
across the boundary.

A prompt is a string or, in the conversational format, a list of ``{"role", "content"}``
messages. With a tokenizer that has a chat template, a string becomes one user turn and the
template renders the conversation up to the assistant's turn (``add_generation_prompt``); the
response is the assistant's text. Without a chat template a string is tokenised as it is, and a
message list is an error.

Length limits travel with the tokenizer (:func:`set_length_limits`), so that every caller of
these functions truncates the same way and the truncations are counted in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

from transformers import PreTrainedTokenizerBase

Prompt = Union[str, list[dict]]  # a text, or a list of {"role", "content"} messages


@dataclass
class LengthLimits:
    """Token limits on prompts and responses, and how many of each were cut (counted per call)."""

    max_prompt_tokens: int | None = None  # a longer prompt keeps its last tokens
    max_response_tokens: int | None = None  # a longer response (EOS included) keeps its first tokens
    truncated_prompts: int = 0
    truncated_responses: int = 0


_LIMITS = "_larpo_length_limits"


def set_length_limits(
    tokenizer: PreTrainedTokenizerBase, max_prompt_tokens: int | None, max_response_tokens: int | None
) -> LengthLimits:
    """Make :func:`encode_prompt` / :func:`encode_response` truncate for this tokenizer; return the counters."""
    limits = LengthLimits(max_prompt_tokens, max_response_tokens)
    setattr(tokenizer, _LIMITS, limits)
    return limits


def length_limits(tokenizer: PreTrainedTokenizerBase) -> LengthLimits:
    """The tokenizer's limits and truncation counts (no limits unless :func:`set_length_limits` set them)."""
    return getattr(tokenizer, _LIMITS, None) or LengthLimits()


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> list[int]:
    """Token ids of a prompt: through the chat template when the tokenizer has one, else the text with
    the tokenizer's own special tokens (e.g. BOS) where it adds them. Truncated from the left."""
    if tokenizer.chat_template is not None:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        ids = list(ids)
    elif isinstance(prompt, str):
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    else:
        raise ValueError("a prompt given as a list of messages needs a tokenizer with a chat template")
    limits = getattr(tokenizer, _LIMITS, None)
    if limits is not None and limits.max_prompt_tokens is not None and len(ids) > limits.max_prompt_tokens:
        limits.truncated_prompts += 1
        ids = ids[len(ids) - limits.max_prompt_tokens :]
    return ids


def encode_response(
    tokenizer: PreTrainedTokenizerBase,
    response: str,
    sampled_ids: Sequence[int] | None = None,
    finished: bool = True,
) -> list[int]:
    """Token ids of a response as it is trained on, followed by EOS if it finished.

    ``sampled_ids`` are the ids the policy drew (EOS excluded): training scores exactly those, even
    where decoding and re-tokenising the text would give other ids. Without them the text is
    tokenised. EOS is appended only to a ``finished`` response — one the policy ended itself (or a
    given text, such as an SFT answer) — so a response cut at ``sampling.max_new_tokens`` never
    teaches the policy to stop there. For a chat model, EOS should be its end-of-turn token (e.g.
    ``<|im_end|>``, ``<|eot_id|>``). A response cut by ``max_response_tokens`` loses its EOS too,
    since it did not end there.
    """
    ids = list(sampled_ids) if sampled_ids is not None else tokenizer(response, add_special_tokens=False)["input_ids"]
    if finished:
        ids.append(tokenizer.eos_token_id)
    limits = getattr(tokenizer, _LIMITS, None)
    if limits is not None and limits.max_response_tokens is not None and len(ids) > limits.max_response_tokens:
        limits.truncated_responses += 1
        ids = ids[: limits.max_response_tokens]
    return ids
