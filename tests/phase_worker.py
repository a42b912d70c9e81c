"""Run one training phase from a saved policy; used by the two-process test (torchrun or plain).

usage: python phase_worker.py POLICY_DIR OUT_JSON
Writes, from the main process, the step losses and a checksum of every parameter.
"""

import json
import sys

import torch

from larpo.config import TrainConfig
from larpo.lists import RankedList
from larpo.models import load_policy
from larpo.parallel import end_processes
from larpo.trainer import make_accelerator, train_phase


def fixed_lists(n: int = 10) -> list[RankedList]:
    """Ragged arithmetic lists (2-4 items), the correct answer first, rewards strictly decreasing."""
    lists = []
    for i in range(n):
        a, b = 11 * i + 3, 7 * i + 20
        m = 2 + i % 3
        responses = tuple(str(a + b + k * (i + 1)) for k in range(m))
        lists.append(RankedList(f"p{i}", f"{a}+{b}=", responses, tuple(1.0 - k / m for k in range(m)), ("own",) * m))
    return lists


def main(policy_dir: str, out: str) -> None:
    cfg = TrainConfig(loss="listmle", lr=3e-3, epochs=2, batch_size=4, micro_batch_size=1, ref_batch_size=5, warmup_ratio=0.0)
    accelerator = make_accelerator(cfg)
    model, tokenizer = load_policy(policy_dir)
    result = train_phase(model, tokenizer, fixed_lists(), cfg, accelerator, seed=3, progress=False)
    if accelerator.is_main_process:
        params = {name: p.detach().double().sum().item() for name, p in model.named_parameters()}
        with open(out, "w") as f:
            json.dump({"world": accelerator.num_processes, "losses": result.losses, "params": params}, f)
    end_processes()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:])
