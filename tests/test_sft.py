"""SFT's stopping rule: the mean of the last ``sft.smooth`` validation accuracies reaches the target."""

from __future__ import annotations

import json

import pytest

from larpo.config import SFTConfig, TaskConfig
from larpo.sft import reached, sft_train
from larpo.tasks import build_task


@pytest.mark.parametrize(("history", "smooth", "stops"), [
    ([0.1, 0.5], 1, True),          # the latest evaluation alone: one lucky jump stops it
    ([0.1, 0.5], 2, False),         # mean 0.30
    ([0.1, 0.5, 0.2], 3, False),    # mean 0.27
    ([0.1, 0.5, 0.2, 0.4, 0.5], 3, True),  # the last three: mean 0.37
    ([0.5, 0.5], 3, False),         # fewer evaluations than the window
])
def test_sft_stops_once_the_mean_of_its_last_evaluations_reaches_the_target(history, smooth, stops):
    assert reached(history, smooth, 0.35) is stops


@pytest.mark.parametrize("smooth", [1, 3])
def test_sft_training_stops_at_the_first_full_window(tiny_model, tiny_tokenizer, tmp_path, smooth):
    task = build_task(TaskConfig(n_train=40, n_eval=4))
    examples = task.train_examples()
    cfg = SFTConfig(max_steps=20, batch_size=4, eval_every=2, warmup_steps=0, target_accuracy=0.0, smooth=smooth)
    log = tmp_path / "metrics.jsonl"
    result = sft_train(tiny_model, tiny_tokenizer, task, examples[:32], examples[32:], cfg, max_new_tokens=4,
                       metrics_path=log, progress=False)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert result["steps"] == 2 * smooth and [r["step"] for r in rows] == [2 * (i + 1) for i in range(smooth)]
