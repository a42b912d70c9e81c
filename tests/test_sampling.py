"""Sampling K candidates per prompt: shapes, seeding, greedy decoding, EOS, batch invariance, and the
prompt prefilled once giving what ``generate`` with K copies of the prompt gives."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from larpo.encoding import encode_prompt
from larpo.logprobs import collate_pairs, left_pad, sequence_logps
from larpo.sampling import Sample, generate, split_at_eos
from larpo.versions import internals_tested

PROMPTS = ["1+2=", "123+456=", "98-7=", "5-999=", "0+0=", "77+1=", "4-4="]  # different lengths
IN_PLACE = pytest.mark.skipif(not internals_tested("transformers"),
                              reason="the installed transformers is not a release _PreallocatedLayer was tested with")


@pytest.fixture
def peaked_model(tiny_model):
    """The tiny model with large random weights: prompt-dependent greedy outputs that often stop at EOS."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tiny_model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3, generator=g)
    return tiny_model


def test_returns_k_responses_per_prompt(tiny_model, tiny_tokenizer):
    out = generate(tiny_model, tiny_tokenizer, PROMPTS, k=3, temperature=1.0, max_new_tokens=5, batch_size=2)
    assert len(out) == len(PROMPTS)
    assert all(len(group) == 3 and all(isinstance(s, Sample) and isinstance(s.text, str) for s in group) for group in out)


