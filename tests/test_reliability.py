"""Reliability: every bad input is one line and exit code 2 with nothing left that blocks the fix;
runs killed at stage boundaries or inside a write resume to the uninterrupted result; one run per
directory; files follow the umask."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from larpo import config as C
from larpo.cli import main
from larpo.io import TMP_PREFIX, read_jsonl, write_text_atomic
from larpo.preflight import prepare_run_dir

from test_loop import run_cli, write_small_config

USER_CODE = '''
import math

def reward(prompt, response):
    return 1.0 if response.strip() == "7" else 0.0

def boom(prompt, response):
    raise RuntimeError("the reward server is down")

def nan(prompt, response):
    return math.nan

def two(prompt, response):
    return 2.0

def text(prompt, response):
    return "good"

def rerank_boom(prompts, responses):
    raise ValueError("bad batch")

def rerank_nan(prompts, responses):
    return [math.nan] * len(prompts)

def rerank_short(prompts, responses):
    return [0.0]

def by_length(prompts, responses):
    return [float(len(r)) for r in responses]
'''


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A directory with a prompts file, a broken prompts file and the user's functions (importable as `user_code`)."""
    (tmp_path / "user_code.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = [{"prompt": f"{i}+{7 - i}=", "answer": "7", "id": f"p-{i}"} for i in range(8)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "bad.jsonl").write_text(json.dumps(rows[0]) + "\n{not json\n")
    return tmp_path


def task_args(user: Path, reward_fn: str = "reward", path: str = "p.jsonl") -> list[str]:
    return ["task.name=jsonl", f"task.path={user / path}", f"task.reward_fn=user_code:{reward_fn}", "task.n_eval=2",
            "sft.enabled=false", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
            "model.intermediate_size=32", "sampling.k=2", "sampling.max_new_tokens=2", "loop.iterations=1",
            "eval.samples=0", "eval.n_prompts=2", "train.batch_size=2", "train.micro_batch_size=2"]


def copy_model(src: Path, dst: Path, drop: tuple[str, ...] = (), truncate: str | None = None) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop))
    if truncate:
        data = (dst / truncate).read_bytes()
        (dst / truncate).write_bytes(data[: len(data) // 2])
    return dst


def bad_inputs(user: Path, model_dir: Path) -> dict[str, tuple[list[str], str]]:
    """name: (the `larpo run` arguments after --out, the one line expected on stderr, after `larpo: error: `)."""
    no_tokenizer = copy_model(model_dir, user / "no-tokenizer", drop=("tokenizer*", "special_tokens_map.json"))
    truncated = copy_model(model_dir, user / "truncated", truncate="model.safetensors")
    (user / "a-file").write_text("")
    user_model = lambda path: [*task_args(user), f"model.path={path}"]  # noqa: E731
    return {
        "missing model path": (user_model(user / "nowhere"), f"model.path: {user / 'nowhere'} is not a directory"),
        "no tokenizer files": (user_model(no_tokenizer), f"model.path: {no_tokenizer} has no tokenizer files"),
        "truncated weights": (user_model(truncated), f"model.path: {truncated / 'model.safetensors'} is not a complete "
                                                     "safetensors file"),
        "bad jsonl line": (task_args(user, path="bad.jsonl"), f"{user / 'bad.jsonl'}:2: not valid JSON"),
        "reward function raises": (task_args(user, "boom"), "task.reward_fn 'user_code:boom' raised RuntimeError: "
                                                            "the reward server is down on prompt p-0"),
        "reward function NaN": (task_args(user, "nan"), "task.reward_fn: user_code:nan returned nan on prompt p-0"),
        "reward function 2.0": (task_args(user, "two"), "task.reward_fn: user_code:two returned 2.0 on prompt p-0"),
        "reward function string": (task_args(user, "text"), "task.reward_fn: user_code:text returned 'good' on prompt p-0"),
        "reranker raises": ([*task_args(user), "reranker.kind=callable", "reranker.function=user_code:rerank_boom"],
                            "reranker.function 'user_code:rerank_boom' raised ValueError: bad batch on a batch of 4"),
        "reranker NaN": ([*task_args(user), "reranker.kind=callable", "reranker.function=user_code:rerank_nan"],
                         "reranker.function 'user_code:rerank_nan': reward 0 is nan, expected a finite number"),
        "reranker wrong count": ([*task_args(user), "reranker.kind=callable", "reranker.function=user_code:rerank_short"],
                                 "reranker.function 'user_code:rerank_short': returned 1 rewards for 4 responses"),
        "no iterations": ([*task_args(user), "loop.iterations=0"], "loop.iterations: got 0, expected a positive number"),
        "micro-batch above batch": ([*task_args(user), "train.micro_batch_size=4"],
                                    "train.micro_batch_size: got 4, expected at most train.batch_size (2)"),
    }


CASES = ["missing model path", "no tokenizer files", "truncated weights", "bad jsonl line", "reward function raises",
         "reward function NaN", "reward function 2.0", "reward function string", "reranker raises", "reranker NaN",
         "reranker wrong count", "no iterations", "micro-batch above batch"]


@pytest.mark.parametrize("case", CASES)
def test_a_bad_input_is_one_line_exit_2_and_writes_nothing(case, user, tiny_model_dir, capsys):
    args, expected = bad_inputs(user, tiny_model_dir)[case]
    out = user / "run"
    assert main(["run", "--quiet", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err == f"larpo: error: {err.removeprefix('larpo: error: ')}" and err.count("\n") == 1
    assert err.removeprefix("larpo: error: ").startswith(expected), err
    assert not out.exists()  # nothing that could block the corrected command


def test_out_that_is_a_file_or_cannot_be_created_is_named(user, capsys):
    for out, expected in [(user / "a-file", f"--out {user / 'a-file'}: exists and is not a directory"),
                          (Path("/sys/larpo-test-run"), "--out /sys/larpo-test-run: cannot create it")]:
        (user / "a-file").write_text("")
        assert main(["run", "--quiet", "--out", str(out), *task_args(user)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"larpo: error: {expected}") and err.count("\n") == 1


def test_the_corrected_command_runs_after_a_failed_one(user, capsys):
    out = user / "run"
    assert main(["run", "--quiet", "--out", str(out), *task_args(user, "boom")]) == 2
    # fails later, in iteration 1: every prompt's samples tie under the gold reward of a random policy
    assert main(["run", "--quiet", "--out", str(out), *task_args(user)]) == 2
    assert "every prompt's candidates tied" in capsys.readouterr().err and (out / "eval_sft.json").exists()
    fixed = [*task_args(user), "reranker.kind=callable", "reranker.function=user_code:by_length"]
    assert main(["run", "--quiet", "--out", str(out), *fixed]) == 0
    assert (out / "summary.json").is_file() and "starting again with this one" in capsys.readouterr().out


def test_debug_shows_the_traceback_of_the_users_exception(user, capsys):
    assert main(["--debug", "run", "--quiet", "--out", str(user / "run"), *task_args(user, "boom")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and 'raise RuntimeError("the reward server is down")' in err
    assert err.splitlines()[-1].startswith("larpo: error: task.reward_fn 'user_code:boom' raised RuntimeError")


def test_in_a_real_process_a_users_exception_prints_no_traceback(user):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(user), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "larpo.cli", "run", "--quiet", "--out", str(user / "run"),
                           *task_args(user, "boom")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "raised RuntimeError: the reward server is down on prompt p-0" in proc.stderr


def test_a_bad_config_is_refused_before_torch_is_imported():
    code = "import sys; from larpo.cli import main; rc = main(['run', 'train.lr=fast']); print(rc, 'torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False"], proc.stderr


def failed_attempt(run_dir: Path, cfg: C.Config) -> None:
    """What a run that failed in its first iteration leaves: config, SFT, its evaluation, partial iteration 0."""
    prepare_run_dir(cfg, run_dir, lambda _: None)
    (run_dir / "sft").mkdir()
    (run_dir / "eval_sft.json").write_text("{}")
    (run_dir / "iter_0").mkdir()
    (run_dir / "iter_0" / "candidates.jsonl").write_text("")
    (run_dir / "metrics.jsonl").write_text('{"stage": "sft", "step": 1}\n{"stage": "eval", "policy": 0}\n')


def test_a_directory_with_no_finished_iteration_takes_a_new_config_keeping_an_unaffected_sft(tmp_path):
    logged: list[str] = []
    failed_attempt(tmp_path, C.load(None, ["sampling.k=2"]))
    prepare_run_dir(C.load(None, ["sampling.k=4"]), tmp_path, logged.append)  # K does not change SFT
    assert C.load(tmp_path / "config.yaml").sampling.k == 4
    assert (tmp_path / "sft").is_dir() and not (tmp_path / "eval_sft.json").exists() and not (tmp_path / "iter_0").exists()
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"stage": "sft", "step": 1}]
    assert logged == [f"[larpo] {tmp_path} was made with another config that finished no iteration: starting again with "
                      "this one (removed eval_sft.json, iter_0); the initial policy (sft/) is kept, since the change "
                      "does not affect it"]


def test_a_new_config_that_changes_sft_starts_the_failed_directory_afresh(tmp_path):
    failed_attempt(tmp_path, C.load(None, ["sampling.k=2"]))
    prepare_run_dir(C.load(None, ["sft.lr=0.01"]), tmp_path, lambda _: None)
    assert not (tmp_path / "sft").exists() and not (tmp_path / "metrics.jsonl").exists()


def test_a_directory_with_a_finished_iteration_refuses_a_new_config(tmp_path):
    failed_attempt(tmp_path, C.load(None, ["sampling.k=2"]))
    (tmp_path / "iter_0" / "policy").mkdir()
    with pytest.raises(C.ConfigError, match=r"different config and has finished iterations \(iter_0/policy\)"):
        prepare_run_dir(C.load(None, ["sampling.k=4"]), tmp_path, lambda _: None)
    assert C.load(tmp_path / "config.yaml").sampling.k == 2 and (tmp_path / "eval_sft.json").exists()


# ---------------------------------------------------------------------------------------------
# kills, leftovers, locks


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted CLI run of the small config."""
    directory = tmp_path_factory.mktemp("reliability")
    config = write_small_config(directory, ["sft.max_steps=30", "eval.n_prompts=16", "eval.samples=2"])
    proc = run_cli(config, directory / "whole")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return config, directory / "whole"


def same_result(got: Path, want: Path) -> None:
    """Summary, every policy's weights, metrics and candidates as in the uninterrupted run."""
    a, b = (json.loads((d / "summary.json").read_text()) for d in (got, want))
    assert a["per_policy"] == b["per_policy"] and a.get("retriever") == b.get("retriever")
    for policy in ["sft/model.safetensors", "iter_0/policy/model.safetensors", "iter_1/policy/model.safetensors"]:
        assert (got / policy).read_bytes() == (want / policy).read_bytes(), policy
    for s in (0, 1):
        assert read_jsonl(got / f"iter_{s}/candidates.jsonl") == read_jsonl(want / f"iter_{s}/candidates.jsonl")
    strip = lambda rows: [r for r in rows if r["stage"] not in ("truncation", "time")]  # noqa: E731
    assert strip(read_jsonl(got / "metrics.jsonl")) == strip(read_jsonl(want / "metrics.jsonl"))
    assert not list(got.rglob(f"{TMP_PREFIX}*"))


def cut_after_first_iteration(finished: Path, out: Path) -> Path:
    """Copy of a finished two-iteration run as a kill right after its first iteration leaves it: iter_1 and
    everything written after it gone, metrics.jsonl up to the first iteration's policy evaluation."""
    shutil.copytree(finished, out, ignore=shutil.ignore_patterns("iter_1", "summary.json", "retriever_eval_*", "report.md",
                                                                  "plots", ".larpo.lock*"))
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if not (r["stage"] == "eval" and r["policy"] == 2)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r.get("iteration") != 1))
    return out


def test_a_run_killed_at_each_stage_boundary_resumes_to_the_same_result(reference, tmp_path):
    """One run killed (SIGKILL) as soon as the SFT policy, then the first iteration's candidates, then its
    lists, then the second policy exist, resumed after each kill: it ends exactly where the uninterrupted run
    does, with no metrics row of a killed attempt left twice."""
    config, want = reference
    out = tmp_path / "killed"
    for marker in ("sft", "iter_0/candidates.jsonl", "iter_0/lists.jsonl", "iter_1/policy"):
        proc = run_cli(config, out, start_new_session=True)
        deadline = time.time() + 300
        while not (out / marker).exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert (out / marker).exists() and not (out / "summary.json").exists(), marker
    resumed = run_cli(config, out)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    same_result(out, want)


def test_a_run_killed_inside_writes_removes_the_leftovers_and_resumes_to_the_same_result(reference, tmp_path):
    """What a kill inside `save_policy` and inside an atomic file write leaves, planted in a run stopped
    after its first iteration: a half-written temporary policy directory and a half-written file."""
    config, want = reference
    out = cut_after_first_iteration(want, tmp_path / "killed")
    half = (want / "iter_1" / "policy" / "model.safetensors").read_bytes()
    (out / "iter_1" / f"{TMP_PREFIX}policy.k1ll3d").mkdir(parents=True)
    (out / "iter_1" / f"{TMP_PREFIX}policy.k1ll3d" / "model.safetensors").write_bytes(half[: len(half) // 2])
    (out / f"{TMP_PREFIX}summary.json.x7").write_text('{"per_pol')
    resumed = run_cli(config, out)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    same_result(out, want)


def test_a_second_run_into_a_busy_directory_exits_2_naming_the_holder(tmp_path, capsys):
    config = write_small_config(tmp_path, ["sft.max_steps=100000", "sft.target_accuracy=1.0"])  # a long SFT
    out = tmp_path / "busy"
    first = run_cli(config, out, start_new_session=True)
    try:
        while not (out / ".larpo.lock.holder").exists() and first.poll() is None:
            time.sleep(0.01)
        assert main(["run", "--quiet", "--config", str(config), "--out", str(out)]) == 2  # the second, in this process
        err = capsys.readouterr().err
        assert err.strip() == (f"larpo: error: {out.resolve()}: in use by another larpo process (pid {first.pid} on "
                               f"{os.uname().nodename}); wait for it to finish or pass another --out")
        assert first.poll() is None  # the holder goes on undisturbed
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def test_files_and_directories_follow_the_umask(tiny_model_dir, tmp_path):
    script = f"import os; os.umask(0o027); from larpo.cli import main; main(['export-model', '{tiny_model_dir}', '{tmp_path / 'out'}'])"
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "out" / "config.json").stat().st_mode & 0o777 == 0o640
    write_text_atomic(tmp_path / "x.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "x.txt").stat().st_mode & 0o777 == 0o666 & ~mask
