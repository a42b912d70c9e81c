"""The dataset task: prompts from a `datasets` dataset saved on disk, and errors that name path, field and row."""

from __future__ import annotations

import pytest
from datasets import Dataset, DatasetDict

from larpo import config as C
from larpo.config import ConfigError, TaskConfig
from larpo.encoding import encode_prompt
from larpo.tasks import DatasetTask, Example, build_task

ROWS = {"question": ["a?", "b?", "c?", "d?"], "qid": ["q1", "q2", "q3", "q4"], "gold": ["A", "B", "C", "D"]}


@pytest.fixture
def reward_fn(tmp_path, monkeypatch) -> str:
    (tmp_path / "ds_reward.py").write_text("def reward(prompt, response):\n    return 1.0 if response == 'yes' else 0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "ds_reward:reward"


def saved(data, path) -> str:
    data.save_to_disk(str(path))
    return str(path)


def task(path: str, reward_fn: str, **kw) -> DatasetTask:
    return build_task(TaskConfig(name="dataset", path=path, reward_fn=reward_fn, **kw))


def test_reads_prompt_id_and_answer_columns_and_holds_out_the_last_rows(tmp_path, reward_fn):
    path = saved(Dataset.from_dict(ROWS), tmp_path / "data")
    t = task(path, reward_fn, prompt_field="question", id_field="qid", answer_field="gold", n_eval=1)
    assert t.train_examples() == [Example("q1", "a?", "A"), Example("q2", "b?", "B"), Example("q3", "c?", "C")]
    assert t.eval_examples() == [Example("q4", "d?", "D")]
    assert t.reward("a?", "yes") == 1.0 and not t.correct("a?", "no")


def test_default_ids_name_the_directory_and_row(tmp_path, reward_fn):
    path = saved(Dataset.from_dict({"prompt": ["x", "y", "z"]}), tmp_path / "prompts")
    t = task(path, reward_fn, n_eval=1)
    assert [ex.prompt_id for ex in t.train_examples() + t.eval_examples()] == ["prompts-0", "prompts-1", "prompts-2"]
    assert all(ex.answer is None for ex in t.train_examples())


def test_a_dataset_dict_split_is_chosen_and_the_eval_path_holds_out(tmp_path, reward_fn):
    train = saved(DatasetDict({"train": Dataset.from_dict({"prompt": ["a", "b", "c"]}),
                               "test": Dataset.from_dict({"prompt": ["t"]})}), tmp_path / "dd")
    held = saved(DatasetDict({"test": Dataset.from_dict({"prompt": ["h1", "h2"]})}), tmp_path / "held")
    t = task(train, reward_fn, split="test", n_eval=1, eval_path=held)
    assert [ex.prompt for ex in t.train_examples()] == ["t"]
    assert [(ex.prompt_id, ex.prompt) for ex in t.eval_examples()] == [("held/test-0", "h1")]
    with pytest.raises(ConfigError, match=r"task\.split: got None, expected one of the splits of .*dd: train, test"):
        task(train, reward_fn)
    with pytest.raises(ConfigError, match=r"task\.split: got 'validation'"):
        task(train, reward_fn, split="validation")


def test_message_list_prompts_are_kept_as_messages(tmp_path, reward_fn, tiny_tokenizer):
    conversations = [[{"role": "user", "content": f"{i}+1="}] for i in range(3)]
    path = saved(Dataset.from_dict({"prompt": conversations}), tmp_path / "chat")
    t = task(path, reward_fn, n_eval=1)
    assert [ex.prompt for ex in t.train_examples()] == conversations[:2]
    chat = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="<eos>")
    chat.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert encode_prompt(chat, t.train_examples()[1].prompt) == chat("1+1=", add_special_tokens=False)["input_ids"]


def test_the_config_requires_path_and_reward_fn():
    with pytest.raises(ConfigError, match=r"task\.path and task\.reward_fn: required when task\.name is 'dataset'"):
        C.load(None, ["task.name=dataset"])


def test_a_directory_that_is_not_a_saved_dataset_names_the_path(tmp_path, reward_fn):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"task\.path: .*empty is not a dataset saved with save_to_disk"):
        task(str(tmp_path / "empty"), reward_fn)
    with pytest.raises(ConfigError, match=r"task\.path: .*missing is not a directory"):
        task(str(tmp_path / "missing"), reward_fn)


def test_a_missing_field_names_the_field_and_the_columns(tmp_path, reward_fn):
    path = saved(Dataset.from_dict(ROWS), tmp_path / "data")
    with pytest.raises(ConfigError, match=r"task\.prompt_field: got 'prompt', but .*data has no such column; "
                                          r"expected one of question, qid, gold"):
        task(path, reward_fn)
    with pytest.raises(ConfigError, match=r"task\.answer_field: got 'answer'"):
        task(path, reward_fn, prompt_field="question", answer_field="answer")


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"prompt": ["a", "b"], "n": [1, 2]}, r"row 0: got 'id' = 1, expected a string"),
        ({"prompt": [[{"role": "user", "content": "a"}], [{"role": "user", "content": None}]]}, r"row 1: message 0"),
        ({"prompt": ["a", "a"]}, r"row 1: duplicate prompt 'a' \(first at .*row 0\)"),
    ],
)
def test_a_bad_value_names_its_row(tmp_path, reward_fn, columns, message):
    path = saved(Dataset.from_dict(columns), tmp_path / "data")
    with pytest.raises(ConfigError, match=message):
        task(path, reward_fn, id_field="n" if "n" in columns else None, n_eval=1)


def test_a_prompt_of_the_wrong_type_names_row_and_column(tmp_path, reward_fn):
    path = saved(Dataset.from_dict({"prompt": [1, 2]}), tmp_path / "data")
    with pytest.raises(ConfigError, match=r"data row 0: expected a string or a list of messages in column 'prompt'"):
        task(path, reward_fn, n_eval=1)
