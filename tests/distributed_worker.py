"""One process of the multi-process test (tests/test_distributed.py), started by ``accelerate launch``.

Each process builds its OWN tiny retriever and LLM from a rank-dependent seed (so the trainer has to
broadcast rank 0's weights), trains a few joint steps with index refreshes and checkpoints, then resumes
a fresh trainer from the first checkpoint. It writes ``rank{R}.safetensors`` (retriever right after the
trainer was built, final LLM / retriever / index vectors of both runs) and ``rank{R}.json`` (losses) to
the output folder for the test to compare across ranks.

    accelerate launch --config_file examples/accelerate/cpu.yaml tests/distributed_worker.py OUT
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jmlr_hf import JMLRTrainer  # noqa: E402
from jmlr_hf.data import make_demo_task  # noqa: E402
from jmlr_hf.trainer import distributed  # noqa: E402
from testing_utils import default_tokenizers, make_tiny_llm, make_tiny_retriever, make_trainer  # noqa: E402

MAX_STEPS = 4
# Settings shared by the worker and the single-process reference of the test (beyond TRAINER_DEFAULTS).
COMMON = dict(
    max_context_tokens=128,
    max_steps=MAX_STEPS,
    index_refresh_steps=2,
    candidate_sampling="top",  # no sampling: the single-process reference sees the same candidates
    utility_precision="fp32",
    seed=0,
)


class GradRecorder(TrainerCallback):
    """Keeps the gradients of the first optimizer step (LLM after DDP's averaging, retriever after
    JMLRTrainer's), before the retriever is clipped (callbacks given to the trainer run first)."""

    def __init__(self) -> None:
        self.trainer: JMLRTrainer | None = None
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if state.global_step == 0:
            llm = self.trainer.accelerator.unwrap_model(self.trainer.model)
            for prefix, module in (("llm", llm), ("retriever", self.trainer.retriever)):
                for n, p in module.named_parameters():
                    if p.grad is not None:
                        self.grads[f"grad.{prefix}.{n}"] = p.grad.detach().cpu().clone()


def build_trainer(
    output_dir: str | os.PathLike, model_seed: int, callbacks: list | None = None, **overrides
) -> JMLRTrainer:
    """A JMLRTrainer on the demo task with a tiny random LLM and retriever built from ``model_seed``
    (dropout off, so that several processes and one process with gradient accumulation agree)."""
    llm_tokenizer, bert_tokenizer = default_tokenizers()
    retriever = make_tiny_retriever(bert_tokenizer, seed=model_seed)
    for module in retriever.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    trainer = make_trainer(
        output_dir,
        llm_tokenizer,
        bert_tokenizer,
        make_demo_task(num_facts=24, seed=0),
        llm=make_tiny_llm(llm_tokenizer, model_seed, max_position_embeddings=1024),
        retriever=retriever,
        callbacks=callbacks,
        **{**COMMON, "output_dir": str(output_dir), **overrides},
    )
    trainer.index.batch_size = 4  # several encoding batches for the sharded refresh to split
    return trainer


def snapshot(trainer: JMLRTrainer, prefix: str) -> dict[str, torch.Tensor]:
    """LLM, retriever and index vectors of ``trainer`` as flat tensors named ``prefix.{llm,retriever,index}...``."""
    llm = trainer.accelerator.unwrap_model(trainer.model)
    out = {f"{prefix}.llm.{n}": p.detach().cpu().clone() for n, p in llm.named_parameters()}
    out.update(
        {
            f"{prefix}.retriever.{n}": t.detach().cpu().clone()
            for n, t in trainer.retriever.state_dict().items()
        }
    )
    out[f"{prefix}.index.vectors"] = trainer.index.store.vectors.float().clone()
    return out


def losses(trainer: JMLRTrainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    cli = parser.parse_args()
    rank = int(os.environ.get("RANK", "0"))
    distributed._BUCKET_BYTES = 64 * 1024  # many small all-reduce buckets instead of one
    run_dir = cli.out / "run"

    # Straight run, checkpoints at steps 2 and 4; each rank starts from different random weights.
    recorder = GradRecorder()
    trainer = build_trainer(
        run_dir, model_seed=100 + rank, callbacks=[recorder], save_strategy="steps", save_steps=2
    )
    recorder.trainer = trainer
    tensors = snapshot(trainer, "init")  # the LLM is still this rank's own: DDP broadcasts it in train()
    trainer.train()
    tensors.update(snapshot(trainer, "final"))
    tensors.update(recorder.grads)
    record = {
        "world_size": trainer.accelerator.num_processes,
        "losses": losses(trainer),
        "retriever_in_optimizer": sorted(
            {
                id(p)
                for g in trainer.optimizer.param_groups
                if g.get("name") == "retriever"
                for p in g["params"]
            }
        )
        == sorted(id(p) for p in trainer.retriever.parameters() if p.requires_grad),
        "last_refresh_step": trainer._last_refresh_step,
        "refresh_stats": trainer.index.last_encode_stats,  # the refresh: this rank's share of the encoding
        "index_folder": str(trainer.index.folder),
        "num_passages": len(trainer.index),
    }
    trainer.accelerator.wait_for_everyone()  # checkpoint-2 is written by rank 0

    # A new trainer (other random weights again) resumed from checkpoint-2 must end where the straight run did.
    resumed = build_trainer(run_dir, model_seed=200 + rank, save_strategy="no")
    resumed.train(resume_from_checkpoint=str(run_dir / "checkpoint-2"))
    tensors.update(snapshot(resumed, "resumed"))
    record["resumed_losses"] = losses(resumed)

    save_file(tensors, str(cli.out / f"rank{rank}.safetensors"))
    (cli.out / f"rank{rank}.json").write_text(json.dumps(record), encoding="utf-8")
    resumed.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
