"""chat_arithmetic: questions in words, rewards for many reply shapes computed by hand, strict and lenient readings."""

from __future__ import annotations

import re

import pytest

from larpo import config as config_mod
from larpo.config import TaskConfig
from larpo.tasks import ChatArithmeticTask, build_task
from larpo.tasks.chat_arithmetic import PHRASINGS

QUESTION = "What is 47 + 38? Reply with only the number."  # answer 85


def chat_arithmetic(**kw) -> ChatArithmeticTask:
    return ChatArithmeticTask(TaskConfig(name="chat_arithmetic", n_train=150, n_eval=50, **kw))


# Graded reward = correctness (last integer, digit by digit, right-aligned) × (0.7 + 0.3 × format)
# (format 1: only the number; 1/2: exactly one integer among other text; 0: several integers or none).
GRADED = {
    "85": 1.0,
    " 85 \n": 1.0,  # surrounding whitespace is not text
    " 85.": 0.7 + 0.15,
    "The answer is 85": 0.7 + 0.15,
    "85\n\nI hope this helps!": 0.7 + 0.15,
    "47 + 38 = 85": 0.7,  # correct, but the sum is restated: three integers
    "84": 1 / 2,  # the tens digit agrees; the format is as asked
    "58": 0.0,  # no digit in its place: a bare number earns no format credit when it is wrong
    "47": 0.0,  # the first operand, bare
    "-85": 2 / 3,  # the sign is one more position
    "185": 2 / 3,
    "085": 2 / 3,
    "47 + 38 = 84": 0.7 * 1 / 2,
    "The answer is 85 (47 + 38)": 0.0,  # the last integer, 38, shares no digit with 85
    "8 5": 0.7 * 1 / 2,  # last integer 5; two integers
    "": 0.0,
    "eighty-five": 0.0,
    "I don't know.": 0.0,
}


@pytest.mark.parametrize("reply", GRADED)
def test_graded_reward_by_hand(reply):
    assert chat_arithmetic().reward(QUESTION, reply) == pytest.approx(GRADED[reply])


def test_graded_reward_ranks_correct_verbose_above_wrong_bare_and_bare_above_verbose():
    task = chat_arithmetic()
    r = lambda reply: task.reward(QUESTION, reply)  # noqa: E731
    assert r("85") > r("The answer is 85.") > r("47 + 38 = 85") > r("84") > r("47 + 38 = 84") > r("") == 0.0


def test_graded_reward_is_one_exactly_for_the_strictly_right_replies():
    task = chat_arithmetic()
    for reply in GRADED:
        assert (task.reward(QUESTION, reply) == 1.0) == task.exact(QUESTION, reply), reply


@pytest.mark.parametrize("reply, expected", [("85", True), (" 85\n", True), ("85.", False), ("085", False),
                                             ("The answer is 85", False), ("47 + 38 = 85", False), ("84", False)])
def test_exact_is_strict_the_number_alone(reply, expected):
    assert chat_arithmetic().exact(QUESTION, reply) is expected


@pytest.mark.parametrize("reply, expected", [
    ("85", True), (" 85\n", True), ("85.", True), ("The answer is 85", True), ("47 + 38 = 85", True),
    ("85\n\nI hope this helps!", True), ("084", False), ("085", False), ("-85", False), ("84", False),
    ("The answer is 85 (47 + 38)", False), ("eighty-five", False), ("", False),
])
def test_correct_is_lenient_the_last_integer(reply, expected):
    assert chat_arithmetic().correct(QUESTION, reply) is expected


def test_correct_is_lenient_whatever_the_reward():
    assert chat_arithmetic(reward="exact").correct(QUESTION, "47 + 38 = 85")
    assert chat_arithmetic(reward="graded").correct(QUESTION, "47 + 38 = 85")


def test_exact_reward_is_the_strict_reading():
    task = chat_arithmetic(reward="exact")
    assert [task.reward(QUESTION, r) for r in ("85", " 85\n", "85.", "47 + 38 = 85", "84")] == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_subtraction_answers_are_signed():
    task = chat_arithmetic(operations=["-"])
    question = "Compute 12 - 57. Answer with just the number."
    assert task.solve(question) == "-45"
    assert task.reward(question, "-45") == 1.0
    assert task.reward(question, "45") == pytest.approx(2 / 3)
    assert task.reward(question, "12 - 57 = -45") == pytest.approx(0.7)


def test_prompts_are_questions_in_every_phrasing_with_operands_of_the_configured_digits():
    task = chat_arithmetic(digits=2, operations=["+", "-"])
    examples = task.train_examples() + task.eval_examples()
    assert {re.sub(r"[0-9]+ [+-] [0-9]+", "{a} {op} {b}", e.prompt) for e in examples} == set(PHRASINGS)
    for e in examples:
        a, op, b = re.search(r"([0-9]+) ([+-]) ([0-9]+)", e.prompt).groups()
        assert len(a) == len(b) == 2 and e.answer == str(int(a) + int(b) if op == "+" else int(a) - int(b))


def test_prompts_are_deterministic_from_the_seed():
    assert chat_arithmetic().eval_examples() == chat_arithmetic().eval_examples()
    assert chat_arithmetic(seed=1).eval_examples() != chat_arithmetic(seed=2).eval_examples()


def test_no_operation_is_both_a_training_and_a_held_out_prompt():
    task = chat_arithmetic()
    operation = lambda e: re.search(r"[0-9]+ [+-] [0-9]+", e.prompt)[0]  # noqa: E731
    assert not {operation(e) for e in task.train_examples()} & {operation(e) for e in task.eval_examples()}


def test_tokenizer_corpus_covers_every_character_of_prompts_and_answers():
    task = chat_arithmetic(operations=["+", "-"])
    covered = set("".join(task.tokenizer_corpus()[:1]))  # the alphabet alone
    used = {c for e in task.train_examples() + task.eval_examples() for c in e.prompt + e.answer}
    assert used <= covered


def test_the_task_is_selected_by_name_in_a_config():
    cfg = config_mod.load(None, ["task.name=chat_arithmetic", "task.n_train=10", "task.n_eval=5"])
    assert isinstance(build_task(cfg.task), ChatArithmeticTask)


def test_evaluations_report_the_strict_reading_beside_the_lenient_one():
    from larpo.evaluate import score_responses

    replies = ["85", "The answer is 85.", "47 + 38 = 85", "84", " 85\n"]
    scores = score_responses(chat_arithmetic(), [QUESTION] * len(replies), replies)
    assert scores["per_prompt"]["correct"] == [1.0, 1.0, 1.0, 0.0, 1.0]  # lenient: the last integer is the answer
    assert scores["per_prompt"]["strict"] == [1.0, 0.0, 0.0, 0.0, 1.0]  # strict: the reply is the number alone
    assert scores["exact_accuracy"] == pytest.approx(4 / 5) and scores["strict_accuracy"] == pytest.approx(2 / 5)


def test_a_task_without_a_strict_reading_reports_none():
    from larpo.evaluate import score_responses
    from larpo.tasks import ArithmeticTask

    scores = score_responses(ArithmeticTask(TaskConfig(digits=2, n_train=20, n_eval=5)), ["37+48="] * 2, ["85", "84"])
    assert "strict_accuracy" not in scores and set(scores["per_prompt"]) == {"correct", "reward"}
    assert scores["exact_accuracy"] == 0.5
