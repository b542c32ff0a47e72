"""A JMLR run under DeepSpeed (ZeRO stage 0, DeepSpeed's CPU accelerator, one process), interrupted and
resumed; started by tests/test_checkpoints.py in its own process (DeepSpeed sets up torch.distributed).

Writes ``OUT/result.json`` (losses of the straight and the resumed run) and ``OUT/result.safetensors``
(their final retriever and LLM weights) for the test to compare.

    python tests/deepspeed_worker.py OUT
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_checkpoints import StopAt, build_trainer, losses, weights  # noqa: E402

DEEPSPEED = {
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "zero_optimization": {"stage": 0},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    out = parser.parse_args().out
    for key, value in {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(key, value)
    ds = dict(deepspeed=DEEPSPEED, use_cpu=False)
    straight = build_trainer(out / "straight", **ds)
    assert straight.is_deepspeed_enabled and straight.separate_retriever_optimizer
    straight.train()
    first = build_trainer(out / "run", save_strategy="steps", save_steps=1, **ds)
    first.add_callback(StopAt(3))
    first.train()
    resumed = build_trainer(out / "run", **ds)
    resumed.train(resume_from_checkpoint=str(out / "run" / "checkpoint-3"))
    result = {"straight": losses(straight), "resumed": losses(resumed)}
    (out / "result.json").write_text(json.dumps(result))
    save_file(
        {**weights(straight, "straight"), **weights(resumed, "resumed")}, str(out / "result.safetensors")
    )


if __name__ == "__main__":
    main()