@pytest.mark.parametrize("draw", ["multinomial", "inverse_cdf"])
def test_same_seed_same_samples_and_global_rng_untouched(tiny_model, tiny_tokenizer, draw):
    kwargs = dict(k=4, temperature=1.0, max_new_tokens=6, seed=7, draw=draw)
    state = torch.get_rng_state()
    first = generate(tiny_model, tiny_tokenizer, PROMPTS, **kwargs)
    torch.manual_seed(123)  # whatever the global RNG holds, the samples depend on the seed alone
    again = generate(tiny_model, tiny_tokenizer, PROMPTS, **kwargs)
    assert first == again
    torch.set_rng_state(state)
    generate(tiny_model, tiny_tokenizer, PROMPTS, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("draw", ["multinomial", "inverse_cdf"])
def test_different_seeds_give_different_samples(tiny_model, tiny_tokenizer, draw):
    a = generate(tiny_model, tiny_tokenizer, PROMPTS, k=4, temperature=1.0, max_new_tokens=6, seed=0, draw=draw)
    b = generate(tiny_model, tiny_tokenizer, PROMPTS, k=4, temperature=1.0, max_new_tokens=6, seed=1, draw=draw)
    assert a != b


def test_an_unknown_draw_is_refused(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="draw"):
        generate(tiny_model, tiny_tokenizer, PROMPTS, k=2, temperature=1.0, max_new_tokens=2, draw="gumbel")


def test_greedy_requires_k_of_one(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="k=2"):
        generate(tiny_model, tiny_tokenizer, PROMPTS, k=2, temperature=0.0, max_new_tokens=4)


def test_greedy_batched_with_left_padding_equals_one_prompt_at_a_time(peaked_model, tiny_tokenizer):
    greedy = dict(k=1, temperature=0.0, max_new_tokens=12)
    alone = [generate(peaked_model, tiny_tokenizer, [p], **greedy)[0] for p in PROMPTS]
    batched = generate(peaked_model, tiny_tokenizer, PROMPTS, batch_size=4, **greedy)
    assert len({r[0].text for r in alone}) > 3  # the outputs do depend on the prompt
    assert batched == alone


def test_responses_stop_at_eos_and_carry_no_special_tokens(peaked_model, tiny_tokenizer):
    out = generate(peaked_model, tiny_tokenizer, PROMPTS, k=8, temperature=1.0, max_new_tokens=12, batch_size=3)
    samples = [s for group in out for s in group]
    assert {s.finished for s in samples} == {True, False}  # some stopped early, in a batch with longer ones
    for s in samples:
        assert tiny_tokenizer.eos_token_id not in s.ids  # cut at the first EOS (and the padding after it)
        assert len(s.ids) < 12 if s.finished else len(s.ids) == 12  # unfinished: cut at the limit
        assert s.text == tiny_tokenizer.decode(list(s.ids), skip_special_tokens=True)
        assert "<eos>" not in s.text and "<pad>" not in s.text


def test_a_policy_that_always_ends_gives_empty_responses(tiny_model, tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id

    def favour_eos(module, inputs, logits):  # logits: [B, T, V]
        return logits + 1e4 * torch.nn.functional.one_hot(torch.tensor(eos), logits.shape[-1])

    tiny_model.lm_head.register_forward_hook(favour_eos)
    out = generate(tiny_model, tiny_tokenizer, PROMPTS, k=2, temperature=1.0, max_new_tokens=5)
    assert out == [[Sample("", (), True)] * 2] * len(PROMPTS)


@pytest.mark.parametrize("training", [True, False])
def test_model_mode_is_restored(tiny_model, tiny_tokenizer, training):
    tiny_model.train(training)
    generate(tiny_model, tiny_tokenizer, PROMPTS[:2], k=1, temperature=0.0, max_new_tokens=3)
    assert tiny_model.training is training


def test_caller_tokenizer_is_not_changed(tiny_model, tiny_tokenizer):
    side = tiny_tokenizer.padding_side
    generate(tiny_model, tiny_tokenizer, PROMPTS, k=1, temperature=0.0, max_new_tokens=3)
    assert tiny_tokenizer.padding_side == side


def test_progress_bar_does_not_change_results(tiny_model, tiny_tokenizer):
    kwargs = dict(k=2, temperature=1.0, max_new_tokens=4, batch_size=3, seed=5)
    assert generate(tiny_model, tiny_tokenizer, PROMPTS, progress=True, **kwargs) == generate(
        tiny_model, tiny_tokenizer, PROMPTS, **kwargs
    )


def generate_with_k_copies(model, tokenizer, prompts, k, seed, **decoding) -> list[Sample]:
    """HF ``generate`` with ``num_return_sequences=k`` on the left-padded prompts: every prompt prefilled k times."""
    input_ids, attention_mask = left_pad([encode_prompt(tokenizer, p) for p in prompts], tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        out = model.eval().generate(input_ids=input_ids, attention_mask=attention_mask, num_return_sequences=k,
                                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **decoding)
    return [split_at_eos(tokenizer, ids) for ids in out[:, input_ids.shape[1]:].tolist()]


def test_greedy_output_is_generates_on_the_whole_prompt(peaked_model, tiny_tokenizer):
    ours = generate(peaked_model, tiny_tokenizer, PROMPTS, k=1, temperature=0.0, max_new_tokens=12, batch_size=4)
    theirs = generate_with_k_copies(peaked_model, tiny_tokenizer, PROMPTS[:4], 1, 0, do_sample=False, max_new_tokens=12)
    theirs += generate_with_k_copies(peaked_model, tiny_tokenizer, PROMPTS[4:], 1, 0, do_sample=False, max_new_tokens=12)
    assert [group[0] for group in ours] == theirs


@pytest.mark.parametrize("draw", ["multinomial", "inverse_cdf"])
def test_first_tokens_are_drawn_from_the_models_distribution_as_generate_draws_them(peaked_model, tiny_tokenizer, draw):
    k, vocab = 300, len(tiny_tokenizer)
    decoding = dict(temperature=1.0, top_p=1.0, max_new_tokens=1)
    ours = generate(peaked_model, tiny_tokenizer, PROMPTS, k=k, seed=0, batch_size=4, draw=draw, **decoding)
    theirs = generate_with_k_copies(peaked_model, tiny_tokenizer, PROMPTS, k, seed=1, do_sample=True, top_k=0, **decoding)
    eos = tiny_tokenizer.eos_token_id
    for i, prompt in enumerate(PROMPTS):
        ids = torch.tensor([encode_prompt(tiny_tokenizer, prompt)])
        with torch.no_grad():
            p = torch.softmax(peaked_model(input_ids=ids).logits[0, -1].double(), dim=-1)
        counts = [torch.bincount(torch.tensor([s.ids[0] if s.ids else eos for s in samples]), minlength=vocab)
                  for samples in (ours[i], theirs[i * k : (i + 1) * k])]
        seen = (counts[0] + counts[1]) > 0
        assert stats.chi2_contingency(torch.stack(counts)[:, seen].numpy()).pvalue > 1e-3, prompt
        likely = p * k >= 5  # the chi-square test against the exact distribution, on tokens expected 5+ times
        observed = torch.cat([counts[0][likely], counts[0][~likely].sum()[None]]).double()
        expected = torch.cat([p[likely], p[~likely].sum()[None]]) * k
        assert stats.chisquare(observed.numpy(), expected.numpy()).pvalue > 1e-3, prompt


@pytest.mark.parametrize("draw", ["multinomial", "inverse_cdf"])
def test_samples_are_as_likely_as_generates(peaked_model, tiny_tokenizer, draw):
    k, eos = 40, tiny_tokenizer.eos_token_id
    decoding = dict(temperature=0.7, top_p=0.9, max_new_tokens=6)
    ours = [s for group in generate(peaked_model, tiny_tokenizer, PROMPTS, k=k, seed=0, draw=draw, **decoding)
            for s in group]
    theirs = generate_with_k_copies(peaked_model, tiny_tokenizer, PROMPTS, k, seed=1, do_sample=True, top_k=0, **decoding)
    prompts = [encode_prompt(tiny_tokenizer, p) for p in PROMPTS for _ in range(k)]

    def logps(samples):  # log π of each sampled continuation, its EOS included when it stopped
        pairs = [(p, [*s.ids, eos] if s.finished else list(s.ids)) for p, s in zip(prompts, samples)]
        with torch.no_grad():
            return sequence_logps(peaked_model, collate_pairs(pairs, tiny_tokenizer.pad_token_id)).double()

    a, b = logps(ours), logps(theirs)
    standard_error = (a.var() / len(a) + b.var() / len(b)).sqrt()
    assert abs(a.mean() - b.mean()) < 4 * standard_error


@IN_PLACE
def test_the_preallocated_cache_layer_holds_what_a_dynamic_layer_holds_and_decodes_in_place():
    from transformers.cache_utils import DynamicLayer

    from larpo.sampling import _PreallocatedLayer

    g = torch.Generator().manual_seed(0)
    kv = lambda b, t: (torch.randn(b, 2, t, 4, generator=g), torch.randn(b, 2, t, 4, generator=g))  # noqa: E731
    ours, plain = _PreallocatedLayer(capacity=9), DynamicLayer()

    def step(*states):
        a, b = ours.update(*states), plain.update(*states)
        for x, y in zip(a, b):
            assert torch.equal(x, y)
        return a

    step(*kv(2, 3))  # a prefill
    for layer in (ours, plain):
        layer.batch_repeat_interleave(3)  # replaced by new tensors: moved into new buffers at the next update
    keys, _ = step(*kv(6, 1))
    start = keys.data_ptr()
    for _ in range(3):  # decoding steps write in place
        keys, _ = step(*kv(6, 1))
        assert keys.data_ptr() == start
    for layer in (ours, plain):
        layer.crop(-2)
    step(*kv(6, 2))
    step(*kv(6, 3))  # past the capacity of 9: concatenated
    assert ours.get_seq_length() == plain.get_seq_length() == 10


def preallocated_layers_made(monkeypatch) -> list:
    """The :class:`_PreallocatedLayer` instances sampling makes from now on."""
    import larpo.sampling

    made = []

    class Recorded(larpo.sampling._PreallocatedLayer):
        def __init__(self, capacity: int):
            super().__init__(capacity)
            made.append(self)

    monkeypatch.setattr(larpo.sampling, "_PreallocatedLayer", Recorded)
    return made


def untested_transformers(monkeypatch) -> None:
    import larpo.versions

    monkeypatch.setattr(larpo.versions, "version", lambda package: "5.99.0")  # a release no one tested


SAMPLING = dict(k=3, temperature=1.0, max_new_tokens=8, batch_size=3, seed=2)


def test_on_a_transformers_release_it_was_not_tested_with_sampling_keeps_transformers_own_cache_layers(
        tiny_model, tiny_tokenizer, monkeypatch):
    made = preallocated_layers_made(monkeypatch)
    untested_transformers(monkeypatch)
    out = generate(tiny_model, tiny_tokenizer, PROMPTS, **SAMPLING)
    assert not made and [len(group) for group in out] == [3] * len(PROMPTS)


@IN_PLACE
def test_on_a_tested_release_the_cache_is_written_in_place_and_the_samples_are_those_of_transformers_own_layers(
        tiny_model, tiny_tokenizer, monkeypatch):
    made = preallocated_layers_made(monkeypatch)
    ours = generate(tiny_model, tiny_tokenizer, PROMPTS, **SAMPLING)
    assert made and all(layer.capacity == layer._buffers[0].shape[-2] for layer in made)
    untested_transformers(monkeypatch)
    assert ours == generate(tiny_model, tiny_tokenizer, PROMPTS, **SAMPLING)


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_the_draw_follows_the_warped_softmax_and_never_picks_a_token_the_nucleus_dropped(top_p):
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    from larpo.sampling import _InverseCdfSampler

    n, temperature = 20000, 0.7
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0, 1.5]]).expand(n, -1)
    torch.manual_seed(0)
    scores = _InverseCdfSampler(temperature, top_p)(None, logits.clone())
    assert torch.equal((scores == 0).sum(dim=1), torch.ones(n, dtype=torch.long))  # one token per row, the rest −inf
    assert torch.isinf(scores[scores != 0]).all()
    counts = torch.bincount(scores.argmax(dim=1), minlength=logits.shape[1])
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature), *([TopPLogitsWarper(top_p)] if top_p < 1 else [])])
    p = torch.softmax(warpers(None, logits[:1].clone()).double(), dim=-1)[0]  # what generate(do_sample=True) draws from
    kept = p > 0
    assert (counts[~kept] == 0).all() and (~kept).any() == (top_p < 1)
    assert stats.chisquare(counts[kept].numpy(), (p[kept] * n).numpy()).pvalue > 1e-3
