"""Benchmark: time per optimizer step of the JMLR joint step against plain SFT steps on the same prompts.

Embedded SmolLM2-135M-Instruct + MiniLM ColBERT retriever, demo corpus, batch 1, the paper's
30 candidates / 10 scored / 7 in context. Measured in one run, alternating so that machine noise
hits every variant:

- ``sft``: forward + backward + AdamW on the 7-passage prompt (what a plain ``Trainer`` step does);
- ``trl_sft``: TRL ``SFTTrainer`` steps on the same prompt/completion (per-step time from its run);
- ``joint``: ``JMLRTrainer.compute_loss`` + backward + AdamW over both models;
- utility of 10 documents: a Python loop of full forwards vs ``answer_nll`` (one batched forward
  with ``logits_to_keep``, fp32 and bf16 autocast).

Usage: ``python bench/train_step.py [--repeats 3] [--out bench_train_step.json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time

import torch

from jmlr_hf import DocumentIndex, JMLRTrainer, JMLRTrainingArguments
from jmlr_hf.data import format_target, make_demo_task, validate_qa_row
from jmlr_hf.models import load_default_llm, load_default_retriever
from jmlr_hf.scoring import answer_nll, lm_loss


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="write the raw numbers as JSON")
    args = parser.parse_args()
    torch.manual_seed(0)

    task = make_demo_task(num_facts=200, seed=0)
    llm, tokenizer = load_default_llm()
    retriever = load_default_retriever()
    index = DocumentIndex.build(task.corpus, retriever, backend="exact")
    targs = JMLRTrainingArguments(
        output_dir="/tmp/jmlr-bench-train-step",
        per_device_train_batch_size=1,
        num_candidate_docs=30,
        num_scored_docs=10,
        num_context_docs=7,
        max_context_tokens=1024,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
    )
    trainer = JMLRTrainer(
        model=llm,
        retriever=retriever,
        index=index,
        args=targs,
        train_dataset=task.train,
        processing_class=tokenizer,
    )
    optimizer = trainer.create_optimizer()
    llm_only = torch.optim.AdamW([p for p in llm.parameters() if p.requires_grad], lr=1e-5)
    row = validate_qa_row(task.train[0])
    llm.train()

    # the same 7-passage prompt for SFT as the joint step builds
    out = trainer.joint_step(llm, [row])
    passages = [trainer.index.passage(int(i)) for i in out.context_ids[0]]
    sft_batch = trainer.prompts.batch([trainer.prompts.prompt(row, passages)], [format_target(row)])
    prompt_tokens = int(sft_batch["attention_mask"].sum())
    scored = [trainer.index.passage(int(i)) for i in out.scored_ids[0]]
    util_batch = trainer.prompts.batch(
        [trainer.prompts.prompt(row, [p]) for p in scored], [format_target(row)] * len(scored), "left"
    )

    def sft_step() -> None:
        loss = lm_loss(llm, sft_batch)
        loss.backward()
        llm_only.step()
        llm_only.zero_grad(set_to_none=True)

    def joint_step() -> None:
        loss = trainer.compute_loss(llm, {"rows": [row]})
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        retriever.zero_grad(set_to_none=True)

    def utility_loop() -> None:
        with torch.no_grad():
            for i in range(len(scored)):
                single = {k: v[i : i + 1] for k, v in util_batch.items()}
                mask = single["attention_mask"].bool()[0]
                llm(input_ids=single["input_ids"][:, mask], attention_mask=single["attention_mask"][:, mask])

    def utility_batched() -> None:
        answer_nll(llm, util_batch)

    def utility_batched_bf16() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            answer_nll(llm, util_batch)

    variants = {
        "sft": sft_step,
        "joint": joint_step,
        "utility_loop": utility_loop,
        "utility_batched": utility_batched,
        "utility_batched_bf16": utility_batched_bf16,
    }
    for fn in variants.values():  # warm-up
        fn()
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):  # alternate so that noise hits every variant
        for name, fn in variants.items():
            results[name] += timed(fn, 1)

    trl_step = None
    try:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        prompt_text = trainer.prompts.prompt(row, passages)
        data = Dataset.from_list(
            [{"prompt": prompt_text, "completion": format_target(row) + tokenizer.eos_token}] * 8
        )
        steps = args.repeats + 1
        sft = SFTTrainer(
            model=llm,
            args=SFTConfig(
                output_dir="/tmp/jmlr-bench-trl",
                max_steps=steps,
                per_device_train_batch_size=1,
                report_to="none",
                use_cpu=True,
                save_strategy="no",
                logging_steps=1,
                max_length=4096,
            ),
            train_dataset=data,
            processing_class=tokenizer,
        )
        stamps = []

        from transformers import TrainerCallback

        class Stamp(TrainerCallback):
            def on_step_end(self, *a, **k):
                stamps.append(time.perf_counter())

        sft.add_callback(Stamp())
        sft.train()
        trl_step = statistics.median(b - a for a, b in zip(stamps, stamps[1:]))
    except Exception as err:  # noqa: BLE001 - report, do not hide
        print(f"TRL SFTTrainer step not measured: {err!r}")

    med = {name: statistics.median(ts) for name, ts in results.items()}
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"SFT prompt: {prompt_tokens} tokens; utility batch: {tuple(util_batch['input_ids'].shape)}")
    print("| measurement | median s | ratio |")
    print("|---|---|---|")
    print(f"| plain SFT step (fwd+bwd+AdamW) | {med['sft']:.2f} | 1.00 |")
    if trl_step is not None:
        print(f"| TRL SFTTrainer step | {trl_step:.2f} | {trl_step / med['sft']:.2f} |")
    print(f"| JMLR joint step (30/10/7) | {med['joint']:.2f} | {med['joint'] / med['sft']:.2f} |")
    if trl_step is not None:
        print(f"| joint / TRL step | | {med['joint'] / trl_step:.2f} |")
    print(f"| utility, loop of 10 forwards | {med['utility_loop']:.2f} | |")
    print(f"| utility, one batched forward (logits_to_keep) | {med['utility_batched']:.2f} | |")
    print(f"| utility, batched + bf16 autocast | {med['utility_batched_bf16']:.2f} | |")
    print(f"| peak RSS | {peak_rss_mb:.0f} MB | |")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(
                {"median_s": med, "trl_step_s": trl_step, "raw": results, "peak_rss_mb": peak_rss_mb},
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
