"""Response log-probs in every layout (pairs, shared prompt with a cache, packed lists): response tokens
only, independent of padding and batch composition, exact with a chunked LM head and under activation
checkpointing."""

import random

import pytest
import torch
import torch.nn.attention.flex_attention as flex_attention_module
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from larpo import lm_head, logprobs, segment_attention
from larpo.logprobs import choose_layout, collate_lists, collate_pairs, list_logps, sequence_logps, shared_prompt_logps
from larpo.packing import LAYOUTS, layout_costs, pack_lists, packing_is_exact
from larpo.segment_attention import Segments


def random_llama(seed: int = 0, vocab: int = 40, kv_heads: int = 4, hidden: int = 32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64, pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def random_pairs(seed: int, n: int, vocab: int = 40):
    rng = random.Random(seed)
    return [
        ([rng.randrange(1, vocab) for _ in range(rng.randint(1, 12))], [rng.randrange(1, vocab) for _ in range(rng.randint(1, 9))])
        for _ in range(n)
    ]


def unpadded_reference(model, prompt, response) -> float:
    """One forward of the bare sequence, log-softmax in float64, sum over the response positions."""
    ids = torch.tensor([prompt + response], device=model.device)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.double(), dim=-1)[0]
    return sum(logp[len(prompt) + t - 1, tok].item() for t, tok in enumerate(response))


def test_collate_masks_exactly_the_response_tokens():
    batch = collate_pairs([([5, 6, 7], [8, 9]), ([1], [2, 3, 4, 5])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [1, 2, 3, 4, 5]]
    assert batch["response_mask"].tolist() == [[False, False, False, True, True], [False, True, True, True, True]]
    batch = collate_pairs([([5], [6]), ([1, 2], [3, 4])], pad_id=0)
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch["response_mask"].tolist() == [[False, True, False, False], [False, False, True, True]]


def test_sequence_logps_equal_one_unpadded_forward_per_example():
    model = random_llama()
    pairs = random_pairs(seed=1, n=9)
    with torch.no_grad():
        got = sequence_logps(model, collate_pairs(pairs, pad_id=0))
    want = torch.tensor([unpadded_reference(model, p, r) for p, r in pairs])
    torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-5)


def test_sequence_logps_do_not_depend_on_batch_composition():
    model = random_llama(seed=2)
    pairs = random_pairs(seed=3, n=6)
    long_neighbour = ([7] * 30, [9] * 20)
    with torch.no_grad():
        alone = torch.cat([sequence_logps(model, collate_pairs([p], pad_id=0)) for p in pairs])
        padded = sequence_logps(model, collate_pairs([*pairs, long_neighbour], pad_id=0))[:-1]
        shuffled = sequence_logps(model, collate_pairs(pairs[::-1], pad_id=0)).flip(0)
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shuffled, alone, atol=1e-5, rtol=1e-5)


def test_prompt_tokens_do_not_count():
    model = random_llama(seed=4)
    prompt, response = [3, 4, 5], [6, 7]
    changed_prompt_logits = unpadded_reference(model, prompt, response)
    with torch.no_grad():
        got = sequence_logps(model, collate_pairs([(prompt, response)], pad_id=0)).item()
        # the same tokens with a one-token "response" sum a different, shorter set of positions
        shorter = sequence_logps(model, collate_pairs([(prompt + response[:1], response[1:])], pad_id=0)).item()
    assert abs(got - changed_prompt_logits) < 1e-5
    assert abs(got - shorter) > 1e-4


def test_gradients_flow_to_the_model():
    model = random_llama(seed=5).train()
    logps = sequence_logps(model, collate_pairs(random_pairs(seed=6, n=3), pad_id=0))
    logps.sum().backward()
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0


def random_lists(seed: int, n: int, vocab: int = 40):
    rng = random.Random(seed)
    return [
        ([rng.randrange(1, vocab) for _ in range(rng.randint(1, 14))],
         [[rng.randrange(1, vocab) for _ in range(rng.randint(1, 8))] for _ in range(rng.randint(1, 4))])
        for _ in range(n)
    ]


