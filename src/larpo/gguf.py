"""A GGUF file (llama.cpp's format) as a local Hugging Face policy directory: ``larpo import-gguf``.

transformers reads GGUF itself (the ``gguf`` package parses the file, and quantised tensors are
dequantised on load), so :func:`import_gguf` only adds what larpo needs around it:

- the weights are saved as plain safetensors (float32, or bfloat16), with config and tokenizer;
- EOS is the chat model's end-of-turn token. A GGUF records one ``eos_token_id``, which for some
  chat models is the end of the *document* (``<|endoftext|>``) rather than the end of an assistant
  turn (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``). larpo stops sampling at EOS and trains
  every response to end with it (:func:`larpo.encoding.encode_response`), so it must be the token
  the chat template writes after an assistant message: that token is found by rendering a probe
  conversation, and EOS is set to it when it differs;
- the saved directory is reloaded with :func:`larpo.models.load_policy` and must give exactly the
  GGUF-loaded model's logits and the same prompt token ids, or nothing is written;
- ``gguf_import.json`` in the directory records the source file, the architecture, the dtype and
  the EOS decision.

The directory is written under a temporary name beside ``out_dir`` and renamed into place only
after the check, so ``out_dir`` is either absent or a complete, verified policy. Model code from
the file is never run (``trust_remote_code`` is not used).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.utils.import_utils import GGUF_MIN_VERSION, is_gguf_available

from .config import ConfigError
from .encoding import encode_prompt
from .io import temp_dir, write_json_atomic
from .models import DTYPES, load_options, load_policy

MAGIC = b"GGUF"  # the first four bytes of every GGUF file
RECORD = "gguf_import.json"
PROBE_REPLY = "larpo probe reply"  # rendered as an assistant message to see what ends the turn
CHECK_PROMPT = "What is 47 + 38? Reply with only the number."  # the input of the logits check


@dataclass(frozen=True)
class ImportRecord:
    """What :func:`import_gguf` did; saved as ``gguf_import.json`` in the output directory."""

    source: str  # the GGUF file's name
    source_bytes: int
    model_type: str  # transformers' name of the architecture, e.g. "llama"
    dtype: str  # of the saved weights: "float32" or "bfloat16"
    parameters: int
    eos_token: str  # EOS of the saved tokenizer
    gguf_eos_token: str | None  # EOS the GGUF file declared
    end_of_turn: str | None  # what the chat template writes after an assistant message (None: no special token)
    chat_template: bool  # whether the tokenizer has a chat template
    transformers: str
    gguf: str

    def eos_summary(self) -> str:
        """One line on how EOS was decided."""
        if not self.chat_template:
            return f"EOS {self.eos_token!r}, as the file declares (no chat template)"
        if self.end_of_turn is None:
            return (f"EOS {self.eos_token!r}, as the file declares: the chat template ends assistant turns with "
                    "no special token, so check that the model stops by itself")
        if self.end_of_turn != self.gguf_eos_token:
            return (f"EOS {self.eos_token!r}: the chat template's end of turn, replacing the file's "
                    f"{self.gguf_eos_token!r}")
        return f"EOS {self.eos_token!r}: the file's, and the chat template's end of turn"


def _check_inputs(path: Path, out_dir: Path) -> None:
    """The cheap checks, before anything is loaded: each failure is a one-line ConfigError."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; expected a .gguf model file")
    with open(path, "rb") as f:
        magic = f.read(len(MAGIC))
    if magic != MAGIC:
        raise ConfigError(f"{path}: not a GGUF file (starts with {magic!r}, expected {MAGIC!r})")
    if out_dir.exists() and not (out_dir.is_dir() and not any(out_dir.iterdir())):
        raise ConfigError(f"{out_dir}: already exists and is not an empty directory; expected a new output directory")
    try:
        import gguf  # noqa: F401  (transformers reads GGUF through it)
    except ImportError:
        raise ConfigError(f"{path}: reading GGUF needs the gguf package: pip install 'larpo[gguf]'") from None
    if not is_gguf_available():
        raise ConfigError(f"{path}: gguf {version('gguf')} is installed; transformers needs gguf >= {GGUF_MIN_VERSION}")


