"""The end-to-end demo behind ``jmlr demo`` / ``make demo``: JMLR on the synthetic demo task.

On the embedded defaults (SmolLM2-135M-Instruct + a ColBERT head on all-MiniLM-L6-v2), offline:

1. generate the demo task (fictional guidelines with hard related passages; not medical advice);
2. build the index with the untrained retriever and measure the baselines on the held-out questions:
   closed-book and RAG with the frozen retriever (base LLM);
3. train LLM and retriever together with :class:`~jmlr_hf.JMLRTrainer` (index refreshed during training),
   recording ``lm_loss``, ``rank_loss`` and the held-out recall after every refresh;
4. measure JMLR: the trained LLM with the frozen retriever's passages (the LLM's share of the gain) and
   with the trained retriever's passages (the full system);
5. write ``results.json``, ``results.md``, ``training_curves.png`` and the checkpoints to the output
   folder: ``model/`` (the LLM), ``model/retriever/``, ``model/index/`` (re-encoded with the trained
   retriever) and ``model/jmlr_inference.json`` (prompt settings), the layout ``jmlr train`` writes, so
   ``jmlr ask --model <output>/model`` and ``jmlr eval --model <output>/model`` use all of it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import TrainerCallback

from .data import make_demo_task
from .evaluation import evaluate_mcq, recall_at_k, results_to_markdown, retrieve_passages, save_results

logger = logging.getLogger(__name__)

__all__ = ["DemoConfig", "plot_training_curves", "run_demo"]


@dataclass
class DemoConfig:
    """Settings of :func:`run_demo` (the defaults fit ``make demo``'s 15-minute budget on 2 CPU cores)."""

    output_dir: str = "jmlr-demo"
    seed: int = 0
    num_facts: int = 160
    questions_per_fact: int = 2
    related_docs_per_fact: int = 3
    max_eval_questions: int = 48
    max_steps: int = 100
    per_device_train_batch_size: int = 1
    learning_rate: float = 1e-4
    retriever_learning_rate: float = 1e-4
    num_candidate_docs: int = 8
    num_scored_docs: int = 4
    num_context_docs: int = 2
    max_context_tokens: int = 320
    index_refresh_steps: int = 25
    recall_ks: tuple[int, ...] = (1, 2, 4)
    bf16: bool | None = None  # None: bf16 autocast where the CPU/GPU has fast bf16

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.num_context_docs not in self.recall_ks:
            self.recall_ks = tuple(sorted({*self.recall_ks, self.num_context_docs}))


class _RecallAfterRefresh(TrainerCallback):
    """Records held-out recall whenever the trainer has refreshed the index (and at the end)."""

    def __init__(self, index: Any, test: Any, ks: tuple[int, ...]) -> None:
        self.index, self.test, self.ks = index, test, ks
        self.fingerprint = index.fingerprint
        self.history: list[dict[str, float]] = []

    def record(self, step: int) -> None:
        self.history.append({"step": step, **recall_at_k(self.index, self.test, ks=self.ks)})
        self.fingerprint = self.index.fingerprint

    def on_step_end(self, args, state, control, **kwargs):
        if self.index.fingerprint != self.fingerprint:
            self.record(state.global_step)


def plot_training_curves(
    log_history: list[dict[str, Any]], recall_history: list[dict[str, float]], path: str, recall_key: str
) -> None:
    """PNG of ``lm_loss``, ``rank_loss`` and held-out ``recall_key`` against the training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key in zip(axes[:2], ("lm_loss", "rank_loss")):
        points = [(e["step"], e[key]) for e in log_history if key in e]
        if points:
            ax.plot(*zip(*points), marker=".")
        ax.set_title(key)
        ax.set_xlabel("step")
    for key in dict.fromkeys(("recall@1", recall_key)):  # both, once each
        points = [(e["step"], e[key]) for e in recall_history if key in e]
        if points:
            axes[2].plot(*zip(*points), marker="o", label=key)
    axes[2].legend(loc="lower right")
    axes[2].set_title("held-out retrieval recall")
    axes[2].set_xlabel("step")
    axes[2].set_ylim(0, 1.02)
    fig.suptitle("JMLR on the synthetic demo task (SmolLM2-135M + MiniLM ColBERT)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mcq(model, tokenizer, test, passages, config: DemoConfig) -> dict[str, float]:
    """Accuracy by option log-likelihood (the demo's headline) and by answer-letter log-likelihood."""
    return {
        f"accuracy ({name})": evaluate_mcq(
            model,
            tokenizer,
            test,
            passages=passages,
            max_context_tokens=config.max_context_tokens,
            method=method,
            show_progress_bar=False,
        ).accuracy
        for name, method in (("option", "option"), ("letter", "loglik"))
    }


def run_demo(config: DemoConfig | None = None) -> dict[str, Any]:
    """Run the demo (see the module docstring) and return the results written to ``results.json``."""
    from . import DocumentIndex, JMLRTrainer, JMLRTrainingArguments
    from .models import load_default_llm, load_default_retriever
    from .retriever.modeling_jmlr_retriever import bf16_supported

    config = config or DemoConfig()
    start = time.perf_counter()
    os.makedirs(config.output_dir, exist_ok=True)
    torch.manual_seed(config.seed)
    task = make_demo_task(
        num_facts=config.num_facts,
        seed=config.seed,
        questions_per_fact=config.questions_per_fact,
        related_docs_per_fact=config.related_docs_per_fact,
    )
    test = task.test.select(range(min(len(task.test), config.max_eval_questions)))
    llm, tokenizer = load_default_llm()
    retriever = load_default_retriever()
    k = config.num_context_docs
    recall_key = f"recall@{k}"

    # Baselines: the base LLM closed-book and with the untrained (frozen) retriever
    logger.info("Building the index and measuring the baselines")
    index = DocumentIndex.build(task.corpus, retriever, backend="exact")
    frozen_recall = recall_at_k(index, test, ks=config.recall_ks)
    frozen_passages = retrieve_passages(index, test, k=k)
    results: dict[str, dict[str, Any]] = {
        "closed-book (base LLM)": _mcq(llm, tokenizer, test, None, config),
        "RAG, frozen retriever (base LLM)": {
            **_mcq(llm, tokenizer, test, frozen_passages, config),
            **frozen_recall,
        },
    }
    logger.info("Baselines: %s", results)

    # Joint training
    bf16 = bf16_supported(torch.device("cpu")) if config.bf16 is None else config.bf16
    args = JMLRTrainingArguments(
        output_dir=os.path.join(config.output_dir, "trainer"),
        per_device_train_batch_size=config.per_device_train_batch_size,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        retriever_learning_rate=config.retriever_learning_rate,
        warmup_steps=max(1, config.max_steps // 10),
        lr_scheduler_type="linear",
        num_candidate_docs=config.num_candidate_docs,
        num_scored_docs=config.num_scored_docs,
        num_context_docs=k,
        max_context_tokens=config.max_context_tokens,
        index_refresh_steps=config.index_refresh_steps,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        seed=config.seed,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )
    recall_cb = _RecallAfterRefresh(index, test, config.recall_ks)
    recall_cb.history.append({"step": 0, **frozen_recall})
    trainer = JMLRTrainer(
        model=llm,
        retriever=retriever,
        index=index,
        args=args,
        train_dataset=task.train,
        processing_class=tokenizer,
        callbacks=[recall_cb],
    )
    train_start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_start
    index.refresh(retriever)
    recall_cb.record(config.max_steps)
    trained_recall = recall_cb.history[-1]

    # JMLR: the trained LLM with the frozen retriever's passages, then with the trained retriever's
    llm = trainer.model
    trained_passages = retrieve_passages(index, test, k=k)
    results["JMLR LLM, frozen retriever"] = {
        **_mcq(llm, tokenizer, test, frozen_passages, config),
        **frozen_recall,
    }
    results["JMLR (LLM + retriever trained)"] = {
        **_mcq(llm, tokenizer, test, trained_passages, config),
        **{key: value for key, value in trained_recall.items() if key != "step"},
    }

    # Checkpoints, table, plot
    from .layout import INDEX_DIR

    model_dir = os.path.join(config.output_dir, "model")
    trainer.save_model(model_dir)  # the LLM, retriever/ and jmlr_inference.json
    index.save(os.path.join(model_dir, INDEX_DIR))  # the `jmlr train` layout: `jmlr ask --model` finds it
    table = results_to_markdown(results)
    summary = {
        "results": results,
        "num_test_questions": len(test),
        "num_train_questions": len(task.train),
        "num_passages": len(task.corpus),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "recall_history": recall_cb.history,
        "log_history": trainer.state.log_history,
        "config": asdict(config),
    }
    save_results(summary, os.path.join(config.output_dir, "results.json"))
    with open(os.path.join(config.output_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    plot_training_curves(
        trainer.state.log_history,
        recall_cb.history,
        os.path.join(config.output_dir, "training_curves.png"),
        recall_key,
    )
    return summary
