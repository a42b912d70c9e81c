"""LoRA through peft: only adapters train, the base stays exact, adapter directories save/load/export."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from larpo import config as C
from larpo.cli import main
from larpo.config import ConfigError, ModelConfig, TrainConfig
from larpo.lists import RankedList
from larpo.loop import run
from larpo.models import apply_lora, build_tiny_model, export_model, load_policy, policy_from_config, save_policy
from larpo.trainer import make_accelerator, train_phase

LORA = ModelConfig(lora=True, lora_r=4, lora_alpha=8)
IDS = torch.tensor([[5, 9, 12, 7, 3, 10, 11]])  # token ids within the tiny vocabulary


def logits(model, ids=IDS) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def lora_policy(tiny_model_dir, cfg: ModelConfig = LORA, seed: int = 0):
    """The saved tiny model with LoRA adapters whose B is random, so that they change the output."""
    model, tokenizer = load_policy(tiny_model_dir)
    model = apply_lora(model, cfg)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return model, tokenizer


def test_only_adapter_parameters_require_grad(tiny_model_dir):
    model, _ = load_policy(tiny_model_dir)
    model = apply_lora(model, LORA)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "v_proj"}  # peft's default for Llama


def test_all_linear_targets_every_linear_layer_but_the_output_head(tiny_model_dir):
    model, _ = load_policy(tiny_model_dir)
    model = apply_lora(model, ModelConfig(lora=True, lora_target_modules=["all-linear"]))
    targeted = {n.split(".")[-4] for n, p in model.named_parameters() if p.requires_grad}
    assert targeted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_unknown_target_module_names_the_field(tiny_model_dir):
    model, _ = load_policy(tiny_model_dir)
    with pytest.raises(ConfigError, match=r"model\.lora_target_modules: got \['nothing_here'\]"):
        apply_lora(model, ModelConfig(lora=True, lora_target_modules=["nothing_here"]))


def test_disabled_adapters_give_exactly_the_base_logits(tiny_model_dir):
    base, _ = load_policy(tiny_model_dir)
    model, _ = lora_policy(tiny_model_dir)
    assert not torch.allclose(logits(model), logits(base))
    with model.disable_adapter():
        assert torch.equal(logits(model), logits(base))


def test_a_training_phase_changes_only_the_adapters(tiny_model_dir):
    model, tokenizer = lora_policy(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lists = [
        RankedList("a", "12+34=", ("46", "45", "9"), (1.0, 0.5, 0.0), ("own",) * 3),
        RankedList("b", "5+5=", ("10", "11"), (1.0, 0.0), ("own",) * 2),
    ]
    cfg = TrainConfig(lr=1e-2, epochs=2, batch_size=2, micro_batch_size=2, warmup_ratio=0.0)
    train_phase(model, tokenizer, lists, cfg, make_accelerator(cfg), progress=False)
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert not torch.equal(p.cpu(), before[name].cpu()), name
        else:
            assert torch.equal(p.cpu(), before[name].cpu()), name


def test_saved_lora_policy_is_an_adapter_directory_that_loads_with_the_same_logits(tiny_model_dir, tmp_path):
    model, tokenizer = lora_policy(tiny_model_dir)
    save_policy(model, tokenizer, tmp_path / "policy")
    files = {p.name for p in (tmp_path / "policy").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files
    assert "model.safetensors" not in files and not any(name.endswith(".bin") for name in files)
    base = json.loads((tmp_path / "policy" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str(tiny_model_dir.resolve())
    loaded, loaded_tokenizer = load_policy(tmp_path / "policy")
    assert isinstance(loaded, PeftModel)
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert torch.equal(logits(loaded), logits(model))
    assert any(p.requires_grad for n, p in loaded.named_parameters() if "lora_" in n)  # training can go on


def test_export_merges_adapters_into_a_plain_model_with_the_same_logits(tiny_model_dir, tmp_path):
    model, tokenizer = lora_policy(tiny_model_dir)
    save_policy(model, tokenizer, tmp_path / "policy")
    assert main(["export-model", str(tmp_path / "policy"), str(tmp_path / "merged")]) == 0
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    merged, _ = load_policy(tmp_path / "merged")
    assert not isinstance(merged, PeftModel)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged), logits(model), rtol=0, atol=1e-5)


def test_export_of_a_plain_model_resaves_it(tiny_model_dir, tmp_path):
    assert export_model(tiny_model_dir, tmp_path / "out") is False
    a, _ = load_policy(tiny_model_dir)
    b, _ = load_policy(tmp_path / "out")
    assert torch.equal(logits(a), logits(b))


def test_a_lora_model_whose_base_was_never_saved_is_refused(tiny_tokenizer, tiny_model_config, tmp_path):
    model = apply_lora(build_tiny_model(tiny_model_config, tiny_tokenizer, seed=0), LORA)
    with pytest.raises(ConfigError, match="LoRA base model"):
        save_policy(model, tiny_tokenizer, tmp_path / "policy")


def test_an_adapter_directory_whose_base_is_gone_names_both(tiny_tokenizer, tiny_model_config, tmp_path):
    save_policy(build_tiny_model(tiny_model_config, tiny_tokenizer, seed=0), tiny_tokenizer, tmp_path / "base")
    model, tokenizer = lora_policy(tmp_path / "base")
    save_policy(model, tokenizer, tmp_path / "policy")
    (tmp_path / "base" / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"the LoRA base named in .*policy.*adapter_config\.json.* no \*\.safetensors"):
        load_policy(tmp_path / "policy")


def test_policy_from_config_applies_dtype_lora_and_checkpointing(tiny_model_dir):
    cfg = ModelConfig(dtype="bfloat16", lora=True, gradient_checkpointing=True, lora_r=4)
    model, tokenizer = policy_from_config(tiny_model_dir, cfg, train=True)
    assert isinstance(model, PeftModel) and model.get_base_model().is_activation_checkpointing
    assert model.get_base_model().model.embed_tokens.weight.dtype == torch.bfloat16
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}
    model.train()
    out = model(input_ids=IDS, labels=IDS)
    out.loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)
    plain, _ = policy_from_config(tiny_model_dir, cfg)  # not for training: no adapters
    assert not isinstance(plain, PeftModel)


SCORER = """
def score(prompts, responses):
    return [float(sum(map(ord, r)) % 5) for r in responses]