def _dense() -> dict:
    """``from_pretrained`` arguments that make every GGUF weight a plain tensor.

    transformers ≥ 5.24 can keep quantised weights packed in their GGUF blocks (with the
    ``kernels`` package installed), which cannot be saved as safetensors; asking for
    ``GgufConfig(dequantize=True)`` unpacks them. Older versions always unpack, and have no GgufConfig.
    """
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Tokenizer and dequantised causal LM from the file, through transformers; unreadable files are ConfigErrors."""
    where = {"pretrained_model_name_or_path": str(path.parent), "gguf_file": path.name}
    try:
        config = AutoConfig.from_pretrained(**where, local_files_only=True)
    except (ValueError, KeyError, IndexError) as e:  # unknown architecture, or metadata it needs is missing
        raise ConfigError(f"{path}: transformers {version('transformers')} cannot read this GGUF ({e})") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(f"{path}: a {config.model_type!r} model, which is not a causal LM; expected a causal LM")
    try:
        tokenizer = AutoTokenizer.from_pretrained(**where, local_files_only=True)
    except (ValueError, KeyError) as e:  # a tokenizer type transformers cannot build from GGUF
        raise ConfigError(f"{path}: transformers cannot build its tokenizer ({e})") from None
    model = AutoModelForCausalLM.from_pretrained(**where, dtype=dtype, **_dense(), **load_options())
    model.eval()
    return model, tokenizer


def end_of_turn(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The special token the chat template writes right after an assistant message, or None.

    Renders a user turn and an assistant turn and tokenises what follows the assistant's text:
    ``<|im_end|>`` for ChatML, ``<|eot_id|>`` for Llama 3, ``<end_of_turn>`` for Gemma. None when
    the template has no such token there (or there is no chat template).
    """
    if tokenizer.chat_template is None:
        return None
    messages = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": PROBE_REPLY}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    tail = text[text.rindex(PROBE_REPLY) + len(PROBE_REPLY) :]
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    added = tokenizer.added_tokens_decoder
    if ids and ids[0] in added and added[ids[0]].special:
        return added[ids[0]].content
    return None


def _set_eos(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, token: str) -> None:
    """Make ``token`` the EOS of the tokenizer, the model config and the generation config."""
    tokenizer.eos_token = token
    model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id


def _verify(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """Reload ``directory`` with load_policy; its prompt ids, EOS, chat template and logits must equal the originals."""
    saved, saved_tokenizer = load_policy(directory)
    ids = encode_prompt(tokenizer, CHECK_PROMPT)
    problems = []
    if encode_prompt(saved_tokenizer, CHECK_PROMPT) != ids:
        problems.append("the saved tokenizer encodes the check prompt differently")
    if saved_tokenizer.eos_token != tokenizer.eos_token or saved_tokenizer.chat_template != tokenizer.chat_template:
        problems.append("the saved tokenizer has another EOS or chat template")
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits
        got = saved(torch.tensor([ids])).logits
    if not torch.equal(expected, got):
        problems.append(f"logits differ (max |difference| {(expected - got).abs().max().item():.3g})")
    if problems:
        raise RuntimeError(f"{directory}: the saved policy does not reproduce the GGUF-loaded model: {'; '.join(problems)}")


def import_gguf(path: str | Path, out_dir: str | Path, dtype: str = "float32") -> ImportRecord:
    """Convert the GGUF file ``path`` into a policy directory ``out_dir`` (which must not exist, or be empty).

    ``dtype`` ("float32" or "bfloat16") is the dtype of the saved weights; the logits check runs
    in it. Returns the record also saved as ``out_dir/gguf_import.json``.
    """
    path, out_dir = Path(path), Path(out_dir)
    _check_inputs(path, out_dir)
    model, tokenizer = _load_gguf(path, DTYPES[dtype])
    gguf_eos = tokenizer.eos_token
    eot = end_of_turn(tokenizer)
    if eot is not None and eot != gguf_eos:
        _set_eos(model, tokenizer, eot)
    # Every weight is now a plain tensor, but transformers still marks the model as GGUF-"quantised"
    # and refuses to save it until the marks are removed (FIELD-NOTES).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    record = ImportRecord(
        source=path.name, source_bytes=path.stat().st_size, model_type=model.config.model_type, dtype=dtype,
        parameters=sum(p.numel() for p in model.parameters()), eos_token=tokenizer.eos_token, gguf_eos_token=gguf_eos,
        end_of_turn=eot, chat_template=tokenizer.chat_template is not None,
        transformers=version("transformers"), gguf=version("gguf"),
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = temp_dir(out_dir)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _verify(model, tokenizer, staging)
        write_json_atomic(staging / RECORD, asdict(record))
        os.replace(staging, out_dir)  # an empty out_dir is replaced; a non-empty one was refused above
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record