def test_collate_lists_left_pads_prompts_and_right_pads_responses():
    batch = collate_lists([([5, 6], [[7], [8, 9]]), ([1, 2, 3], [[4, 4, 4]])], pad_id=0)
    assert batch["prompt_ids"].tolist() == [[0, 5, 6], [1, 2, 3]]
    assert batch["prompt_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]
    assert batch["response_ids"].tolist() == [[7, 0, 0], [8, 9, 0], [4, 4, 4]]
    assert batch["owner"].tolist() == [0, 0, 1]


@pytest.mark.parametrize("shared_prompt, layout, kv_heads", [
    (True, None, 4), (True, "packed", 4), (True, "shared", 4), (True, "pairs", 4), (False, None, 4), (False, "packed", 4),
    (True, "packed", 2),  # grouped-query attention
])
def test_every_layout_gives_the_repeated_prompt_logps_and_gradients(shared_prompt, layout, kv_heads):
    lists = random_lists(seed=7, n=5)
    flat = [(p, r) for p, rs in lists for r in rs]
    weights = torch.randn(len(flat))
    model, repeated_model = random_llama(seed=8, kv_heads=kv_heads).train(), random_llama(seed=8, kv_heads=kv_heads).train()
    got = list_logps(model, lists, 0, "cpu", shared_prompt, layout)
    repeated = sequence_logps(repeated_model, collate_pairs(flat, pad_id=0))
    want = torch.tensor([unpadded_reference(model, p, r) for p, r in flat], dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    assert_same_values_and_gradients(model, got, repeated_model, repeated, weights)


def test_pack_lists_puts_lists_one_after_another_and_segments_attend_list_by_list():
    lists = [([5, 6], [[7, 8, 9], [4, 3]]), ([1], [[2, 2]]), ([3], [[4], [4, 4, 4]])]
    packed = pack_lists(lists)
    # segments of 5, 2 and 3 positions in one row, no padding; a one-token response takes no position
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 4, 1, 2, 3, 4, 4]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 2, 0, 1, 0, 1, 2]]  # restart after the prompt
    assert packed["prompt_lengths"] == [2, 1, 1] and packed["list_sizes"] == [2, 1, 2] and packed["padding"] == 0
    assert packed["response_positions"] == [2, 1, 1, 0, 2]
    # a response's first token is predicted by its prompt's last position (1, 5 and 7)
    assert packed["select"].tolist() == [1, 2, 3, 1, 4, 5, 6, 7, 7, 8, 9]
    assert packed["targets"].tolist() == [7, 8, 9, 4, 3, 2, 2, 4, 4, 4, 4]
    assert packed["token_mask"].int().tolist() == [[1, 1, 1], [1, 1, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1]]
    segments = Segments([2, 1, 1], [2, 1, 1, 0, 2], [2, 1, 2])
    assert segments.lengths == [(2, [2, 1]), (1, [1]), (1, [0, 2])] and segments.pieces == [2, 2, 1, 1, 1, 1, 0, 2]
    # later responses with positions: [4] after prompt [5, 6] (piece 2); [4, 4] after prompt [3] (piece 7; its first
    # response [4] has none)
    masks = segments.masks(torch.bfloat16, torch.device("cpu"))
    inf = float("-inf")
    assert sorted(masks) == [2, 7] and [m.dtype for m in masks.values()] == [torch.bfloat16] * 2
    assert masks[2].tolist() == [[[[0, 0, 0]]]]
    assert masks[7].tolist() == [[[[0, 0, inf], [0, 0, 0]]]]


def test_segment_attention_is_transformers_sdpa_without_segments_and_refuses_what_it_cannot_do(monkeypatch):
    model = random_llama(seed=25, kv_heads=2)
    ids = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        segment_attention.install()
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is segment_attention.segment_sdpa
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, before)
        segments = Segments([2], [2], [1])
        q = torch.randn(1, 4, 4, 8)
        with pytest.raises(ValueError, match="position_bias"):
            segment_attention.segment_sdpa(model.model.layers[0].self_attn, q, q, q, None, larpo_segments=segments,
                                           position_bias=torch.zeros(1, 4, 4, 4))
        # a model whose attention does not call the registered function cannot be packed: an error, not wrong numbers
        monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "sdpa", segment_attention._TRANSFORMERS_SDPA)
        monkeypatch.setattr(segment_attention, "install", lambda: None)
        with pytest.raises(RuntimeError, match="did not go through"):
            list_logps(model, random_lists(seed=26, n=2), 0, "cpu", layout="packed")


