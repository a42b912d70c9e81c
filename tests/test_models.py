"""Tokenizer, tiny model, and the save/load path that a user's own local model also takes."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import transformers.modeling_utils
from packaging.version import Version
from transformers import AutoModelForCausalLM, LlamaForCausalLM, PreTrainedTokenizerFast

from larpo.config import ConfigError, ModelConfig
from larpo.encoding import encode_prompt
from larpo.models import build_tiny_model, build_tokenizer, load_options, load_policy, policy_from_config, save_policy


def test_tokenizer_round_trips_corpus_like_text(tiny_tokenizer):
    for text in ["123+456=579", "12-57=-45", "0+0=0", "999-1=998", "7+8="]:
        ids = tiny_tokenizer(text, add_special_tokens=True)["input_ids"]
        assert tiny_tokenizer.decode(ids) == text


def test_tokenizer_splits_numbers_into_single_digits(tiny_tokenizer):
    tokens = tiny_tokenizer.convert_ids_to_tokens(tiny_tokenizer("12345+678=")["input_ids"])
    assert tokens == list("12345+678=")


def test_tokenizer_adds_no_special_tokens_to_a_prompt(tiny_tokenizer):
    assert tiny_tokenizer.decode(encode_prompt(tiny_tokenizer, "1+2="), skip_special_tokens=False) == "1+2="


def test_tokenizer_has_pad_and_eos(tiny_tokenizer):
    assert tiny_tokenizer.pad_token == "<pad>" and tiny_tokenizer.eos_token == "<eos>"
    assert tiny_tokenizer.pad_token_id != tiny_tokenizer.eos_token_id


def test_tokenizer_vocab_size_is_a_cap():
    corpus = ["the quick brown fox jumps over the lazy dog 12+34=46"] * 20
    assert len(build_tokenizer(corpus, vocab_size=40)) <= 40
    assert len(build_tokenizer(corpus, vocab_size=1000)) < 1000


def test_unseen_character_becomes_unk_rather_than_vanishing(tiny_tokenizer):
    ids = tiny_tokenizer("1x2")["input_ids"]
    assert ids[1] == tiny_tokenizer.unk_token_id and len(ids) == 3


def test_tiny_model_config_follows_tokenizer(tiny_model, tiny_tokenizer, tiny_model_config):
    cfg = tiny_model.config
    assert isinstance(tiny_model, LlamaForCausalLM)
    assert cfg.vocab_size == len(tiny_tokenizer)
    assert (cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id) == (
        tiny_tokenizer.pad_token_id, tiny_tokenizer.eos_token_id, None
    )
    assert cfg.hidden_size == tiny_model_config.hidden_size
    assert cfg.num_hidden_layers == tiny_model_config.num_layers
    assert tiny_model.lm_head.weight.data_ptr() == tiny_model.model.embed_tokens.weight.data_ptr()


def test_tiny_model_init_is_seeded_and_leaves_global_rng_alone(tiny_tokenizer, tiny_model_config):
    state = torch.get_rng_state()
    a = build_tiny_model(tiny_model_config, tiny_tokenizer, seed=3).state_dict()
    b = build_tiny_model(tiny_model_config, tiny_tokenizer, seed=3).state_dict()
    c = build_tiny_model(tiny_model_config, tiny_tokenizer, seed=4).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


def test_saved_policy_loads_with_same_logits_and_tokens(tiny_model, tiny_tokenizer, tiny_model_dir):
    assert {p.name for p in tiny_model_dir.glob("*.safetensors")} == {"model.safetensors"}
    assert not list(tiny_model_dir.glob("*.bin"))
    model, tokenizer = load_policy(tiny_model_dir)
    ids = torch.tensor([encode_prompt(tiny_tokenizer, "123+456=579")])
    assert encode_prompt(tokenizer, "123+456=579") == ids[0].tolist()
    assert tokenizer.pad_token_id == tiny_tokenizer.pad_token_id
    assert tokenizer.eos_token_id == tiny_tokenizer.eos_token_id
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, tiny_model.eval()(ids).logits)
    assert model.dtype == torch.float32


def test_a_loaded_policy_is_never_kernelized_in_train_or_eval_mode(tiny_model_dir, monkeypatch):
    """transformers >= 5.25 loads with use_kernels=True by default (its kernels requirement installed), and on
    CUDA its kernelize fetches code from the Hub; larpo's loads switch it off. Where transformers does so, the
    control load with its default shows the spy sees a kernelize where there is one (older transformers, as
    in scripts/test-lowest.sh, neither kernelize by default nor require the kernels package)."""
    calls = []
    monkeypatch.setattr(transformers.modeling_utils, "kernelize", lambda model, **kwargs: calls.append(type(model).__name__))
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()
    kernelizes_by_default = (Version(transformers.__version__) >= Version("5.25")
                             and importlib.util.find_spec("kernels") is not None)
    assert bool(calls) == kernelizes_by_default, "the control: transformers' default load"
    calls.clear()
    model, _ = load_policy(tiny_model_dir)
    trained, _ = policy_from_config(tiny_model_dir, ModelConfig(lora=True), train=True)
    for m in (model, trained):
        m.train(), m.eval(), m.train()
    assert calls == []


def test_hub_kernels_on_request_needs_the_kernels_package(monkeypatch):
    assert load_options() == {"local_files_only": True, "use_kernels": False}
    if importlib.util.find_spec("kernels") is not None:  # a requirement of transformers >= 5.25
        assert load_options(hub_kernels=True)["use_kernels"] is True
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="model.hub_kernels"):
        load_options(hub_kernels=True)


def test_load_policy_casts_to_requested_dtype(tiny_model_dir):
    model, _ = load_policy(tiny_model_dir, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16


def test_save_policy_replaces_existing_directory_without_leftovers(tmp_path, tiny_tokenizer, tiny_model_config):
    target = tmp_path / "policy"
    save_policy(build_tiny_model(tiny_model_config, tiny_tokenizer, seed=1), tiny_tokenizer, target)
    second = build_tiny_model(tiny_model_config, tiny_tokenizer, seed=2)
    save_policy(second, tiny_tokenizer, target)
    loaded, _ = load_policy(target)
    assert torch.equal(loaded.model.embed_tokens.weight, second.model.embed_tokens.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["policy"]


def test_load_policy_sets_missing_pad_token_to_eos(tmp_path, tiny_model, tiny_tokenizer):
    no_pad = PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="<eos>")
    save_policy(tiny_model, no_pad, tmp_path / "policy")
    _, tokenizer = load_policy(tmp_path / "policy")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id


def test_load_policy_rejects_missing_directory(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.path: .*nowhere.* not a directory"):
        load_policy(tmp_path / "nowhere")


def test_load_policy_rejects_directory_without_config(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.path: .* no config\.json"):
        load_policy(tmp_path)


def test_load_policy_refuses_pickled_weights(tmp_path, tiny_model, tiny_tokenizer):
    tiny_model.config.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    torch.save(tiny_model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"model\.path: .* no \*\.safetensors"):
        load_policy(tmp_path)
