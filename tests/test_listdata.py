"""Reading ranked lists from data: each layout, the field mapping, and every bad row named by file, line and field."""

import json

import pytest

from larpo.config import ConfigError
from larpo.listdata import Fields, RowError, check_tokenizer, lists_from_rows, read_lists


def write_jsonl(path, rows) -> str:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


def test_listwise_rows_become_lists_best_first_with_ties_in_row_order():
    rows = [{"prompt": "1+1=", "responses": ["3", "2", "4", "11"], "rewards": [0.5, 1.0, 0.5, 0.0], "extra": "ignored"}]
    (rl,), report = lists_from_rows(rows)
    assert rl.responses == ("2", "3", "4", "11") and rl.rewards == (1.0, 0.5, 0.5, 0.0)
    assert rl.prompt == "1+1=" and rl.prompt_id == "rows row 0"
    assert (report.format, report.rows, report.lists, report.dropped) == ("listwise", 1, 1, {})


def test_trl_pairs_are_lists_of_two_chosen_first():
    rows = [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}, {"prompt": "2+2=", "chosen": "4", "rejected": "5"}]
    lists, report = lists_from_rows(iter(rows))  # any iterable
    assert report.format == "pairs" and [rl.responses for rl in lists] == [("2", "3"), ("4", "5")]
    assert all(rl.rewards == (1.0, 0.0) for rl in lists)


def test_an_empty_response_is_one_that_ended_at_once_and_trains_as_eos_alone(tiny_tokenizer):
    from larpo.trainer import encode_lists

    rows = [{"prompt": "1+1=", "chosen": "2", "rejected": ""},  # larpo's TRL export of a policy that answered EOS
            {"prompt": "2+2=", "responses": ["", "4"], "rewards": [0.0, 1.0]},
            {"prompt": "3+3=", "chosen": [{"role": "assistant", "content": ""}], "rejected": "5"}]
    lists, report = lists_from_rows(rows[:1])
    lists += lists_from_rows(rows[1:2])[0] + lists_from_rows(rows[2:])[0]
    assert [rl.responses for rl in lists] == [("2", ""), ("4", ""), ("", "5")] and report.dropped == {}
    eos, digit = tiny_tokenizer.eos_token_id, tiny_tokenizer.convert_tokens_to_ids
    assert [el.response_ids for el in encode_lists(tiny_tokenizer, lists)] == [
        [[digit("2"), eos], [eos]], [[digit("4"), eos], [eos]], [[eos], [digit("5"), eos]]]


def test_an_empty_response_that_did_not_finish_is_malformed():
    row = {"prompt": "a", "responses": ["x", ""], "rewards": [1, 0], "finished": [True, False]}
    for bad in (row, {**row, "response_ids": [None, []]}):
        with pytest.raises(RowError, match=r"rows row 0: finished\[1\]: false for the empty responses\[1\]; expected true"):
            lists_from_rows([bad])


def test_conversational_prompts_and_responses_as_in_trl():
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}]
    rows = [
        {"prompt": prompt, "chosen": [{"role": "assistant", "content": "2"}], "rejected": [{"role": "assistant", "content": "3"}]},
        # the prompt repeated before the reply (ultrafeedback_binarized's chosen/rejected)
        {"prompt": "2+2?", "chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
         "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}]},
    ]
    lists, _ = lists_from_rows(rows)
    assert lists[0].prompt == prompt and lists[0].responses == ("2", "3") and lists[1].responses == ("4", "5")
    wrong = {**rows[1], "rejected": [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "5"}]}
    with pytest.raises(RowError, match=r"rows row 0: rejected: the messages before the reply are not the prompt"):
        lists_from_rows([wrong])


def test_a_jsonl_file_in_each_layout(tmp_path):
    listwise = write_jsonl(tmp_path / "l.jsonl", [{"prompt": "a", "responses": ["x", "y"], "rewards": [0, 1]}, ""])
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "x", "rejected": "y"}])
    (rl,), report = read_lists(listwise)
    assert rl.responses == ("y", "x") and rl.prompt_id == f"{listwise}:1" and report.rows == 1  # blank line skipped
    (rl,), report = read_lists(pairs)
    assert report.format == "pairs" and rl.responses == ("x", "y")


