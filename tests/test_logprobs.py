"""sequence_logps: response tokens only, independent of padding and batch composition."""

import random

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from larpo.logprobs import collate_lists, collate_pairs, sequence_logps, shared_prompt_logps


def random_llama(seed: int = 0, vocab: int = 40) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, pad_token_id=0,
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
    ids = torch.tensor([prompt + response])
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


def test_one_prompt_pass_per_list_gives_the_repeated_prompt_logps_and_gradients():
    lists = random_lists(seed=7, n=5)
    flat = [(p, r) for p, rs in lists for r in rs]
    weights = torch.randn(len(flat))
    shared_model, repeated_model = random_llama(seed=8).train(), random_llama(seed=8).train()
    shared = shared_prompt_logps(shared_model, collate_lists(lists, pad_id=0))
    repeated = sequence_logps(repeated_model, collate_pairs(flat, pad_id=0))
    torch.testing.assert_close(shared, repeated, atol=1e-5, rtol=1e-5)
    (weights * shared).sum().backward()
    (weights * repeated).sum().backward()
    for (name, p), q in zip(shared_model.named_parameters(), repeated_model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)
