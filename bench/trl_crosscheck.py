"""Cross-check: larpo's pairwise loss equals TRL's DPO ("sigmoid") loss on the same model and pairs.

Run from the repository root (CPU, about 15 s on 2 cores):

    .venv/bin/python bench/trl_crosscheck.py

A tiny tokenizer and Llama-style model are built with ``larpo.models``; the reference is that
model, the policy is a copy with small seeded noise added to every parameter (so the loss is not
trivially log 2). Both are saved with ``save_policy`` and loaded back with ``load_policy``, and
each side loads its own copies (TRL patches ``forward`` in place). Our side: ``encode_prompt`` /
``encode_response`` → ``collate_pairs`` → ``sequence_logps`` for policy and reference,
γ = β·(log π − log π_ref), ``pairwise_loss`` on scores [B, 2]. TRL's side: ``DPOTrainer`` with
``loss_type="sigmoid"``, no training — its collator builds the batch, ``compute_loss`` gives the
loss (policy log-probs read from its ``logps/*`` metrics) and ``compute_ref_log_probs`` the
reference log-probs. Per pair (batches of one) and for the whole padded batch, the losses and all
log-probs must agree to 1e-5; the exit code is 1 if any difference exceeds that.

Then the same pairs go through both trainers from a TRL preference file (``{"prompt", "chosen",
"rejected"}`` JSON lines): larpo reads it with ``larpo.listdata.read_lists`` (lists of two) and
trains one step with ``larpo.train_lists.train_on_lists`` (``loss="pairwise"``, the reference model
passed as ``ref_model``, all pairs in one step); TRL loads it with ``datasets`` and trains one step
with ``DPOTrainer.train()``. The first step's loss — ``result.metrics[0]["loss"]`` against TRL's
logged ``loss`` — must agree to 1e-5 as well.

What TRL 1.16 does with plain-string pairs (``DPOTrainer._prepare_dataset`` and
``DataCollatorForPreference``): it appends ``tokenizer.eos_token`` *as text* to chosen and
rejected (unless already there), tokenises ``prompt`` and ``prompt + completion`` as whole strings
with ``add_special_tokens=True`` and takes the completion to start where the two token lists
diverge; it concatenates [chosen rows; rejected rows] into one batch, right-pads with the pad
token, masks the prompt and padding out of the labels and sums the completion-token log-probs
(through a patched "fused LM head" forward that never builds the full logits). Our tokenizer adds
no BOS and splits digits before byte-level BPE, so for these prompts (ending in "=") the ids are
identical to ours; the script asserts this before comparing numbers.
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

import datasets
import transformers
import trl
from trl import DPOConfig, DPOTrainer

from larpo.config import ModelConfig, TrainConfig
from larpo.encoding import encode_prompt, encode_response
from larpo.listdata import read_lists
from larpo.logprobs import collate_pairs, sequence_logps
from larpo.losses import pairwise_loss
from larpo.models import build_tiny_model, build_tokenizer, load_policy, save_policy
from larpo.train_lists import train_on_lists

BETA, TOL, NOISE_STD, SEED = 0.1, 1e-5, 0.2, 0
PAIRS = [("12+34=", "46", "47"), ("5+7=", "12", "21"), ("99+1=", "100", "10"), ("3+3=", "6", "60")]


def build_models(root: Path) -> tuple[Path, Path]:
    """Save a tiny reference model and a noisy copy of it (the policy); return (policy dir, ref dir)."""
    corpus = [f"{a}+{b}={a + b}" for a in range(100) for b in range(0, 100, 7)]
    tokenizer = build_tokenizer(corpus, vocab_size=96)
    cfg = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, max_position_embeddings=32)
    ref = build_tiny_model(cfg, tokenizer, seed=SEED)
    policy = build_tiny_model(cfg, tokenizer, seed=SEED)
    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * NOISE_STD)
    save_policy(policy, tokenizer, root / "policy")
    save_policy(ref, tokenizer, root / "ref")
    return root / "policy", root / "ref"


def write_pairs(path: Path) -> Path:
    """PAIRS as a TRL preference file: one {"prompt", "chosen", "rejected"} object per line."""
    path.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in PAIRS))
    return path


def larpo_first_step(policy_dir: Path, ref_dir: Path, pairs_file: Path) -> float:
    """The loss of the first step of ``train_on_lists`` on the pairs file, all pairs in one step."""
    lists, report = read_lists(pairs_file)
    assert report.format == "pairs" and report.lists == len(PAIRS), report.summary()
    policy, tok = load_policy(policy_dir)
    ref, _ = load_policy(ref_dir)
    cfg = TrainConfig(loss="pairwise", beta=BETA, lr=1e-4, epochs=1, batch_size=len(PAIRS),
                      micro_batch_size=len(PAIRS), warmup_ratio=0.0)
    return train_on_lists(policy, tok, lists, cfg, ref_model=ref).metrics[0]["loss"]


def trl_first_step(policy_dir: Path, ref_dir: Path, pairs_file: Path, out_dir: Path) -> float:
    """The logged loss of the first step of ``DPOTrainer.train()`` on the pairs file, all pairs in one step."""
    policy, tok = load_policy(policy_dir)
    ref, _ = load_policy(ref_dir)
    args = DPOConfig(output_dir=str(out_dir), beta=BETA, loss_type="sigmoid", bf16=False,
                     gradient_checkpointing=False, report_to=[], per_device_train_batch_size=len(PAIRS),
                     use_cpu=True, max_steps=1, learning_rate=1e-4, logging_strategy="steps", logging_steps=1,
                     save_strategy="no")
    data = datasets.Dataset.from_json(str(pairs_file))
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=data, processing_class=tok)
    trainer.remove_callback(transformers.ProgressCallback)  # it prints every logged row
    trainer.train()
    return next(row["loss"] for row in trainer.state.log_history if "loss" in row)


@torch.no_grad()
def larpo_side(policy_dir: Path, ref_dir: Path) -> dict[str, torch.Tensor]:
    policy, tok = load_policy(policy_dir)
    ref, _ = load_policy(ref_dir)
    policy.eval(), ref.eval()
    prompts = [encode_prompt(tok, p) for p, _, _ in PAIRS]
    chosen = [(x, encode_response(tok, c)) for x, (_, c, _) in zip(prompts, PAIRS)]
    rejected = [(x, encode_response(tok, r)) for x, (_, _, r) in zip(prompts, PAIRS)]
    batch = collate_pairs(chosen + rejected, tok.pad_token_id)  # [chosen rows; rejected rows], like TRL
    logp, ref_logp = sequence_logps(policy, batch), sequence_logps(ref, batch)
    scores = (BETA * (logp - ref_logp)).view(2, len(PAIRS)).T  # [B, 2]: chosen first
    n = len(PAIRS)
    return {"ids": [p + r for p, r in chosen + rejected], "loss": pairwise_loss(scores),
            "chosen": logp[:n], "rejected": logp[n:], "ref_chosen": ref_logp[:n], "ref_rejected": ref_logp[n:]}


def trl_side(policy_dir: Path, ref_dir: Path, out_dir: Path) -> tuple[dict[str, torch.Tensor], float]:
    policy, tok = load_policy(policy_dir)
    ref, _ = load_policy(ref_dir)
    args = DPOConfig(output_dir=str(out_dir), beta=BETA, loss_type="sigmoid", bf16=False,
                     gradient_checkpointing=False, report_to=[], per_device_train_batch_size=len(PAIRS),
                     use_cpu=True, logging_strategy="no", save_strategy="no")
    data = datasets.Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS])
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=data, processing_class=tok)
    trainer.model.eval(), trainer.ref_model.eval()  # loss mode "eval": metrics go to _metrics["eval"]
    rows: dict[str, list] = {k: [] for k in ("ids", "loss", "chosen", "rejected", "ref_chosen", "ref_rejected")}
    with torch.no_grad():
        for i in range(len(PAIRS)):  # one pair per batch: per-pair values from TRL's own loss path
            batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i]]))
            loss = trainer.compute_loss(trainer.model, batch)
            ref_c, ref_r = trainer.compute_ref_log_probs(trainer.ref_model, batch)
            metrics = trainer._metrics["eval"]
            rows["ids"] += [ids[m.bool()].tolist() for ids, m in zip(batch["input_ids"], batch["attention_mask"])]
            rows["loss"].append(loss.item())
            rows["chosen"].append(metrics["logps/chosen"][-1])
            rows["rejected"].append(metrics["logps/rejected"][-1])
            rows["ref_chosen"].append(ref_c.item())
            rows["ref_rejected"].append(ref_r.item())
        full = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))  # all pairs, padded
        batch_loss = trainer.compute_loss(trainer.model, full).item()
    n = len(PAIRS)  # reorder ids to [chosen rows; rejected rows] to match ours
    ids = [rows["ids"][2 * i] for i in range(n)] + [rows["ids"][2 * i + 1] for i in range(n)]
    out = {k: torch.tensor(v, dtype=torch.float64) for k, v in rows.items() if k != "ids"}
    return {**out, "ids": ids}, batch_loss


def main() -> int:
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    torch.manual_seed(SEED)
    with tempfile.TemporaryDirectory() as tmp:
        policy_dir, ref_dir = build_models(Path(tmp))
        ours = larpo_side(policy_dir, ref_dir)
        theirs, trl_batch_loss = trl_side(policy_dir, ref_dir, Path(tmp) / "trl_out")
        pairs_file = write_pairs(Path(tmp) / "pairs.jsonl")
        ours_step = larpo_first_step(policy_dir, ref_dir, pairs_file)
        trl_step = trl_first_step(policy_dir, ref_dir, pairs_file, Path(tmp) / "trl_train")
    if ours["ids"] != theirs["ids"]:
        print("token ids differ between larpo and TRL:", ours["ids"], theirs["ids"], sep="\n")
        return 1

    print(f"TRL {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}, "
          f"beta={BETA}, loss_type=sigmoid")
    head = f"{'pair':<18} {'side':<6} {'logp(ch)':>10} {'logp(rej)':>10} {'ref(ch)':>10} {'ref(rej)':>10} {'loss':>10}"
    print(head), print("-" * len(head))
    keys = ("chosen", "rejected", "ref_chosen", "ref_rejected", "loss")
    worst = 0.0
    for i, (p, c, r) in enumerate(PAIRS):
        label = f"{p}{c} > {r}"
        for side, vals in (("larpo", ours), ("TRL", theirs)):
            cells = " ".join(f"{vals[k][i].item():>10.6f}" for k in keys)
            print(f"{label if side == 'larpo' else '':<18} {side:<6} {cells}")
        diffs = [abs(ours[k][i].item() - theirs[k][i].item()) for k in keys]
        worst = max(worst, *diffs)
        print(f"{'':<18} {'|diff|':<6} " + " ".join(f"{d:>10.1e}" for d in diffs))
    ours_mean = ours["loss"].mean().item()
    batch_diff = abs(ours_mean - trl_batch_loss)
    worst = max(worst, batch_diff)
    print("-" * len(head))
    print(f"batch of {len(PAIRS)} pairs: larpo mean loss {ours_mean:.6f}  TRL loss {trl_batch_loss:.6f}  "
          f"|diff| {batch_diff:.1e}")
    step_diff = abs(ours_step - trl_step)
    worst = max(worst, step_diff)
    print(f"first training step on the TRL pairs file: train_on_lists {ours_step:.6f}  DPOTrainer.train {trl_step:.6f}  "
          f"|diff| {step_diff:.1e}")
    print(f"max |diff| = {worst:.2e} (tolerance {TOL:g}): {'OK' if worst <= TOL else 'FAIL'}")
    return 0 if worst <= TOL else 1


if __name__ == "__main__":
    sys.exit(main())