@pytest.fixture
def flex_everywhere(monkeypatch):
    """Packed rows take FlexAttention on any device. On a CPU it runs unfused (the dense reference
    implementation), whose backward torch refuses only because it has no fused CPU kernel."""
    monkeypatch.setattr(segment_attention, "FLEX_DEVICES", ("cpu", "cuda"))
    monkeypatch.setattr(flex_attention_module, "_validate_device", lambda *args: None)
    calls = []
    flex = segment_attention._flex
    monkeypatch.setattr(segment_attention, "_flex", lambda *args: calls.append(args[0].shape) or flex(*args))
    return calls


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("checkpointing, kv_heads", [(False, 4), (False, 2), (True, 2)])
def test_flex_attention_gives_the_repeated_prompt_logps_and_gradients(flex_everywhere, device, checkpointing, kv_heads):
    lists = random_lists(seed=27, n=6)
    flat = [(p, r) for p, rs in lists for r in rs]
    model, repeated_model = (random_llama(seed=28, kv_heads=kv_heads, hidden=64).to(device).train() for _ in range(2))
    if checkpointing:
        checkpointed(model)
    got = list_logps(model, lists, 0, device, layout="packed")
    tokens = sum(len(p) + sum(len(r) - 1 for r in rs) for p, rs in lists)
    # one call per layer over the whole row, padded to FlexAttention's block: [1, heads, T, head dim]
    assert flex_everywhere == [torch.Size([1, 4, segment_attention.BLOCK * -(-tokens // segment_attention.BLOCK), 16])] * 2
    repeated = sequence_logps(repeated_model, {k: v.to(device) for k, v in collate_pairs(flat, pad_id=0).items()})
    want = torch.tensor([unpadded_reference(model, p, r) for p, r in flat], dtype=torch.float64, device=device)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    assert_same_values_and_gradients(model, got, repeated_model, repeated, torch.randn(len(flat), device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_flex_attention_under_bf16_autocast_stays_close_to_float64(flex_everywhere, device):
    lists = random_lists(seed=29, n=6)
    model = random_llama(seed=30, kv_heads=2, hidden=64).to(device)
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        got = list_logps(model, lists, 0, device, layout="packed")
    assert len(flex_everywhere) == 2
    want = torch.tensor([unpadded_reference(model, p, r) for p, rs in lists for r in rs], dtype=torch.float64, device=device)
    torch.testing.assert_close(got.double(), want, atol=0.05, rtol=0.02)


UNEQUAL = [([1], [[2] * 40]), ([1] * 40, [[2]])]  # short prompt and long response, and the reverse
LONG = [([1] * 8, [[2] * 64] * 8)]  # many long responses to one prompt


def test_the_cheapest_exact_layout_is_chosen(monkeypatch):
    model = random_llama(seed=23)
    assert packing_is_exact(model.config)
    eager = LlamaForCausalLM(model.config.__class__(**{**model.config.to_dict(), "attn_implementation": "eager"}))
    assert not packing_is_exact(eager.config)
    windowed = MistralForCausalLM(MistralConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                num_attention_heads=4, num_key_value_heads=2, sliding_window=16))
    assert not packing_is_exact(windowed.config)
    # per layer: 2 × (4·32² + 3·32·64) = 20,480 per position, 4 · 32 = 128 per (query, key) pair
    costs = layout_costs(model.config, [([1, 2], [[1] * 9, [1] * 3]), ([1], [[1] * 3])])
    # packed: 12 + 3 positions; causal over prompt + first response (10 and 3 positions: 55 and 6 pairs),
    # the later response's 2 queries against 2 + 2 keys
    assert costs == {"packed": 15 * 20480 + 128 * (55 + 6 + 2 * 4),
                     "shared": 2 * 2 * (20480 + 128 * 2) + 3 * 8 * (20480 + 128 * 10),
                     "pairs": 3 * 10 * (20480 + 128 * 10)}
    called = []

    def recorded(name: str):
        run = getattr(logprobs, name)
        return lambda *args: called.append(name) or run(*args)

    for name in ("packed_logps", "shared_prompt_logps", "sequence_logps"):
        monkeypatch.setattr(logprobs, name, recorded(name))
    lists = random_lists(seed=24, n=4)
    eager.eval()
    with torch.no_grad():
        for case in (lists, UNEQUAL, LONG):  # packed wherever it is exact: no padding, no attention across responses
            list_logps(model, case, 0, "cpu")
            list_logps(model, case, 0, "cpu", shared_prompt=False)  # pairs packed one after another
        assert called == ["packed_logps"] * 6
        got = list_logps(eager, lists, 0, "cpu")  # an eager model still gets exact log-probs, unpacked
        list_logps(eager, UNEQUAL, 0, "cpu")  # short prompts, long responses, and the reverse: pairs pad less
        list_logps(eager, LONG, 0, "cpu")  # many responses to one prompt: the prompt once
        assert called[6:] == ["shared_prompt_logps", "sequence_logps", "shared_prompt_logps"]
    want = torch.tensor([unpadded_reference(eager, p, r) for p, rs in lists for r in rs], dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="layout 'packed' is not exact"):  # an eager model cannot be forced to pack
        list_logps(eager, lists, 0, "cpu", layout="packed")


def test_every_process_chooses_from_the_costs_summed_over_processes():
    model = random_llama(seed=23)
    eager = LlamaForCausalLM(model.config.__class__(**{**model.config.to_dict(), "attn_implementation": "eager"}))
    costs = {name: torch.tensor([layout_costs(model.config, lists)[k] for k in LAYOUTS], dtype=torch.float64)
             for name, lists in (("unequal", UNEQUAL), ("long", LONG))}
    assert choose_layout(eager, UNEQUAL) == "pairs" and choose_layout(eager, LONG) == "shared"
    # two processes, one with each micro-batch: both take the layout cheapest for the two together
    assert choose_layout(eager, UNEQUAL, sum_over_processes=lambda t: t + costs["long"]) == "pairs"
    assert choose_layout(eager, LONG, sum_over_processes=lambda t: t + costs["unequal"]) == "pairs"


def full_logits_logps(model, pairs):
    """The plain computation: every position's logits [N, L, V], log-softmax, response positions summed."""
    batch = collate_pairs(pairs, pad_id=0)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    token_logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (token_logps * batch["response_mask"][:, 1:]).sum(dim=1)


def assert_same_values_and_gradients(model_a, logps_a, model_b, logps_b, weights):
    torch.testing.assert_close(logps_a, logps_b, atol=1e-5, rtol=1e-5)
    (weights * logps_a).sum().backward()
    (weights * logps_b).sum().backward()
    for (name, p), q in zip(model_a.named_parameters(), model_b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_chunked_head_gives_the_full_logits_values_and_gradients(monkeypatch):
    monkeypatch.setattr(lm_head, "CHUNK_ELEMENTS", 3 * 40)  # 3 tokens per chunk: many chunks, a ragged last one
    pairs = random_pairs(seed=11, n=7)
    chunked, full = random_llama(seed=12).train(), random_llama(seed=12).train()
    assert lm_head.plain_head(chunked) is chunked.lm_head
    assert_same_values_and_gradients(chunked, sequence_logps(chunked, collate_pairs(pairs, pad_id=0)),
                                     full, full_logits_logps(full, pairs), torch.randn(len(pairs)))


def test_linear_logps_gradients_with_a_bias_match_finite_differences(monkeypatch):
    monkeypatch.setattr(lm_head, "CHUNK_ELEMENTS", 2 * 7)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(7, 4, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, generator=g, requires_grad=True)
    targets = torch.tensor([0, 6, 3, 3, 1])
    assert torch.autograd.gradcheck(lambda h, w, b: lm_head.LinearLogps.apply(h, w, b, targets), (hidden, weight, bias))


class ScaledHead(torch.nn.Linear):
    """A head that is not a plain nn.Linear (as a LoRA-wrapped head is not): log-probs come from its logits."""


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_head_that_is_not_a_plain_linear_gets_the_same_values_and_gradients(layout):
    lists = random_lists(seed=13, n=4)
    plain, wrapped = random_llama(seed=14).train(), random_llama(seed=14).train()
    head = ScaledHead(32, 40, bias=False)
    head.weight = wrapped.lm_head.weight
    wrapped.lm_head = head
    assert lm_head.plain_head(wrapped) is None and lm_head.plain_head(plain) is not None
    assert_same_values_and_gradients(plain, list_logps(plain, lists, 0, "cpu", layout=layout),
                                     wrapped, list_logps(wrapped, lists, 0, "cpu", layout=layout),
                                     torch.randn(sum(len(rs) for _, rs in lists)))


class LargestVocabularyTensor(TorchDispatchMode):
    """Records the most elements of any tensor an op allocates (views aside) whose last dimension is the vocabulary."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.largest = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in [] if func.is_view else out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == self.vocab:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_logits_tensor_larger_than_a_chunk_exists_in_forward_or_backward(monkeypatch, layout):
    monkeypatch.setattr(lm_head, "CHUNK_ELEMENTS", 4 * 40)
    model = random_llama(seed=15).train()
    lists = random_lists(seed=16, n=6)
    with LargestVocabularyTensor(40) as seen:
        logps = list_logps(model, lists, 0, "cpu", layout=layout)
        logps.sum().backward()
    assert 0 < seen.largest <= 4 * 40  # the full logits would be [N, L, 40]


def checkpointed(model):
    """``model`` with activation checkpointing as larpo turns it on (``model.gradient_checkpointing: true``)."""
    model.activation_checkpointing_enable()
    return model


def test_shared_prompt_under_checkpointing_equals_repeated_prompts_without_it(monkeypatch):
    reads: dict[int, int] = {}
    update = logprobs._SharedPromptCache.update

    def counting_update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if self.readers is not None:
            reads[layer_idx] = reads.get(layer_idx, 0) + 1
        return update(self, key_states, value_states, layer_idx, *args, **kwargs)

    monkeypatch.setattr(logprobs._SharedPromptCache, "update", counting_update)
    lists = random_lists(seed=17, n=5)
    flat = [(p, r) for p, rs in lists for r in rs]
    shared_model, repeated_model = checkpointed(random_llama(seed=18).train()), random_llama(seed=18).train()
    assert logprobs.can_share_prompt(shared_model)
    shared = shared_prompt_logps(shared_model, collate_lists(lists, pad_id=0))
    assert reads == {0: 1, 1: 1}  # the response pass ran once, reading the prompts' cache
    assert_same_values_and_gradients(shared_model, shared, repeated_model,
                                     sequence_logps(repeated_model, collate_pairs(flat, pad_id=0)), torch.randn(len(flat)))
    assert reads == {0: 2, 1: 2}  # ... and was replayed in backward, reading the same cache again
    assert all(layer.gradient_checkpointing for layer in shared_model.model.layers)  # flags restored
    assert not any("_can_checkpoint_with_cache" in vars(layer) for layer in shared_model.model.layers)
    assert "forward" not in vars(shared_model.lm_head)


def test_reentrant_checkpointing_cannot_share_the_prompt_through_a_cache():
    model = random_llama(seed=19).train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    assert not logprobs.can_share_prompt(model)
    with pytest.raises(ValueError, match="can_share_prompt"):
        shared_prompt_logps(model, collate_lists(random_lists(seed=20, n=2), pad_id=0))
    assert logprobs.can_share_prompt(random_llama(seed=19).train())


@pytest.mark.parametrize("reentrant", [False, True])
def test_packed_lists_under_checkpointing_equal_repeated_prompts_without_it(reentrant):
    lists = random_lists(seed=25, n=5)
    flat = [(p, r) for p, rs in lists for r in rs]
    model, repeated_model = random_llama(seed=26).train(), random_llama(seed=26).train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    assert_same_values_and_gradients(model, list_logps(model, lists, 0, "cpu", layout="packed"), repeated_model,
                                     sequence_logps(repeated_model, collate_pairs(flat, pad_id=0)), torch.randn(len(flat)))


@pytest.mark.parametrize("layout", ["packed", "shared"])
def test_chunked_head_under_bf16_autocast_stays_within_bf16_rounding_of_float32(layout):
    lists = random_lists(seed=21, n=4)
    grads = []
    for autocast in (False, True):
        model = random_llama(seed=22).train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logps = list_logps(model, lists, 0, "cpu", layout=layout)
            logps.sum().backward()
        assert logps.dtype == torch.float32
        grads.append((logps.detach(), model.lm_head.weight.grad, model.model.layers[0].mlp.up_proj.weight.grad))
    for exact, rounded in zip(*grads):
        assert (rounded - exact).abs().max() <= 2e-2 * exact.abs().max()


def test_one_token_responses_still_run_the_response_pass(monkeypatch):
    """Processes of a multi-process run must make the same forward calls: the cache layout runs its
    response pass even when every response of a micro-batch is a single token."""
    model = random_llama(seed=27)
    calls = []
    monkeypatch.setattr(model.model, "forward", lambda *a, f=model.model.forward, **k: calls.append(1) or f(*a, **k))
    lists = [([1, 2, 3], [[4], [5]]), ([6], [[7]])]
    with torch.no_grad():
        got = shared_prompt_logps(model, collate_lists(lists, pad_id=0))
    assert len(calls) == 2  # the prompt pass and the response pass
    want = torch.tensor([unpadded_reference(model, p, r) for p, rs in lists for r in rs], dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
