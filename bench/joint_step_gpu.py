"""Benchmark: throughput of the JMLR joint step for a 7B-shaped Llama on one GPU.

The LLM is a Llama-2-7B-shaped model (hidden 4096, 32 layers, 32 heads, MLP 11008) built from its config
with random weights in bf16 directly on the device (no download), with LoRA (r=16 on q/k/v/o) and
``attn_implementation="s2_attn"``; the retriever is the embedded MiniLM ColBERT
(:func:`jmlr_hf.models.load_default_retriever`), the corpus and questions the synthetic demo task. The paper's
settings: 30 candidates, 10 scored (utility forward), 7 passages in the LM prompt. Each measured step is a
whole ``JMLRTrainer`` optimizer step (retrieval, fresh scores, utility forward, rank + LM loss, backward of
both models, AdamW).

Printed (JSON): GPU name, seconds per step, ``lm_tokens_per_s`` (tokens of the 7-passage LM prompts that
get a gradient), ``llm_tokens_per_s`` (those plus the tokens of the 10 utility prompts per question),
peak GPU memory.

    python bench/joint_step_gpu.py                       # on a CUDA machine (bench/gpu_check.sh runs it)
    python bench/joint_step_gpu.py --layers 8 --steps 5  # fewer layers: a quick look
    python bench/joint_step_gpu.py --tiny --steps 2      # CPU smoke run with a tiny shape

The tokenizer is SmolLM2's (offline), so the vocabulary is its 49,152 tokens instead of Llama-2's 32,000
(about 0.14B more embedding + head parameters, no effect on the per-layer cost); the JSON says which.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, TrainerCallback

import jmlr_hf
from jmlr_hf import DocumentIndex, JMLRTrainer, JMLRTrainingArguments
from jmlr_hf.data import make_demo_task
from jmlr_hf.models import default_llm_path, load_default_retriever

SHAPE_7B = dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008)
SHAPE_TINY = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)


class StepTimer(TrainerCallback):
    """Wall time and LLM tokens of every optimizer step (the GPU is synchronised at both ends)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.steps: list[dict[str, float]] = []
        self.lm_tokens = 0
        self.utility_tokens = 0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self.lm_tokens = self.utility_tokens = 0
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        seconds = time.perf_counter() - self._start
        self.steps.append(
            {"seconds": seconds, "lm_tokens": self.lm_tokens, "utility_tokens": self.utility_tokens}
        )


def count_tokens(trainer: JMLRTrainer, timer: StepTimer) -> None:
    """Count the tokens of every LLM batch the joint step builds (LM prompts and utility prompts)."""
    build = trainer.prompts.batch

    def counting(prompts, targets, padding_side="right"):
        batch = build(prompts, targets, padding_side)
        tokens = int(batch["attention_mask"].sum())
        if padding_side == "left":  # the utility forward pads left
            timer.utility_tokens += tokens
        else:
            timer.lm_tokens += tokens
        return batch

    trainer.prompts.batch = counting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default: 32, tiny: 2)")
    parser.add_argument("--steps", type=int, default=10, help="measured optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps first")
    parser.add_argument("--batch-size", type=int, default=1, help="questions per step")
    parser.add_argument(
        "--facts", type=int, default=None, help="demo facts (corpus passages; default 200, tiny 40)"
    )
    parser.add_argument("--max-context-tokens", type=int, default=1024)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="a tiny Llama (hidden 64): smoke runs on the CPU")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    args = parser.parse_args()
    from peft import LoraConfig

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif not args.tiny:
        parser.error("the 7B shape needs a CUDA GPU; use --tiny for a CPU smoke run")
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float32
    torch.manual_seed(0)

    tokenizer = AutoTokenizer.from_pretrained(default_llm_path())
    shape = SHAPE_TINY if args.tiny else SHAPE_7B
    layers = args.layers or (2 if args.tiny else 32)
    config = LlamaConfig(
        **shape,
        num_hidden_layers=layers,
        vocab_size=max(32000, len(tokenizer)),
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    t0 = time.perf_counter()
    with torch.device(device):  # random weights straight on the device, in bf16
        llm = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="s2_attn")
    build_seconds = time.perf_counter() - t0
    if args.gradient_checkpointing:
        llm.gradient_checkpointing_enable()
        llm.enable_input_require_grads()

    task = make_demo_task(num_facts=args.facts or (40 if args.tiny else 200), seed=0)
    retriever = load_default_retriever().to(device)
    index = DocumentIndex.build(task.corpus, retriever, backend="exact")
    timer = StepTimer(device)
    with tempfile.TemporaryDirectory() as output_dir:
        targs = JMLRTrainingArguments(
            output_dir=output_dir,
            per_device_train_batch_size=args.batch_size,
            num_candidate_docs=30,
            num_scored_docs=10,
            num_context_docs=7,
            max_context_tokens=args.max_context_tokens,
            learning_rate=1e-4,
            retriever_learning_rate=1e-5,
            max_steps=args.warmup + args.steps,
            bf16=bf16,
            use_cpu=device.type == "cpu",
            logging_steps=10**9,
            save_strategy="no",
            report_to="none",
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = JMLRTrainer(
            model=llm,
            retriever=retriever,
            index=index,
            args=targs,
            train_dataset=task.train,
            processing_class=tokenizer,
            peft_config=LoraConfig(
                r=args.lora_r,
                lora_alpha=2 * args.lora_r,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                task_type="CAUSAL_LM",
            ),
            callbacks=[timer],
        )
        count_tokens(trainer, timer)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        trainer.train()

    measured = timer.steps[args.warmup :]
    seconds = sum(s["seconds"] for s in measured)
    lm_tokens = sum(s["lm_tokens"] for s in measured)
    utility_tokens = sum(s["utility_tokens"] for s in measured)
    from jmlr_hf.attention.s2_attn import _flash_varlen_func

    result = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "jmlr_hf": jmlr_hf.__version__,
        "shape": {
            "name": "tiny" if args.tiny else "llama-2-7b",
            "layers": layers,
            **shape,
            "vocab_size": config.vocab_size,
            "dtype": str(dtype).removeprefix("torch."),
        },
        "llm_parameters": sum(p.numel() for p in trainer.model.parameters()),
        "llm_trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "retriever_parameters": sum(p.numel() for p in retriever.parameters()),
        "attn_implementation": "s2_attn",
        "flash_attn_varlen": device.type == "cuda" and _flash_varlen_func() is not None,
        "gradient_checkpointing": args.gradient_checkpointing,
        "batch_size": args.batch_size,
        "candidates_scored_context": [30, 10, 7],
        "measured_steps": len(measured),
        "seconds_per_step_median": statistics.median(s["seconds"] for s in measured) if measured else None,
        "lm_tokens_per_step": lm_tokens / max(len(measured), 1),
        "utility_tokens_per_step": utility_tokens / max(len(measured), 1),
        "lm_tokens_per_s": lm_tokens / seconds if seconds else None,
        "llm_tokens_per_s": (lm_tokens + utility_tokens) / seconds if seconds else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "model_build_seconds": build_seconds,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