"""


def test_a_lora_run_trains_adapters_over_iterations_on_a_frozen_base(tiny_model_dir, tmp_path, monkeypatch):
    (tmp_path / "scorer.py").write_text(SCORER)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = C.load(None, [
        f"model.path={tiny_model_dir}", "sft.enabled=false", "model.lora=true", "model.lora_r=4",
        "task.n_train=24", "task.n_eval=8", "reranker.kind=callable", "reranker.function=scorer:score",
        "sampling.k=4", "sampling.max_new_tokens=4", "train.lr=1e-2", "train.epochs=1", "train.batch_size=4",
        "train.micro_batch_size=4", "loop.iterations=2", "loop.prompts_per_iteration=8", "eval.n_prompts=8",
    ])
    run(cfg, tmp_path / "run", progress=False, log=lambda _: None)
    policies = [tmp_path / "run" / f"iter_{s}" / "policy" for s in (0, 1)]
    for policy in policies:
        assert (policy / "adapter_config.json").is_file() and not (policy / "model.safetensors").exists()
    first, _ = load_policy(policies[0])
    last, _ = load_policy(policies[1])
    base, _ = load_policy(tiny_model_dir)
    assert not torch.equal(logits(first), logits(last))  # the second iteration trained the adapters further
    with last.disable_adapter():
        assert torch.equal(logits(last), logits(base))


LORA_RUN = ["sft.enabled=false", "model.lora=true", "model.lora_r=4", "model.lora_dropout=0.1", "train.dropout=true",
            "task.n_train=24", "task.n_eval=8", "reranker.kind=callable", "reranker.function=scorer:score",
            "sampling.k=4", "sampling.max_new_tokens=4", "train.lr=1e-2", "train.epochs=1", "train.batch_size=4",
            "train.micro_batch_size=2", "loop.iterations=2", "loop.prompts_per_iteration=8", "eval.n_prompts=8",
            "eval.samples=0", "seed=5"]


@pytest.fixture
def lora_run_config(tiny_model_dir, tmp_path, monkeypatch):
    """A 2-iteration LoRA run with LoRA dropout kept on in training (its masks then depend on the seed too)."""
    (tmp_path / "scorer.py").write_text(SCORER)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "lora.yaml"
    path.write_text(C.dump(C.load(None, [f"model.path={tiny_model_dir}", *LORA_RUN])))
    return path


def adapter_bytes(run_dir, s):
    return (run_dir / f"iter_{s}" / "policy" / "adapter_model.safetensors").read_bytes()


def test_two_lora_runs_with_one_seed_give_bit_identical_adapters(lora_run_config, tmp_path):
    for name in ("a", "b"):  # one process: the second run starts from whatever the first left in the global RNGs
        run(C.load(lora_run_config), tmp_path / name, progress=False, log=lambda _: None)
    for s in (0, 1):
        assert adapter_bytes(tmp_path / "a", s) == adapter_bytes(tmp_path / "b", s)


def test_a_lora_run_stopped_after_its_first_iteration_resumes_to_the_uninterrupted_result(lora_run_config, tmp_path):
    """The state a kill after the first iteration leaves (real kills: test_reliability.py), resumed: the saved
    adapter reloads onto the base and the second iteration trains as in the uninterrupted run."""
    from test_reliability import cut_after_first_iteration

    run(C.load(lora_run_config), tmp_path / "whole", progress=False, log=lambda _: None)
    stopped = cut_after_first_iteration(tmp_path / "whole", tmp_path / "stopped")
    run(C.load(lora_run_config), stopped, progress=False, log=lambda _: None)
    assert adapter_bytes(stopped, 1) == adapter_bytes(tmp_path / "whole", 1)
    got, want = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("stopped", "whole"))
    assert got["per_policy"] == want["per_policy"]


def test_a_mixed_reference_works_with_lora_and_averages_the_merged_weights(lora_run_config, tiny_model_dir, tmp_path):
    from larpo.reference import reference_model

    cfg = C.load(lora_run_config, ["train.reference=mix", "train.reference_mix=0.5"])
    summary = run(cfg, tmp_path / "mix", progress=False, log=lambda _: None)  # iteration 2 mixes a LoRA policy
    assert len(summary["per_policy"]) == 3 and summary["initial_label"] == "initial"
    load = lambda path: policy_from_config(path, cfg.model)  # noqa: E731
    mixed = reference_model("mix", tiny_model_dir, tmp_path / "mix" / "iter_0" / "policy", 0.5, load).state_dict()
    base = load_policy(tiny_model_dir)[0].state_dict()
    merged = load_policy(tmp_path / "mix" / "iter_0" / "policy")[0].merge_and_unload().state_dict()
    assert mixed.keys() == base.keys()
    changed = [name for name in base if not torch.equal(base[name], merged[name])]
    assert changed  # the adapters moved some weights
    for name in base:
        torch.testing.assert_close(mixed[name], 0.5 * base[name] + 0.5 * merged[name])