BAD_ROWS = [  # malformed rows
    ({"prompt": "a", "responses": ["x", "y"], "rewards": [1, "4"]}, "rewards[1]: got '4', expected a finite number", "reward_not_a_number"),
    ({"prompt": "a", "responses": ["x", "y"], "rewards": [1, None]}, "rewards[1]: got None", "reward_not_a_number"),
    ({"prompt": "a", "responses": ["x", "y"], "rewards": [1, float("nan")]}, "rewards[1]: got nan", "reward_not_a_number"),
    ({"prompt": "a", "responses": ["x", "y", "z"], "rewards": [1, 0]}, "rewards: 2 rewards for 3 responses", "lengths_differ"),
    ({"prompt": "a", "responses": ["x", ""], "rewards": [1, 0], "finished": [True, False]},
     "finished[1]: false for the empty responses[1]", "empty_and_unfinished"),
    ({"prompt": "", "responses": ["x", "y"], "rewards": [1, 0]}, "prompt: empty", "empty_prompt"),
    ({"prompt": "a", "responses": ["x", 7], "rewards": [1, 0]}, "responses[1]: got 7, expected a string", "malformed"),
    ({"prompt": "a", "answers": ["x", "y"], "rewards": [1, 0]}, "responses: missing; expected a field 'responses'", "malformed"),
    ("{not json", "not valid JSON", "malformed"),
    ({"prompt": "a", "responses": ["x", "y"], "rewards": [1, 0], "finished": [True]}, "finished: got [True], expected a list of 2", "lengths_differ"),
    ({"prompt": "a", "responses": ["x", "y"], "rewards": [1, 0], "response_ids": [[3, -1], None]},
     "response_ids[0]: got [3, -1], expected a list of token ids", "malformed"),
]


@pytest.mark.parametrize("row,message,reason", BAD_ROWS, ids=[r for _, _, r in BAD_ROWS])
def test_a_bad_row_is_an_error_naming_file_line_and_field(tmp_path, row, message, reason):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "ok", "responses": ["x", "y"], "rewards": [1, 0]}, row])
    with pytest.raises(RowError) as e:
        read_lists(path)
    assert str(e.value).startswith(f"{path}:2: ") and message in str(e.value) and e.value.reason == reason


def test_a_missing_or_undecodable_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=f"DATA {tmp_path / 'none.jsonl'}: not found"):
        read_lists(tmp_path / "none.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=f"{tmp_path / 'latin1.jsonl'}: not UTF-8 text; expected JSON lines"):
        read_lists(tmp_path / "latin1.jsonl")


def test_with_drop_bad_rows_every_bad_row_is_dropped_and_counted_by_reason(tmp_path):
    good = {"prompt": "ok", "responses": ["x", "y"], "rewards": [1, 0]}
    tied = {"prompt": "t", "responses": ["x", "y", "z"], "rewards": [0.5, 0.5, 0.5]}
    path = write_jsonl(tmp_path / "d.jsonl", [good, *(row for row, _, _ in BAD_ROWS), tied, good])
    lists, report = read_lists(path, drop_bad_rows=True)
    assert len(lists) == report.lists == 2 and report.rows == len(BAD_ROWS) + 3
    assert report.dropped == {"all_rewards_tied": 1, "empty_prompt": 1, "empty_and_unfinished": 1,
                              "lengths_differ": 2, "malformed": 4, "reward_not_a_number": 3}
    assert len(report.dropped_rows) == len(BAD_ROWS) + 1 and report.dropped_rows[0].startswith(f"{path}:2: rewards[1]:")
    assert f"dropped 12 of the {len(BAD_ROWS) + 3} rows" in report.summary()


UNUSABLE_ROWS = [  # well-formed rows that make no list
    ({"prompt": "a", "responses": ["x"], "rewards": [1]}, "responses: 1 response(s); expected at least 2", "fewer_than_two_responses"),
    ({"prompt": "a", "responses": ["x", "y"], "rewards": [2, 2]}, "rewards: all 2 rewards tie", "all_rewards_tied"),
]


@pytest.mark.parametrize("row,message,reason", UNUSABLE_ROWS, ids=[r for _, _, r in UNUSABLE_ROWS])
def test_a_row_that_makes_no_list_is_dropped_and_counted_or_with_strict_an_error(tmp_path, row, message, reason):
    good = {"prompt": "ok", "responses": ["x", "y"], "rewards": [1, 0]}
    path = write_jsonl(tmp_path / "d.jsonl", [good, row])
    lists, report = read_lists(path)
    assert len(lists) == 1 and report.dropped == {reason: 1} and report.dropped_rows[0].startswith(f"{path}:2: {message}")
    with pytest.raises(RowError) as e:
        read_lists(path, strict=True)
    assert str(e.value).startswith(f"{path}:2: {message}") and e.value.reason == reason


def test_lists_whose_rewards_all_tie_are_dropped_without_an_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "responses": ["x", "y"], "rewards": [1, 1]},
                                              {"prompt": "b", "responses": ["x", "y"], "rewards": [1, 0]}])
    lists, report = read_lists(path)
    assert [rl.prompt for rl in lists] == ["b"] and report.dropped == {"all_rewards_tied": 1}
    assert report.dropped_rows == [f"{path}:1: rewards: all 2 rewards tie (after lists.strategy 'full'); no preference"]


