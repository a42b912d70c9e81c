"""How prompts and responses become token ids — one place, used by SFT, sampling and training.

A prompt and its response are tokenised separately and concatenated, so the boundary between
them is exact: the response's log-probability never depends on how a tokenizer would have merged
across the boundary.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of a prompt, with the tokenizer's own special tokens (e.g. BOS) where it adds them."""
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def encode_response(tokenizer: PreTrainedTokenizerBase, response: str) -> list[int]:
    """Token ids of a response, terminated by EOS so that stopping is part of what is learned."""
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return [*ids, tokenizer.eos_token_id]


def decode_response(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    """Text of generated ids, cut at the first EOS; padding and special tokens dropped."""
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    return tokenizer.decode(ids, skip_special_tokens=True)
