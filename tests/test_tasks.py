"""Tasks: gold answers and rewards by hand, deterministic disjoint splits, and jsonl input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from larpo.config import ConfigError, TaskConfig
from larpo.tasks import ArithmeticTask, Example, JsonlTask, SortingTask, build_task


def arithmetic(**kw) -> ArithmeticTask:
    return ArithmeticTask(TaskConfig(name="arithmetic", n_train=50, n_eval=20, **kw))


def sorting(**kw) -> SortingTask:
    return SortingTask(TaskConfig(name="sorting", n_train=50, n_eval=20, **kw))


# ------------------------------------------------------------------------------------------------
# arithmetic


def test_arithmetic_prompt_determines_answer_including_negatives():
    task = arithmetic(operations=["+", "-"])
    assert task.solve("123+456=") == "579"
    assert task.solve("12-57=") == "-45"


def test_arithmetic_operands_have_exactly_the_configured_digits():
    for ex in arithmetic(digits=2, operations=["+", "-"]).train_examples():
        a, b = ex.prompt[:2], ex.prompt[3:5]
        assert ex.prompt[2] in "+-" and ex.prompt[5:] == "="
        assert a[0] != "0" and b[0] != "0" and a.isdigit() and b.isdigit()


def test_arithmetic_one_digit_operands_include_zero():
    task = ArithmeticTask(TaskConfig(digits=1, n_train=90, n_eval=10))
    operands = {p for ex in task.train_examples() + task.eval_examples() for p in ex.prompt[:-1].split("+")}
    assert operands == {str(d) for d in range(10)}


def test_arithmetic_exact_reward_is_one_only_for_the_answer_stripped():
    task = arithmetic(reward="exact")
    assert task.reward("123+456=", " 579\n") == 1.0
    assert task.reward("123+456=", "578") == 0.0
    assert task.reward("123+456=", "0579") == 0.0


def test_arithmetic_graded_reward_credits_digits_right_aligned():
    task = arithmetic(reward="graded")
    assert task.reward("123+456=", "579") == 1.0
    assert task.reward("123+456=", "578") == pytest.approx(2 / 3)
    assert task.reward("123+456=", "79") == pytest.approx(2 / 3)  # missing digit
    assert task.reward("123+456=", "1579") == pytest.approx(3 / 4)  # extra digit
    assert task.reward("123+456=", "975") == pytest.approx(1 / 3)


def test_arithmetic_graded_reward_counts_the_sign_as_a_position():
    task = arithmetic(reward="graded", operations=["-"])
    assert task.reward("12-57=", "-45") == 1.0
    assert task.reward("12-57=", "45") == pytest.approx(2 / 3)
    assert task.reward("57-12=", "-45") == pytest.approx(2 / 3)


def test_arithmetic_graded_reward_is_zero_for_non_numbers():
    task = arithmetic(reward="graded")
    for garbage in ("", "abc", "5 79", "57a", "+579", "--579", "5-79"):
        assert task.reward("123+456=", garbage) == 0.0, garbage


def test_arithmetic_correct_is_exact_even_with_graded_reward():
    task = arithmetic(reward="graded")
    assert task.correct("123+456=", "579")
    assert not task.correct("123+456=", "578")


def test_arithmetic_too_small_space_names_n_train():
    with pytest.raises(ConfigError, match=r"task\.n_train.*100 distinct prompts"):
        ArithmeticTask(TaskConfig(digits=1, n_train=95, n_eval=10))


# ------------------------------------------------------------------------------------------------
# sorting


def test_sorting_prompt_determines_sorted_answer():
    assert sorting().solve("sort 42 7 93 7 15:") == "7 7 15 42 93"


def test_sorting_prompts_have_configured_length_and_range():
    for ex in sorting(length=4, max_value=9).train_examples():
        numbers = [int(n) for n in ex.prompt.removeprefix("sort ").removesuffix(":").split(" ")]
        assert len(numbers) == 4 and all(0 <= n <= 9 for n in numbers)


def test_sorting_exact_reward_is_equality_with_answer():
    task = sorting(reward="exact")
    assert task.reward("sort 42 7 93 7 15:", "7 7 15 42 93 ") == 1.0
    assert task.reward("sort 42 7 93 7 15:", "7 15 7 42 93") == 0.0


def test_sorting_graded_reward_is_one_for_the_answer():
    assert sorting().reward("sort 42 7 93 7 15:", "7 7 15 42 93") == 1.0


def test_sorting_graded_reward_prefers_nearly_sorted_to_reversed():
    task = sorting()
    nearly = task.reward("sort 42 7 93 7 15:", "7 7 42 15 93")
    reversed_ = task.reward("sort 42 7 93 7 15:", "93 42 15 7 7")
    assert nearly == pytest.approx(9 / 10)  # one of ten pairs out of order
    assert reversed_ == pytest.approx(1 / 10)  # only the tied pair of 7s is in order
    assert reversed_ < nearly < 1.0


def test_sorting_graded_reward_penalises_wrong_multiset():
    task = sorting()
    assert task.reward("sort 42 7 93 7 15:", "7 15 42 93") == pytest.approx(4 / 5)  # one missing
    assert task.reward("sort 42 7 93 7 15:", "7 7 15 42 93 99") == pytest.approx(5 / 6)  # one extra
    assert task.reward("sort 42 7 93 7 15:", "7 8 15 42 93") == pytest.approx(4 / 5)  # one invented


def test_sorting_graded_reward_is_zero_for_unparsable_responses():
    task = sorting()
    for garbage in ("", "7, 7, 15", "7  7 15 42 93", "seven", "-7 7", "07 7 15 42 93"):
        assert task.reward("sort 42 7 93 7 15:", garbage) == 0.0, garbage


def test_sorting_too_small_space_names_n_train():
    with pytest.raises(ConfigError, match=r"task\.n_train.*9 distinct prompts"):
        SortingTask(TaskConfig(name="sorting", length=2, max_value=2, n_train=8, n_eval=2))


# ------------------------------------------------------------------------------------------------
# shared by the synthetic tasks


@pytest.mark.parametrize("make", [arithmetic, sorting])
def test_synthetic_split_is_deterministic_from_seed(make):
    assert make(seed=7).train_examples() == make(seed=7).train_examples()
    assert make(seed=7).eval_examples() == make(seed=7).eval_examples()
    assert make(seed=7).train_examples() != make(seed=8).train_examples()


@pytest.mark.parametrize("make", [arithmetic, sorting])
def test_synthetic_split_has_requested_counts_and_disjoint_unique_prompts(make):
    task = make()
    train, held_out = task.train_examples(), task.eval_examples()
    assert (len(train), len(held_out)) == (50, 20)
    prompts = [ex.prompt for ex in train + held_out]
    ids = [ex.prompt_id for ex in train + held_out]
    assert len(set(prompts)) == len(prompts) and len(set(ids)) == len(ids)


def test_synthetic_training_prompts_do_not_depend_on_n_eval():
    a = ArithmeticTask(TaskConfig(n_train=30, n_eval=5)).train_examples()
    b = ArithmeticTask(TaskConfig(n_train=30, n_eval=50)).train_examples()
    assert a == b


@pytest.mark.parametrize("make", [arithmetic, sorting])
def test_synthetic_examples_carry_their_gold_answer(make):
    task = make(reward="exact")
    for ex in task.train_examples() + task.eval_examples():
        assert ex.answer == task.solve(ex.prompt) and task.reward(ex.prompt, ex.answer) == 1.0


@pytest.mark.parametrize("make", [lambda: arithmetic(operations=["+", "-"]), lambda: sorting()])
def test_tokenizer_corpus_covers_every_character_of_prompts_and_answers(make):
    task = make()
    corpus_chars = set("".join(task.tokenizer_corpus()))
    used = set("".join(ex.prompt + (ex.answer or "") for ex in task.train_examples() + task.eval_examples()))
    assert used <= corpus_chars


def test_build_task_resolves_built_in_names():
    assert isinstance(build_task(TaskConfig(name="arithmetic", n_train=5, n_eval=5)), ArithmeticTask)
    assert isinstance(build_task(TaskConfig(name="sorting", n_train=5, n_eval=5)), SortingTask)


def test_build_task_rejects_unknown_name():
    with pytest.raises(ConfigError, match=r"task\.name: got 'poetry'"):
        build_task(TaskConfig(name="poetry"))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# jsonl


REWARD_MODULE = '''
def reward(prompt, response):
    return {"yes": 1.0, "half": 0.5}.get(response, 0.0)

def broken(prompt, response):
    return "great"
'''


@pytest.fixture
def reward_module(tmp_path, monkeypatch) -> str:
    (tmp_path / "user_reward.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_reward:reward"


def write_lines(path: Path, rows: list) -> str:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


def jsonl(path: str, reward_fn: str, **kw) -> JsonlTask:
    return JsonlTask(TaskConfig(name="jsonl", path=path, reward_fn=reward_fn, **kw))


def test_jsonl_reads_prompts_ids_and_answers(tmp_path, reward_module):
    train = write_lines(tmp_path / "train.jsonl", [{"prompt": "a?", "id": "q1", "answer": "A"}, {"prompt": "b?"}])
    held_out = write_lines(tmp_path / "held.jsonl", [{"prompt": "c?"}])
    task = build_task(TaskConfig(name="jsonl", path=train, eval_path=held_out, reward_fn=reward_module))
    assert task.train_examples() == [Example("q1", "a?", "A"), Example("train-2", "b?", None)]
    assert task.eval_examples() == [Example("held-1", "c?", None)]


def test_jsonl_reward_comes_from_the_user_function(tmp_path, reward_module):
    task = jsonl(write_lines(tmp_path / "p.jsonl", [{"prompt": "x"}, {"prompt": "z"}]), reward_module, n_eval=1)
    assert (task.reward("x", "yes"), task.reward("x", "half"), task.reward("x", "no")) == (1.0, 0.5, 0.0)


def test_jsonl_correct_means_full_marks_and_exact_reward_follows_it(tmp_path, reward_module):
    rows = [{"prompt": "x"}, {"prompt": "z"}]
    task = jsonl(write_lines(tmp_path / "p.jsonl", rows), reward_module, n_eval=1, reward="exact")
    assert task.correct("x", "yes") and not task.correct("x", "half")
    assert (task.reward("x", "yes"), task.reward("x", "half")) == (1.0, 0.0)


def test_jsonl_without_eval_path_holds_out_the_last_rows(tmp_path, reward_module):
    path = write_lines(tmp_path / "p.jsonl", [{"prompt": f"q{i}"} for i in range(6)])
    task = jsonl(path, reward_module, n_eval=2)
    assert [ex.prompt for ex in task.train_examples()] == ["q0", "q1", "q2", "q3"]
    assert [ex.prompt for ex in task.eval_examples()] == ["q4", "q5"]


def test_jsonl_n_train_and_n_eval_cap_the_rows_used(tmp_path, reward_module):
    train = write_lines(tmp_path / "t.jsonl", [{"prompt": f"t{i}"} for i in range(5)])
    held_out = write_lines(tmp_path / "e.jsonl", [{"prompt": f"e{i}"} for i in range(5)])
    task = jsonl(train, reward_module, eval_path=held_out, n_train=3, n_eval=2)
    assert [ex.prompt for ex in task.train_examples()] == ["t0", "t1", "t2"]
    assert [ex.prompt for ex in task.eval_examples()] == ["e0", "e1"]
    assert task.notes == [f"task.n_train=3: training on the first 3 of 5 training prompts from {train}"]
    assert jsonl(train, reward_module, eval_path=held_out, n_train=5).notes == []  # nothing cut, nothing said


def test_a_run_says_when_task_n_train_cuts_the_users_file(tmp_path, reward_module):
    from larpo import config as C
    from larpo.loop import run_sft_only

    path = write_lines(tmp_path / "p.jsonl", [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(30)])
    logged = []
    cfg = C.load(None, ["task.name=jsonl", f"task.path={path}", f"task.reward_fn={reward_module}", "task.n_train=12",
                        "task.n_eval=4", "sft.enabled=false", "model.hidden_size=32", "model.num_layers=1",
                        "model.num_heads=2", "model.intermediate_size=32"])
    run_sft_only(cfg, tmp_path / "run", progress=False, log=logged.append)
    assert f"[larpo] task.n_train=12: training on the first 12 of 26 training prompts from {path}" in logged


def test_jsonl_skips_blank_lines_and_keeps_line_numbers_in_ids(tmp_path, reward_module):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n\n')
    task = jsonl(str(path), reward_module, n_eval=1)
    assert [ex.prompt_id for ex in task.train_examples() + task.eval_examples()] == ["p-1", "p-3"]


def test_jsonl_tokenizer_corpus_covers_prompts_and_answers_of_both_splits(tmp_path, reward_module):
    train = write_lines(tmp_path / "t.jsonl", [{"prompt": "abc", "answer": "xyz"}])
    held_out = write_lines(tmp_path / "e.jsonl", [{"prompt": "é!"}])
    corpus = jsonl(train, reward_module, eval_path=held_out).tokenizer_corpus()
    assert set("abcxyzé!") <= set("".join(corpus))


def test_jsonl_reward_outside_unit_interval_names_reward_fn(tmp_path, reward_module):
    rows = [{"prompt": "x"}, {"prompt": "z"}]
    task = jsonl(write_lines(tmp_path / "p.jsonl", rows), "user_reward:broken", n_eval=1)
    with pytest.raises(ConfigError, match=r"task\.reward_fn: user_reward:broken returned 'great'"):
        task.reward("x", "y")


def test_jsonl_unloadable_reward_fn_names_the_field(tmp_path, reward_module):
    with pytest.raises(ConfigError, match=r"task\.reward_fn"):
        jsonl(write_lines(tmp_path / "p.jsonl", [{"prompt": "x"}, {"prompt": "z"}]), "user_reward:missing", n_eval=1)


@pytest.mark.parametrize(
    ("rows", "line", "message"),
    [
        (['{"prompt": "a"}', "{not json"], 2, r"not valid JSON .*expected a JSON object with a string \"prompt\""),
        (['{"prompt": "a"}', '["a list"]'], 2, r"expected a JSON object with a string \"prompt\""),
        (['{"prompt": "a"}', '{"question": "b"}'], 2, r"expected a JSON object with a string \"prompt\""),
        (['{"prompt": 3}'], 1, r"expected a JSON object with a string \"prompt\""),
        (['{"prompt": "a", "id": 7}'], 1, r"got 'id' = 7, expected a string"),
        (['{"prompt": "a", "answer": 7}'], 1, r"got 'answer' = 7, expected a string"),
        (['{"prompt": "a", "id": "x"}', '{"prompt": "b", "id": "x"}'], 2, r"duplicate id 'x' \(first at .*:1\)"),
        (['{"prompt": "a"}', '{"prompt": "a"}'], 2, r"duplicate prompt 'a' \(first at .*:1\)"),
    ],
)
def test_jsonl_bad_line_error_names_file_and_line(tmp_path, reward_module, rows, line, message):
    path = write_lines(tmp_path / "prompts.jsonl", rows)
    with pytest.raises(ConfigError, match=rf"prompts\.jsonl:{line}: {message}"):
        jsonl(path, reward_module)


def test_jsonl_held_out_prompt_also_in_training_file_names_both(tmp_path, reward_module):
    train = write_lines(tmp_path / "train.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    held_out = write_lines(tmp_path / "held.jsonl", [{"prompt": "c"}, {"prompt": "b"}])
    with pytest.raises(ConfigError, match=r"held\.jsonl:2: duplicate prompt 'b' \(first at .*train\.jsonl:2\)"):
        jsonl(train, reward_module, eval_path=held_out)


def test_jsonl_missing_file_is_named(tmp_path, reward_module):
    with pytest.raises(ConfigError, match=r"nowhere\.jsonl: cannot read prompts file"):
        jsonl(str(tmp_path / "nowhere.jsonl"), reward_module)


def test_jsonl_empty_file_is_named(tmp_path, reward_module):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n")
    with pytest.raises(ConfigError, match=r"empty\.jsonl: empty; expected a JSON object"):
        jsonl(str(path), reward_module)


def test_jsonl_too_few_rows_to_hold_out_names_n_eval(tmp_path, reward_module):
    path = write_lines(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    with pytest.raises(ConfigError, match=r"task\.n_eval: got 2, but .*p\.jsonl has only 2 prompts"):
        jsonl(path, reward_module, n_eval=2)
