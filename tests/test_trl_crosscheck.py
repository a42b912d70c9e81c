"""bench/trl_crosscheck.py as a test: larpo's pairwise loss is TRL's DPO loss, and train-lists' first
step on a TRL preference file is DPOTrainer's first step on it."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))

import trl_crosscheck  # noqa: E402


def test_pairwise_loss_and_first_train_lists_step_equal_trls_dpo(capsys):
    assert trl_crosscheck.main() == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "first training step on the TRL pairs file" in out and out.rstrip().endswith("OK")
