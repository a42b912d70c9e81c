"""The paper recipes (configs/paper/*.yaml) parse and carry the paper's settings."""

from pathlib import Path

import pytest

from larpo import config as C

PAPER = Path(__file__).parent.parent / "configs" / "paper"
# recipe: (loss, K, top, bottom)
RECIPES = {
    "lambdarank": ("lambdarank", 10, 2, 2),
    "contrastive": ("contrastive", 10, 1, 3),
    "listmle": ("listmle", 10, 2, 2),
    "iterative_dpo": ("pairwise", 2, 1, 1),
}


def test_there_is_one_recipe_per_method():
    assert {p.stem for p in PAPER.glob("*.yaml")} == set(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_paper_recipe_parses_with_the_paper_settings(name):
    cfg = C.load(PAPER / f"{name}.yaml")  # the placeholder paths need not exist to parse
    loss, k, top, bottom = RECIPES[name]
    assert (cfg.train.loss, cfg.sampling.k, cfg.lists.strategy, cfg.lists.top, cfg.lists.bottom) == (loss, k, "top_bottom", top, bottom)
    assert (cfg.sampling.temperature, cfg.train.lr, cfg.train.epochs, cfg.loop.iterations) == (1.0, 5e-7, 2, 3)
    assert (cfg.train.beta, cfg.train.mixed_precision) == (0.1, "bf16")
    assert (cfg.task.name, cfg.reranker.kind, cfg.sft.enabled) == ("jsonl", "hf", False)
    assert cfg.model.path.startswith("/path/to/") and cfg.reranker.path.startswith("/path/to/")
