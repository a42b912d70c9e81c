"""Table 1's TRL side: TRL ``DPOTrainer`` timed on the same pairs, model and batch as larpo.

Used by ``train_throughput.py``'s workers (one configuration per process, so its peak RSS is its own).
"""

from __future__ import annotations

import gc

import torch

import common
from larpo.encoding import encode_prompt, encode_response


def timing(tok, model_shape: common.Shape, rows: list[dict], grad_ckpt: bool | None, precompute: bool, *, beta: float,
           lr: float, batch: int, repeats: int, seed: int, warmup_pairs: int, out_dir: str) -> dict:
    """A warm-up step on ``warmup_pairs`` pairs, then ``repeats`` × ``trainer.train()`` on ``rows`` (its
    reference precompute included when ``precompute``), each on a fresh model; medians in seconds.
    ``grad_ckpt`` None keeps TRL's default (checkpointing on). TRL tokenises in its constructor, outside
    the timer; ``ids_match`` says whether it got the same ids as larpo's encoding."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    class TimedDPOTrainer(DPOTrainer):
        precompute_s = 0.0

        def _precompute_ref_logps(self, *args, **kwargs):
            with common.Timer() as t:
                out = super()._precompute_ref_logps(*args, **kwargs)
            self.precompute_s += t.s
            return out

    data = [{"prompt": r["prompt"], "chosen": r["responses"][0], "rejected": r["responses"][1]} for r in rows]
    cuda = torch.cuda.is_available()

    def trainer(subset: list[dict], max_steps: int = -1) -> TimedDPOTrainer:
        extra = {} if grad_ckpt is None else {"gradient_checkpointing": grad_ckpt}  # None: as shipped (True)
        args = DPOConfig(output_dir=out_dir, beta=beta, loss_type="sigmoid", learning_rate=lr,
                         per_device_train_batch_size=batch, num_train_epochs=1, max_steps=max_steps,
                         bf16=cuda, use_cpu=not cuda, precompute_ref_log_probs=precompute, report_to=[],
                         logging_strategy="no", save_strategy="no", disable_tqdm=True, seed=seed, **extra)
        policy = common.build_model(tok, model_shape, seed)
        ref = None if precompute else common.build_model(tok, model_shape, seed)  # precompute: TRL needs none
        return TimedDPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(subset),
                               processing_class=tok)

    def same_ids(ds) -> bool:  # TRL appends EOS as text and infers the boundary: same ids as larpo's encoding?
        return all(ds[i]["prompt_ids"] == encode_prompt(tok, r["prompt"])
                   and ds[i]["chosen_ids"] == encode_response(tok, r["chosen"])
                   and ds[i]["rejected_ids"] == encode_response(tok, r["rejected"]) for i, r in enumerate(data))

    trainer(data[:warmup_pairs], max_steps=1).train()  # warm-up step
    gc.collect()
    train_s, phase_s, ref_s, ids_match = [], [], [], None
    for _ in range(repeats):
        t = trainer(data)
        ids_match = same_ids(t.train_dataset) if ids_match is None else ids_match
        with common.Timer() as t_train:
            t.train()
        train_s.append(t_train.s), ref_s.append(t.precompute_s), phase_s.append(t_train.s + t.precompute_s)
        ds, steps = t.train_dataset, t.state.global_step
        del t
        gc.collect()  # one trainer alive at a time, so peak RSS is one configuration's
    return {"ref_s": common.median(ref_s) if precompute else None, "train_s": common.median(train_s),
            "phase_s": common.median(phase_s), "steps": steps, "ids_match": ids_match,
            "example_ids": ds[0]["prompt_ids"][-3:] + ["|"] + ds[0]["chosen_ids"][:3] + ["...", ds[0]["chosen_ids"][-1]]}
