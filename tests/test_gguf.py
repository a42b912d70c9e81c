"""larpo import-gguf: a tiny Llama GGUF written here with the gguf package, converted and checked.

The file declares ``<|endoftext|>`` as EOS while its ChatML template ends assistant turns with
``<|im_end|>``, so the conversion must switch EOS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from larpo.cli import main
from larpo.encoding import encode_prompt
from larpo.gguf import RECORD, end_of_turn, import_gguf
from larpo.models import load_policy

SRC = Path(__file__).resolve().parents[1] / "src"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "i s", "Ġ a"]
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def write_tiny_gguf(path: Path, architecture: str = "llama", hidden: int = 16, layers: int = 2, ff: int = 32) -> Path:
    """A random Llama (2 heads, float32 tensors, tied embeddings) with a byte-level BPE vocabulary
    (3 control tokens, 256 bytes, 3 merges), EOS ``<|endoftext|>`` and a ChatML template: about 43 KB."""
    tokens = SPECIALS + sorted(set(bytes_to_unicode().values())) + [m.replace(" ", "") for m in MERGES]
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(layers)
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL] * len(SPECIALS) + [gguf.TokenType.NORMAL] * (len(tokens) - len(SPECIALS)))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(SPECIALS.index("<|endoftext|>"))
    writer.add_eos_token_id(SPECIALS.index("<|endoftext|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)

    def random(name: str, *shape: int) -> None:
        writer.add_tensor(name, (0.2 * rng.standard_normal(shape)).astype(np.float32))

    random("token_embd.weight", len(tokens), hidden)
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            random(f"blk.{i}.{name}.weight", hidden, hidden)
        random(f"blk.{i}.ffn_gate.weight", ff, hidden)
        random(f"blk.{i}.ffn_up.weight", ff, hidden)
        random(f"blk.{i}.ffn_down.weight", hidden, ff)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def larpo_cli(*args: str, prelude: str = "") -> subprocess.CompletedProcess:
    """Run ``larpo`` in a fresh interpreter (``prelude``: Python run before it, to change its environment)."""
    code = f"{prelude}\nimport sys\nfrom larpo.cli import main\nsys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def imported(tiny_gguf, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The tiny GGUF converted by ``larpo import-gguf`` (its directory, and the finished process)."""
    out = tmp_path_factory.mktemp("imported") / "policy"
    return out, larpo_cli("import-gguf", str(tiny_gguf), str(out))


def test_the_tiny_gguf_is_small(tiny_gguf):
    assert tiny_gguf.stat().st_size < 100_000


def test_import_writes_safetensors_config_tokenizer_and_the_record(imported):
    out, proc = imported
    assert proc.returncode == 0, proc.stderr
    assert "logits checked" in proc.stdout
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", RECORD} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("*.bin")) and not list(out.glob("*.gguf"))
    record = json.loads((out / RECORD).read_text())
    assert record["source"] == "tiny.gguf" and record["model_type"] == "llama" and record["dtype"] == "float32"
    assert "quantization_config" not in json.loads((out / "config.json").read_text())


def test_the_chat_template_is_kept_and_applied(imported):
    _, tokenizer = load_policy(imported[0])
    assert tokenizer.chat_template == CHATML
    ids = encode_prompt(tokenizer, "hi")
    assert tokenizer.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_eos_becomes_the_chat_templates_end_of_turn(imported):
    out, proc = imported
    model, tokenizer = load_policy(out)
    im_end = SPECIALS.index("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == im_end
    assert model.config.eos_token_id == im_end and model.generation_config.eos_token_id == im_end
    record = json.loads((out / RECORD).read_text())
    assert (record["gguf_eos_token"], record["end_of_turn"], record["eos_token"]) == ("<|endoftext|>", "<|im_end|>", "<|im_end|>")
    assert "replacing the file's '<|endoftext|>'" in proc.stdout


def test_the_saved_policy_gives_the_gguf_loaded_models_logits(imported, tiny_gguf):
    saved, saved_tokenizer = load_policy(imported[0])
    where = {"pretrained_model_name_or_path": str(tiny_gguf.parent), "gguf_file": tiny_gguf.name}
    original = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32, use_kernels=False, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(**where)
    text = "this is a test"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert saved_tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    with torch.no_grad():
        assert torch.equal(saved(torch.tensor([ids])).logits, original(torch.tensor([ids])).logits)


def test_bfloat16_weights_on_request(tiny_gguf, tmp_path):
    record = import_gguf(tiny_gguf, tmp_path / "bf16", dtype="bfloat16")
    model, _ = load_policy(tmp_path / "bf16")
    assert record.dtype == "bfloat16" and model.dtype == torch.bfloat16


def test_an_empty_output_directory_is_filled(tiny_gguf, tmp_path):
    (tmp_path / "empty").mkdir()
    import_gguf(tiny_gguf, tmp_path / "empty")
    assert (tmp_path / "empty" / "model.safetensors").is_file()


def test_no_end_of_turn_when_the_template_ends_turns_with_plain_text(imported):
    _, tokenizer = load_policy(imported[0])
    assert end_of_turn(tokenizer) == "<|im_end|>"
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    assert end_of_turn(tokenizer) is None
    tokenizer.chat_template = None
    assert end_of_turn(tokenizer) is None


@pytest.mark.parametrize("case", ["missing file", "not a GGUF", "unsupported architecture", "output not empty", "no gguf package"])
def test_user_errors_exit_2_with_one_line_and_write_nothing(case, tiny_gguf, tmp_path, capsys, monkeypatch):
    source, out = tiny_gguf, tmp_path / "out"
    if case == "missing file":
        source, expected = tmp_path / "absent.gguf", "no such file"
    elif case == "not a GGUF":
        source, expected = tmp_path / "model.gguf", "not a GGUF file"
        source.write_text("{}")
    elif case == "unsupported architecture":
        source, expected = write_tiny_gguf(tmp_path / "bert.gguf", architecture="bert"), "architecture bert is not supported"
    elif case == "output not empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        expected = "not an empty directory"
    else:
        monkeypatch.setitem(sys.modules, "gguf", None)  # as if not installed
        expected = "needs the gguf package"
    assert main(["import-gguf", str(source), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("larpo: error: ") and expected in err, err
    if case == "output not empty":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()


def test_in_a_real_process_a_user_error_prints_no_traceback(tmp_path):
    proc = larpo_cli("import-gguf", str(tmp_path / "absent.gguf"), str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"larpo: error: {tmp_path / 'absent.gguf'}: no such file; expected a .gguf model file"]
