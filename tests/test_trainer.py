"""One training phase: it learns, its reference cache is exact, and its batching is exact."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from larpo.config import TrainConfig
from larpo.io import read_jsonl
from larpo.lists import RankedList
from larpo.logprobs import collate_pairs, sequence_logps
from larpo.transfer import to_device
from larpo.trainer import encode_lists, make_accelerator, pair_statistics, train_phase

from conftest import cpu_process_env
from phase_worker import fixed_lists

HERE = Path(__file__).parent


def phase_cfg(**kw) -> TrainConfig:
    base = dict(loss="lambdarank", lr=3e-3, epochs=1, batch_size=4, micro_batch_size=4, warmup_ratio=0.0, beta=0.5)
    return TrainConfig(**{**base, **kw})


def gammas(model, ref_model, tokenizer, lists, beta):
    """Per list: γ of each response, computed one response at a time."""
    out = []
    for el in encode_lists(tokenizer, lists):
        pairs = [(el.prompt_ids, r) for r in el.response_ids]
        batch = collate_pairs(pairs, tokenizer.pad_token_id)
        with torch.no_grad():  # each model where it is (a trained one on the accelerator's device)
            pol, ref = (sequence_logps(m.eval(), to_device(batch, m.device)).cpu() for m in (model, ref_model))
        out.append(beta * (pol - ref))
    return out


def test_a_phase_lowers_the_loss_and_raises_pair_accuracy(tiny_model, tiny_tokenizer, tmp_path):
    lists = fixed_lists(12)
    start = copy.deepcopy(tiny_model)
    metrics = tmp_path / "metrics.jsonl"
    cfg = phase_cfg(epochs=10, lr=5e-3)
    result = train_phase(tiny_model, tiny_tokenizer, lists, cfg, make_accelerator(cfg), metrics_path=metrics, tag={"iteration": 0}, progress=False)
    rows = read_jsonl(metrics)
    assert len(rows) == result.steps == 10 * 3 and rows[0]["iteration"] == 0
    assert sum(result.losses[-3:]) < 0.5 * sum(result.losses[:3])
    assert rows[-1]["pair_accuracy"] > rows[0]["pair_accuracy"]
    assert abs(rows[0]["margin"]) < 1e-5  # γ ≈ 0 before the first update: the reference is the policy
    # on the lists, after the phase, the policy orders responses as the reranker does
    after = gammas(tiny_model, start, tiny_tokenizer, lists, cfg.beta)
    correct = sum(bool(g[i] > g[j]) for g in after for i in range(len(g)) for j in range(i + 1, len(g)))
    total = sum(len(g) * (len(g) - 1) // 2 for g in after)
    assert correct / total > 0.8


class RecomputedReference:
    """Reference log-probs recomputed from a frozen copy on every access (every step)."""

    def __init__(self, ref_model, tokenizer, lists):
        self.ref_model, self.encoded, self.pad = ref_model.eval(), encode_lists(tokenizer, lists), tokenizer.pad_token_id
        self.calls = 0

    def __len__(self):
        return len(self.encoded)

    def __getitem__(self, i):
        self.calls += 1
        el = self.encoded[i]
        with torch.no_grad():
            return sequence_logps(self.ref_model, collate_pairs([(el.prompt_ids, r) for r in el.response_ids], self.pad))


def test_cached_reference_gives_the_same_losses_as_recomputing_it_every_step(tiny_tokenizer, tiny_model_config):
    from larpo.models import build_tiny_model

    lists = fixed_lists(8)
    cfg = phase_cfg(epochs=3)
    cached_model = build_tiny_model(tiny_model_config, tiny_tokenizer, seed=1)
    recompute_model = copy.deepcopy(cached_model)
    recomputed = RecomputedReference(copy.deepcopy(cached_model), tiny_tokenizer, lists)
    cached = train_phase(cached_model, tiny_tokenizer, lists, cfg, make_accelerator(cfg), seed=5, progress=False)
    fresh = train_phase(recompute_model, tiny_tokenizer, lists, cfg, make_accelerator(cfg), seed=5, ref_logps=recomputed, progress=False)
    assert recomputed.calls == len(lists) * cfg.epochs
    torch.testing.assert_close(torch.tensor(cached.losses), torch.tensor(fresh.losses), atol=1e-5, rtol=1e-5)
    assert len(cached.ref_logps) == len(lists) and cached.ref_logps[0].shape == (len(lists[0].responses),)


@pytest.mark.parametrize("batch_size,micro", [(8, 1), (5, 2)])
def test_accumulated_micro_batches_equal_one_big_batch(tiny_tokenizer, tiny_model_config, batch_size, micro):
    from larpo.models import build_tiny_model

    lists = fixed_lists(10)
    big = build_tiny_model(tiny_model_config, tiny_tokenizer, seed=2)
    small = copy.deepcopy(big)
    cfg_big = phase_cfg(loss="contrastive", batch_size=batch_size, micro_batch_size=batch_size)
    cfg_small = phase_cfg(loss="contrastive", batch_size=batch_size, micro_batch_size=micro)
    a = train_phase(big, tiny_tokenizer, lists, cfg_big, make_accelerator(cfg_big), seed=1, progress=False)
    b = train_phase(small, tiny_tokenizer, lists, cfg_small, make_accelerator(cfg_small), seed=1, progress=False)
    torch.testing.assert_close(torch.tensor(a.losses), torch.tensor(b.losses), atol=1e-6, rtol=1e-6)
    for p, q in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5)


def test_same_seed_same_result_and_different_seed_different_order(tiny_tokenizer, tiny_model_config):
    from larpo.models import build_tiny_model

    lists = fixed_lists(8)
    cfg = phase_cfg(epochs=2, batch_size=2, micro_batch_size=2)
    runs = []
    for seed in (0, 0, 1):
        model = build_tiny_model(tiny_model_config, tiny_tokenizer, seed=0)
        runs.append(train_phase(model, tiny_tokenizer, lists, cfg, make_accelerator(cfg), seed=seed, progress=False).losses)
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@pytest.mark.parametrize("accelerate_seen", [None, "1.99.0"], ids=["installed", "untested release"])
def test_a_finished_phase_frees_its_optimizer_without_a_garbage_collection(tiny_tokenizer, tiny_model_config, monkeypatch,
                                                                           accelerate_seen):
    """On an accelerate release ``_release`` was tested with, by dropping accelerate's private references; on any
    other, through ``Accelerator.free_memory()`` (which collects garbage itself)."""
    import gc
    import weakref

    from accelerate import Accelerator

    import larpo.trainer
    import larpo.versions
    from larpo.models import build_tiny_model

    if accelerate_seen is not None:
        monkeypatch.setattr(larpo.versions, "version", lambda package: accelerate_seen)
    refs, real, freed = [], larpo.trainer.adamw, []

    def recorded(*args, **kwargs):  # keeps weak references only: to the optimizer and to its state after each step
        optimizer = real(*args, **kwargs)
        refs.append(weakref.ref(optimizer))
        optimizer.register_step_post_hook(
            lambda opt, *_: refs.extend(weakref.ref(t) for s in opt.state.values() for t in s.values() if torch.is_tensor(t)))
        return optimizer

    def free_memory(self, *objects):
        freed.append(self)
        return real_free_memory(self, *objects)

    real_free_memory = Accelerator.free_memory
    monkeypatch.setattr(larpo.trainer, "adamw", recorded)
    monkeypatch.setattr(Accelerator, "free_memory", free_memory)
    cfg = phase_cfg()
    accelerator = make_accelerator(cfg)
    gc.disable()  # only reference counts (or free_memory's own collection) free anything now
    try:
        for seed in (0, 1):  # the same accelerator for two phases, as the loop does
            model = build_tiny_model(tiny_model_config, tiny_tokenizer, seed=seed)
            train_phase(model, tiny_tokenizer, fixed_lists(4), cfg, accelerator, progress=False)
            alive = [r for r in refs if r() is not None]
            assert len(refs) > 2 and not alive, f"{len(alive)} of {len(refs)} optimizer objects outlive phase {seed}"
    finally:
        gc.enable()
    assert len(freed) == (0 if larpo.versions.internals_tested("accelerate") else 2)
    assert accelerate_seen is None or freed


def test_pair_statistics_count_strictly_ordered_pairs():
    gamma = torch.tensor([[3.0, 1.0, 2.0, 9.0, 3.0]])
    rewards = torch.tensor([[1.0, 0.5, 0.5, 7.0, 0.0]])
    mask = torch.tensor([[True, True, True, False, True]])
    correct, pairs, margin = pair_statistics(gamma, mask, rewards).tolist()
    # ordered pairs: (0,1) 3>1 yes, (0,2) 3>2 yes, (0,4) 3=3 half, (1,4) 1<3 no, (2,4) 2<3 no;
    # (1,2) tie in reward; item 3 is padding
    assert (correct, pairs, margin) == (2.5, 5.0, 2.0 + 1.0 + 0.0 - 2.0 - 1.0)


def test_two_processes_match_one_process(tiny_model_dir, tmp_path):
    env = cpu_process_env(PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, str(HERE / "phase_worker.py"), str(tiny_model_dir), str(one)], check=True, env=env, timeout=300)
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(HERE / "phase_worker.py"), str(tiny_model_dir), str(two)],
        check=True, env=env, timeout=300,
    )
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["world"], b["world"]) == (1, 2)
    assert len(a["losses"]) == len(b["losses"]) == 6
    torch.testing.assert_close(torch.tensor(b["losses"]), torch.tensor(a["losses"]), atol=1e-5, rtol=1e-5)
    for name, value in a["params"].items():
        assert abs(b["params"][name] - value) <= 1e-4 * max(1.0, abs(value)), name


def test_shared_prompt_and_repeated_prompt_training_agree(tiny_tokenizer, tiny_model_config):
    from larpo.models import build_tiny_model

    lists = fixed_lists(8)
    results = []
    for shared in (True, False):
        model = build_tiny_model(tiny_model_config, tiny_tokenizer, seed=4)
        cfg = phase_cfg(epochs=2, batch_size=4, micro_batch_size=2, shared_prompt=shared)
        results.append(train_phase(model, tiny_tokenizer, lists, cfg, make_accelerator(cfg), seed=2, progress=False).losses)
    torch.testing.assert_close(torch.tensor(results[0]), torch.tensor(results[1]), atol=1e-5, rtol=1e-5)


def test_activation_checkpointing_keeps_the_shared_prompt_with_the_same_losses(tiny_tokenizer, tiny_model_config, monkeypatch):
    import dataclasses

    import larpo.logprobs
    from larpo.models import build_tiny_model, prepare_policy

    calls = {"packed": 0, "shared": 0, "repeated": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    for name, fn in (("packed", "packed_logps"), ("shared", "shared_prompt_logps"), ("repeated", "sequence_logps")):
        monkeypatch.setattr(larpo.logprobs, fn, counted(name, getattr(larpo.logprobs, fn)))
    lists = fixed_lists(6)
    cfg = phase_cfg(epochs=1, batch_size=3, micro_batch_size=3)
    plain = build_tiny_model(tiny_model_config, tiny_tokenizer, seed=6)
    checkpointed = prepare_policy(copy.deepcopy(plain), dataclasses.replace(tiny_model_config, gradient_checkpointing=True))
    assert checkpointed.is_activation_checkpointing and not plain.is_activation_checkpointing
    a = train_phase(plain, tiny_tokenizer, lists, cfg, make_accelerator(cfg), seed=1, progress=False).losses
    b = train_phase(checkpointed, tiny_tokenizer, lists, cfg, make_accelerator(cfg), seed=1, progress=False).losses
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-5, rtol=1e-5)
    # per phase: one reference batch, two steps; prompts shared (packed or through a cache), never repeated
    assert calls["packed"] + calls["shared"] == 2 * (1 + 2) and calls["repeated"] == 0
    for p, q in zip(plain.parameters(), checkpointed.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5)


def _merged_token(tokenizer) -> tuple[str, list[int]]:
    """A vocabulary entry that is a BPE merge, and the ids of its characters taken one by one."""
    for token, token_id in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        pieces = [tokenizer.convert_tokens_to_ids(ch) for ch in token]
        if len(token) > 1 and tokenizer.unk_token_id not in pieces:
            return tokenizer.convert_tokens_to_string([token]), pieces
    raise AssertionError("the tiny tokenizer has no merged token")


def test_trained_ids_are_the_sampled_ids_even_where_the_text_would_tokenise_otherwise(tiny_tokenizer):
    text, pieces = _merged_token(tiny_tokenizer)  # the policy drew the characters one at a time
    assert tiny_tokenizer(text, add_special_tokens=False)["input_ids"] != pieces  # re-tokenising would merge them
    rl = RankedList("p", "1+2=", (text, text), (1.0, 0.0), ("own", "own"), response_ids=(tuple(pieces), tuple(pieces)),
                    finished=(True, False))
    (encoded,) = encode_lists(tiny_tokenizer, [rl])
    eos = tiny_tokenizer.eos_token_id
    assert encoded.response_ids == [pieces + [eos], pieces]  # EOS only where the policy ended the response


def test_a_text_only_list_is_tokenised_and_ends_in_eos(tiny_tokenizer):
    (encoded,) = encode_lists(tiny_tokenizer, [RankedList("p", "1+2=", ("3", "4"), (1.0, 0.0), ("own", "own"))])
    assert encoded.response_ids == [tiny_tokenizer("3", add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id],
                                    tiny_tokenizer("4", add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id]]


def _first_step_margin(model, tokenizer, cfg, tmp_path) -> float:
    metrics = tmp_path / f"m{len(list(tmp_path.iterdir()))}.jsonl"
    train_phase(model, tokenizer, fixed_lists(4), cfg, make_accelerator(cfg), seed=0, metrics_path=metrics, progress=False)
    return read_jsonl(metrics)[0]["margin"]


def test_gamma_starts_at_zero_with_dropout_in_the_model_and_in_lora(tiny_tokenizer, tmp_path):
    from larpo.config import ModelConfig
    from larpo.models import apply_lora, build_tiny_model

    dropout_model = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, lora_r=4, lora_dropout=0.1)

    def policy():
        model = build_tiny_model(dropout_model, tiny_tokenizer, seed=0)
        model.config.attention_dropout = 0.3
        for layer in model.model.layers:
            layer.self_attn.attention_dropout = 0.3
        return apply_lora(model, dropout_model)

    cfg = phase_cfg(batch_size=4, micro_batch_size=2)
    assert abs(_first_step_margin(policy(), tiny_tokenizer, cfg, tmp_path)) < 1e-6  # γ = 0: the policy is π_ref
    noisy = _first_step_margin(policy(), tiny_tokenizer, phase_cfg(batch_size=4, micro_batch_size=2, dropout=True), tmp_path)
    assert abs(noisy) > 1e-3  # with train.dropout kept on, dropout makes γ ≠ 0 before any update
    model = policy()
    train_phase(model, tiny_tokenizer, fixed_lists(4), cfg, make_accelerator(cfg), seed=0, progress=False)
    assert model.base_model.model.model.layers[0].self_attn.attention_dropout == 0.3  # restored after the phase
    assert model.base_model.model.model.layers[0].self_attn.q_proj.lora_dropout["default"].p == 0.1
