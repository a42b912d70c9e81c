"""Encoding: chat templates, conversational (message-list) prompts end to end, and length limits."""

from __future__ import annotations

import json

import pytest
import torch

from larpo.candidates import load_candidates, save_candidates
from larpo.config import ConfigError, ModelConfig, TaskConfig
from larpo.encoding import encode_prompt, encode_response, length_limits, set_length_limits
from larpo.io import read_jsonl, write_jsonl_atomic
from larpo.lists import Candidate, RankedList, build_lists
from larpo.models import build_tiny_model, build_tokenizer, load_policy, policy_from_config, save_policy
from larpo.sampling import generate
from larpo.tasks import build_task
from larpo.trainer import encode_lists

from conftest import TINY, arithmetic_corpus

TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+2="}]


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    """A saved tiny policy whose tokenizer has a chat template (and knows its characters)."""
    tokenizer = build_tokenizer([*arithmetic_corpus(), "<system><user><assistant>\n be brief"], vocab_size=96)
    tokenizer.chat_template = TEMPLATE
    directory = tmp_path_factory.mktemp("chat") / "policy"
    save_policy(build_tiny_model(TINY, tokenizer, seed=0), tokenizer, directory)
    return directory


@pytest.fixture(scope="module")
def chat(chat_dir):
    return load_policy(chat_dir)


def text_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_a_string_prompt_becomes_one_user_turn_ending_in_the_generation_prompt(chat):
    _, tokenizer = chat
    ids = encode_prompt(tokenizer, "1+2=")
    assert type(ids) is list and all(type(i) is int for i in ids)
    assert ids == text_ids(tokenizer, "<user>1+2=\n<assistant>")


def test_a_message_list_prompt_is_used_as_given(chat):
    _, tokenizer = chat
    assert encode_prompt(tokenizer, MESSAGES) == text_ids(tokenizer, "<system>be brief\n<user>1+2=\n<assistant>")


def test_the_response_still_ends_in_eos_with_a_chat_template(chat):
    _, tokenizer = chat
    assert encode_response(tokenizer, "3") == [*text_ids(tokenizer, "3"), tokenizer.eos_token_id]


def test_without_a_chat_template_a_string_is_tokenised_as_before(tiny_tokenizer):
    assert encode_prompt(tiny_tokenizer, "12+3=") == tiny_tokenizer("12+3=", add_special_tokens=True)["input_ids"]


def test_without_a_chat_template_a_message_list_is_refused(tiny_tokenizer):
    with pytest.raises(ValueError, match="chat template"):
        encode_prompt(tiny_tokenizer, MESSAGES)


def test_message_list_prompts_survive_jsonl_candidates_and_lists_into_training_ids(chat, tmp_path, monkeypatch):
    model, tokenizer = chat
    (tmp_path / "chat_reward.py").write_text("def reward(prompt, response):\n    return float(response == '3')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    other = [{"role": "user", "content": "2+2="}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(row) + "\n" for row in [
        {"prompt": MESSAGES, "id": "m"}, {"prompt": "5+5="}, {"prompt": other, "id": "held"},
    ]))
    task = build_task(TaskConfig(name="jsonl", path=str(tmp_path / "p.jsonl"), reward_fn="chat_reward:reward", n_eval=1))
    train = task.train_examples()
    assert train[0].prompt == MESSAGES and task.eval_examples()[0].prompt == other

    samples = generate(model, tokenizer, [ex.prompt for ex in train], k=2, temperature=1.0, max_new_tokens=3)
    assert [len(s) for s in samples] == [2, 2]
    candidates = [Candidate("m", MESSAGES, r, w) for r, w in (("3", 1.0), ("4", 0.0))]
    save_candidates(tmp_path / "run", 0, candidates)
    assert load_candidates(tmp_path / "run", 0) == candidates
    lists, _ = build_lists(load_candidates(tmp_path / "run", 0))
    write_jsonl_atomic(tmp_path / "lists.jsonl", (rl.to_row() for rl in lists))
    (back,) = [RankedList.from_row(row) for row in read_jsonl(tmp_path / "lists.jsonl")]
    assert back.prompt == MESSAGES and task.reward(back.prompt, back.responses[0]) == 1.0
    (encoded,) = encode_lists(tokenizer, [back])
    assert encoded.prompt_ids == encode_prompt(tokenizer, MESSAGES)


def test_a_jsonl_message_without_content_names_the_line(tmp_path, monkeypatch):
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": [{"role": "user"}]}) + "\n")
    with pytest.raises(ConfigError, match=r"p\.jsonl:1: message 0 is .*expected"):
        build_task(TaskConfig(name="jsonl", path=str(tmp_path / "p.jsonl"), reward_fn="math:isfinite"))


# ------------------------------------------------------------------------------------------------
# length limits


def test_no_limits_by_default(tiny_tokenizer):
    assert length_limits(tiny_tokenizer).max_prompt_tokens is None
    assert len(encode_prompt(tiny_tokenizer, "1234567+1=")) == 10


def test_long_prompts_keep_their_last_tokens_and_long_responses_their_first(chat_dir):
    _, tokenizer = load_policy(chat_dir)
    full_prompt, full_response = encode_prompt(tokenizer, "1234+5678="), encode_response(tokenizer, "6912")
    limits = set_length_limits(tokenizer, max_prompt_tokens=4, max_response_tokens=3)
    assert encode_prompt(tokenizer, "1234+5678=") == full_prompt[-4:]  # the generation prompt survives
    assert encode_response(tokenizer, "6912") == full_response[:3]  # cut before its EOS: it did not end
    assert encode_response(tokenizer, "6") == full_response[:1] + [tokenizer.eos_token_id]
    assert (limits.truncated_prompts, limits.truncated_responses) == (1, 1)


def test_policy_from_config_sets_the_limits_of_the_model_config(tiny_model_dir):
    model, tokenizer = policy_from_config(tiny_model_dir, ModelConfig(max_prompt_tokens=3, max_response_tokens=2))
    assert encode_prompt(tokenizer, "123+456=") == encode_prompt(load_policy(tiny_model_dir)[1], "123+456=")[-3:]
    assert length_limits(tokenizer).truncated_prompts == 1
    assert model.dtype == torch.float32