def test_the_list_strategy_keeps_the_top_and_bottom():
    rows = [{"prompt": "a", "responses": list("abcdef"), "rewards": [6, 5, 4, 3, 2, 1]}]
    (rl,), report = lists_from_rows(rows, strategy="top_bottom", top=2, bottom=1)
    assert rl.responses == ("a", "b", "f") and (report.responses_read, report.responses_kept) == (6, 3)


ULTRAFEEDBACK = [
    {"instruction": f"Say {i}.", "source": "x",
     "completions": [{"model": "m1", "response": f"{i}", "overall_score": 8.5},
                     {"model": "m2", "response": f"{i + 1}", "overall_score": 3.0},
                     {"model": "m3", "response": f"{i} or so", "overall_score": 6.0}]}
    for i in range(3)
]
UF_FIELDS = Fields(prompt="instruction", responses="completions.response", rewards="completions.overall_score")


def test_an_ultrafeedback_style_dataset_directory_with_a_field_mapping(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ULTRAFEEDBACK)}).save_to_disk(str(tmp_path / "uf"))
    lists, report = read_lists(tmp_path / "uf", UF_FIELDS, split="train")
    assert [rl.responses for rl in lists][0] == ("0", "0 or so", "1") and lists[0].rewards == (8.5, 6.0, 3.0)
    assert lists[2].prompt == "Say 2." and lists[2].prompt_id == f"{tmp_path / 'uf'}/train row 2"
    assert report.fields == {"prompt": "instruction", "responses": "completions.response",
                             "rewards": "completions.overall_score"}
    bad = [*ULTRAFEEDBACK[:1], {**ULTRAFEEDBACK[1], "completions": [{**ULTRAFEEDBACK[1]["completions"][0], "overall_score": None},
                                                                   *ULTRAFEEDBACK[1]["completions"][1:]]}]
    datasets.Dataset.from_list(bad).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(RowError, match=rf"{tmp_path / 'bad'} row 1: completions\[0\].overall_score: got None"):
        read_lists(tmp_path / "bad", UF_FIELDS)
    with pytest.raises(ConfigError, match="--split: got 'test', expected one of the splits"):
        read_lists(tmp_path / "uf", UF_FIELDS, split="test")


def test_the_mapping_reads_datasets_columnar_sequence_of_a_struct_too(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"instruction": datasets.Value("string"), "completions": datasets.Sequence(
        {"response": datasets.Value("string"), "overall_score": datasets.Value("float64")})})
    columns = {"instruction": ["a"], "completions": [{"response": ["x", "y"], "overall_score": [1.0, 2.0]}]}
    datasets.Dataset.from_dict(columns, features=features).save_to_disk(str(tmp_path / "seq"))
    (rl,), _ = read_lists(tmp_path / "seq", UF_FIELDS)
    assert rl.responses == ("y", "x")


def test_a_trl_preference_dataset_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"prompt": "a", "chosen": "x", "rejected": "y", "score_chosen": 9.0}]).save_to_disk(str(tmp_path / "p"))
    (rl,), report = read_lists(tmp_path / "p")
    assert report.format == "pairs" and rl.responses == ("x", "y")


def test_sampled_ids_and_finished_flags_are_carried_and_checked_against_the_tokenizer(tiny_tokenizer):
    ids = tiny_tokenizer("12", add_special_tokens=False)["input_ids"]
    row = {"prompt": "5+7=", "responses": ["12", "1", ""], "rewards": [1, 0.5, 0], "response_ids": [ids, None, []],
           "finished": [True, False, True]}
    (rl,), _ = lists_from_rows([row])
    assert rl.response_ids == (tuple(ids), None, ()) and rl.finished == (True, False, True)  # "" is a sampled empty reply
    check_tokenizer([rl], tiny_tokenizer)
    (other,), _ = lists_from_rows([{**row, "response_ids": [[ids[0] + 1], None, []]}])
    with pytest.raises(ConfigError, match=r"rows row 0: response_ids of '12': decode to .* with the model's tokenizer"):
        check_tokenizer([other], tiny_tokenizer)
    (chat,), _ = lists_from_rows([{"prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b"}])
    with pytest.raises(ConfigError, match="prompt: a list of messages, but the model's tokenizer has no chat template"):
        check_tokenizer([chat], tiny_tokenizer)


def test_missing_or_empty_data_is_a_user_error(tmp_path):
    with pytest.raises(ConfigError, match="not found; expected a JSONL file or a dataset directory"):
        read_lists(tmp_path / "nope.jsonl")
    with pytest.raises(ConfigError, match="empty; expected one ranked list"):
        read_lists(write_jsonl(tmp_path / "e.jsonl", [""]))
    with pytest.raises(ConfigError, match="--split: got 'train', but .* is a JSONL file"):
        read_lists(write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "chosen": "x", "rejected": "y"}]), split="train")
