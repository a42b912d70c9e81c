"""Score pairs with a saved reward model through ``retrieve.score_sharded``; run under torchrun or plain.

usage: python score_worker.py REWARD_MODEL_DIR OUT_JSON
The main process writes the scores every process received, so the test can compare them.
"""

import json
import sys

from accelerate import Accelerator
from accelerate.utils import gather_object

from larpo.config import RerankerConfig
from larpo.parallel import end_processes
from larpo.rerankers import build_reranker
from larpo.retrieve import score_sharded

PROMPTS = [f"{a}+{b}=" for a in range(7) for b in (3, 41)]
RESPONSES = [str(i * 7 % 23) for i in range(len(PROMPTS))]


def main(path: str, out: str) -> None:
    accelerator = Accelerator(cpu=True)
    reranker = build_reranker(RerankerConfig(kind="hf", path=path, batch_size=2), None, accelerator.device)
    scores = score_sharded(reranker, PROMPTS, RESPONSES, accelerator, chunk_size=3)  # 14 pairs: 5 chunks
    every = gather_object([scores]) if accelerator.num_processes > 1 else [scores]
    if accelerator.is_main_process:
        with open(out, "w") as f:
            json.dump({"processes": accelerator.num_processes, "scores": every}, f)
    end_processes()


if __name__ == "__main__":
    main(*sys.argv[1:])
