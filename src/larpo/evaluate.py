"""The policy judged by the task's gold reward on held-out prompts, with greedy decoding."""

from __future__ import annotations

from typing import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .sampling import generate
from .tasks import Example, Task


def greedy_eval(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    max_new_tokens: int,
    batch_size: int = 64,
    progress: bool = False,
) -> dict:
    """Greedy exact accuracy, mean gold reward and mean response length (characters)."""
    prompts = [ex.prompt for ex in examples]
    responses = [r[0] for r in generate(model, tokenizer, prompts, 1, 0.0, max_new_tokens, batch_size=batch_size, progress=progress)]
    n = len(prompts)
    return {
        "exact_accuracy": sum(task.correct(p, r) for p, r in zip(prompts, responses)) / n,
        "gold_reward": sum(task.reward(p, r) for p, r in zip(prompts, responses)) / n,
        "mean_length": sum(len(r) for r in responses) / n,
        "n_prompts": n,
    }
