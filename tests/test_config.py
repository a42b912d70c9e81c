"""Configs: YAML mirrors the dataclasses, overrides apply, and bad input names the key."""

import subprocess
import sys
from pathlib import Path

import pytest

from larpo import config as C

ROOT = Path(__file__).parent.parent


def test_configs_default_yaml_is_the_embedded_default():
    assert C.load(ROOT / "configs" / "default.yaml") == C.Config()


def test_dump_and_load_round_trip(tmp_path):
    cfg = C.load(None, ["train.loss=listmle", "sampling.k=4", "task.operations=['+', '-']", "model.path=/x"])
    path = tmp_path / "c.yaml"
    path.write_text(C.dump(cfg))
    assert C.load(path) == cfg
    assert (cfg.train.loss, cfg.sampling.k, cfg.task.operations, cfg.model.path) == ("listmle", 4, ["+", "-"], "/x")


def test_override_beats_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  beta: 0.5\n  epochs: 3\n")
    cfg = C.load(path, ["train.beta=0.25"])
    assert (cfg.train.beta, cfg.train.epochs) == (0.25, 3)


def test_ints_and_exponent_notation_are_accepted_where_floats_are_expected(tmp_path):
    assert C.load(None, ["train.beta=1"]).train.beta == 1.0
    assert C.load(None, ["train.lr=1e-4"]).train.lr == 1e-4
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 5e-7\n")
    assert C.load(path).train.lr == 5e-7


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.lossy=1", "train.lossy: unknown key"),
        ("trian.loss=x", "trian: unknown key"),
        ("train.loss=hinge", "train.loss: got 'hinge', expected one of"),
        ("sampling.k=ten", "sampling.k: got 'ten', expected an integer"),
        ("sampling.k=1", "sampling.k: got 1, expected at least 2"),
        ("train.beta=-0.1", "train.beta: got -0.1, expected a positive number"),
        ("sft.enabled=maybe", "sft.enabled: got 'maybe', expected true or false"),
        ("sampling.top_p=1.5", "sampling.top_p"),
        ("task.operations=['*']", "task.operations"),
        ("reranker.kind=hf", "reranker.path: required"),
        ("train", "expected section.field=value"),
        ("report_to=[none, wandb]", "report_to: got ['none', 'wandb'], expected none, a tracker's name or a list"),
        ("report_to=[]", "report_to: got [], expected none"),
        ("report_to=[wandb, wandb]", "report_to: got ['wandb', 'wandb']"),
        ("report_to=7", "report_to: got 7, expected"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(C.ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        C.load(None, [override])


def test_choosing_the_final_policy_on_validation_needs_the_validation_prompts():
    assert C.load(None, ["loop.select=validation"]).loop.select == "validation"
    with pytest.raises(C.ConfigError, match="loop.select: 'validation' reads the validation prompts"):
        C.load(None, ["loop.select=validation", "sft.enabled=false"])


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  beta: 0.1\n  loss: [unclosed\n")
    with pytest.raises(C.ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        C.load(path)


def test_error_from_a_file_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: two\n")
    with pytest.raises(C.ConfigError, match=r"c.yaml: train.epochs: got 'two', expected an integer"):
        C.load(path)


@pytest.mark.parametrize(
    "args,expected",
    [
        (["run", "train.loss=hinge"], "larpo: error: train.loss: got 'hinge'"),
        (["run", "--config", "does-not-exist.yaml"], "larpo: error: does-not-exist.yaml: cannot read config"),
        (["report", "nowhere"], "larpo: error: nowhere: not a larpo run directory"),
    ],
)
def test_cli_user_errors_exit_2_with_one_line_and_no_traceback(tmp_path, args, expected):
    proc = subprocess.run([sys.executable, "-m", "larpo.cli", *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(expected), proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # nothing written for a rejected config


def test_every_command_has_help():
    for args in (["--help"], ["run", "--help"], ["sft", "--help"], ["report", "--help"]):
        proc = subprocess.run([sys.executable, "-m", "larpo.cli", *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "usage: larpo" in proc.stdout


def test_the_readme_example_config_loads():
    import re

    text = (ROOT / "README.md").read_text()
    block = re.search(r"```yaml\n(# my-run.yaml.*?)```", text, re.S).group(1)
    cfg = C.from_dict(__import__("yaml").safe_load(block))
    assert (cfg.task.name, cfg.model.lora, cfg.reranker.kind) == ("dataset", True, "hf")


def test_lipo_weights_with_a_loss_other_than_lambdarank_are_refused():
    with pytest.raises(C.ConfigError, match="train.weighting: .lipo. weights lambdarank pairs; got train.loss=.listmle."):
        C.load(None, ["train.weighting=lipo", "train.loss=listmle"])
    assert C.load(None, ["train.weighting=lipo"]).train.weighting == "lipo"  # lambdarank, the default loss



def test_threads_from_the_command_line_are_recorded_and_applied(tmp_path):
    import torch

    from larpo.cli import main

    args = ["sft", "--quiet", "--threads", "2", "--out", str(tmp_path / "run"), "sft.enabled=false", "model.hidden_size=32",
            "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=32", "eval.n_prompts=4"]
    try:
        assert main(args) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)  # the suite's setting (conftest)
    assert C.load(tmp_path / "run" / "config.yaml").threads == 2
    assert main(["run", "--threads", "0"]) == 2  # a positive number of threads


def test_report_to_names_none_one_tracker_or_several():
    assert C.load(None).trackers == [] and C.load(None, ["report_to=tensorboard"]).trackers == ["tensorboard"]
    assert C.load(None, ["report_to=[tensorboard, wandb]"]).trackers == ["tensorboard", "wandb"]


def test_a_written_config_is_the_same_run_whatever_it_reports_to():
    cfg = C.load(None, ["report_to=tensorboard"])
    assert C.same_results(C.dump(C.load(None)), cfg) and not C.same_results(C.dump(C.load(None, ["seed=1"])), cfg)
    assert not C.same_results("seed: [", cfg)  # not YAML: not the same run
    older = C.dump(C.load(None)).replace("report_to: none\n", "")  # written before report_to existed
    assert "report_to" not in older and C.same_results(older, cfg)
