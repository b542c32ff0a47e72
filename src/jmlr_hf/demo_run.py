"""The end-to-end demo behind ``jmlr demo`` / ``make demo``: JMLR on the synthetic demo task.

On the embedded defaults (SmolLM2-135M-Instruct + a ColBERT head on all-MiniLM-L6-v2), offline:

1. generate the demo task (fictional guidelines with hard related passages; not medical advice), with
   several questions per fact and the test split by fact, so that enough held-out questions keep the
   standard error of each accuracy at or below 0.04;
2. build the index with the untrained retriever and measure the baselines on the held-out questions:
   closed-book and RAG with the frozen retriever (base LLM);
3. train LLM and retriever together with :class:`~jmlr_hf.JMLRTrainer` (index refreshed during training),
   recording ``lm_loss``, ``rank_loss`` and the held-out recall after every refresh;
4. measure JMLR: the trained LLM with the trained retriever's passages (the full system) and, for the
   ablation, with the frozen retriever's passages (the LLM's share of the gain; letter accuracy only);
5. score every system by answer-letter log-likelihood (the headline), option-text log-likelihood and a
   generated answer with a rationale, whose grounding gives the hallucination rate (invented entities
   named in neither the question nor the given passages) and the share of supported sentences; each
   accuracy with its standard error, and the paired differences between systems with 95% intervals
   (:mod:`jmlr_hf.evaluation.stats`);
6. write ``results.json``, ``results.md``, ``generations.jsonl``, ``training_curves.png`` and the
   checkpoints to the output folder: ``model/`` (the LLM), ``model/retriever/``, ``model/index/``
   (re-encoded with the trained retriever) and ``model/jmlr_inference.json`` (prompt settings), the layout
   ``jmlr train`` writes, so ``jmlr ask --model <output>/model`` and ``jmlr eval --model <output>/model``
   use all of it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import TrainerCallback

from .data import make_demo_task
from .data.demo import DemoTask
from .evaluation import (
    evaluate_mcq,
    recall_at_k,
    results_to_markdown,
    retrieve_passages,
    sample_indices,
    save_results,
)
from .evaluation.grounding import grounding_summary
from .evaluation.stats import paired_difference, standard_error

logger = logging.getLogger(__name__)

__all__ = ["DemoConfig", "demo_task", "estimate_seconds", "plot_training_curves", "run_demo"]

CLOSED_BOOK = "closed-book (base LLM)"
FROZEN_RAG = "RAG, frozen retriever (base LLM)"
ABLATION = "JMLR LLM, frozen retriever"
JMLR = "JMLR (LLM + retriever trained)"
#: The comparisons the demo states, ``(better, worse)`` by hypothesis: JMLR > frozen RAG > closed-book.
COMPARISONS: tuple[tuple[str, str], ...] = (
    (JMLR, FROZEN_RAG),
    (FROZEN_RAG, CLOSED_BOOK),
    (JMLR, CLOSED_BOOK),
)

# Seconds per unit of work on the slowest supported machine (2-core Intel Xeon with AVX-512 BF16, bf16
# autocast), from profiling small runs (process CPU time / 2 cores; issue 13); the start-up estimate
# multiplies them out. Prompts with two passages are ~350 tokens, closed-book ones ~120.
_SECONDS = {  # measured on a 2-core Intel Xeon (AVX-512 BF16) running the demo alone, 2026-12-02
    "setup": 15.0,  # imports, models, task, checkpoint save
    "passage": 0.007,  # one passage encoded (index build and each refresh)
    "step": 2.9,  # one joint step without utility scoring (LM forward + backward, retriever, AdamW)
    "scored_doc": 0.16,  # utility forward of one scored passage, per step
    "letter_rag": 0.2,  # one question with passages, answer-letter log-likelihood (batch 16)
    "letter_closed": 0.05,  # one closed-book question, the same
    "option": 1.0,  # one question with passages, option-text log-likelihood
    "token": 0.0095,  # one generated token of one question (batched greedy decoding, batch 40)
}


@dataclass
class DemoConfig:
    """Settings of :func:`run_demo`.

    The defaults fit ``make demo``'s budget (``jmlr demo`` 8.9 min on a 2-core Intel Xeon, measured) with 160
    held-out questions, so that each letter accuracy's standard error is at most 0.04
    (``sqrt(0.25 / 160) = 0.040``); answers with rationales are generated for a seeded, answer-stratified
    subset of ``generate_questions`` of them (one costs about 3x a letter score). The ablation row (about
    +1 min) and the option-text accuracy (about +6 min: it scores four continuations per question) are off
    by default.
    """

    output_dir: str = "jmlr-demo"
    seed: int = 0
    num_facts: int = 100
    questions_per_fact: int = 4
    test_fraction: float = 0.4
    related_docs_per_fact: int = 3
    max_eval_questions: int | None = None  # None: every held-out question
    max_steps: int = 90
    per_device_train_batch_size: int = 1
    learning_rate: float = 1e-4
    retriever_learning_rate: float = 1e-4
    num_candidate_docs: int = 8
    num_scored_docs: int = 4
    num_context_docs: int = 2
    max_context_tokens: int = 320
    index_refresh_steps: int = 30
    recall_ks: tuple[int, ...] = (1, 2, 4)
    eval_batch_size: int = 16
    generate: bool = True  # generated rationales: hallucination rate and supported sentences
    generate_questions: int | None = 80  # held-out questions with a generated rationale (None: all)
    generate_batch_size: int = 40  # CPU decoding is overhead-bound: a large batch is cheaper per question
    max_new_tokens: int = 40  # the answer and a one-sentence rationale (the trained LLM stops by itself)
    option_accuracy: bool = False  # option-text log-likelihood accuracy (lm-eval's acc) next to the letter's
    ablation: bool = False  # the "JMLR LLM, frozen retriever" row (letter accuracy only)
    bf16: bool | None = None  # None: bf16 autocast where the CPU/GPU has fast bf16
    show_progress: bool = True  # the plan, phase headers and a progress bar per phase

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.max_eval_questions is not None and self.max_eval_questions < 1:
            raise ValueError(f"max_eval_questions must be >= 1 or None, got {self.max_eval_questions}")
        if self.num_context_docs not in self.recall_ks:
            self.recall_ks = tuple(sorted({*self.recall_ks, self.num_context_docs}))


def _num_test_questions(config: DemoConfig) -> int:
    """Held-out questions of the task :func:`make_demo_task` generates for ``config`` (split by fact)."""
    num_test = round(config.num_facts * config.test_fraction)
    if 0.0 < config.test_fraction < 1.0 and config.num_facts >= 2:
        num_test = min(max(num_test, 1), config.num_facts - 1)
    n = num_test * config.questions_per_fact
    return n if config.max_eval_questions is None else min(n, config.max_eval_questions)


def _num_generated(config: DemoConfig, num_test: int) -> int:
    if not config.generate:
        return 0
    return num_test if config.generate_questions is None else min(num_test, config.generate_questions)


def estimate_seconds(config: DemoConfig) -> dict[str, float]:
    """Rough seconds of each phase on a 2-core CPU (an estimate from profiled unit costs, not a measurement)."""
    sec = _SECONDS
    n = _num_test_questions(config)
    g = _num_generated(config, n)
    passages = config.num_facts * (1 + config.related_docs_per_fact)
    refreshes = (config.max_steps - 1) // config.index_refresh_steps if config.index_refresh_steps > 0 else 0
    step = (sec["step"] + sec["scored_doc"] * config.num_scored_docs) * config.per_device_train_batch_size
    prefill = sec["letter_closed"] + 2 * sec["letter_rag"]  # closed-book, frozen RAG, JMLR
    evaluation = n * prefill + g * (prefill + 3 * sec["token"] * config.max_new_tokens)
    evaluation += n * sec["letter_rag"] if config.ablation else 0.0
    evaluation += n * sec["option"] * 7 / 3 if config.option_accuracy else 0.0  # closed-book ~1/3
    return {
        "setup": sec["setup"],
        "index": sec["passage"] * passages * (2 + refreshes),  # build, refreshes, final re-encode
        "training": step * config.max_steps,
        "evaluation": evaluation,
    }


def _describe(config: DemoConfig, num_test: int, num_train: int, num_passages: int) -> str:
    est = estimate_seconds(config)
    systems = "closed-book, RAG with the frozen retriever, JMLR" + (
        " (+ ablation row)" if config.ablation else ""
    )
    methods = "answer letter" + (", option text" if config.option_accuracy else "")
    if config.generate:
        methods += (
            f"; a generated answer + rationale (<= {config.max_new_tokens} tokens) on "
            f"{_num_generated(config, num_test)} of them"
        )
    return "\n".join(
        [
            "jmlr demo: JMLR end to end on the synthetic demo task (fictional, not medical advice)",
            f"  index {num_passages} passages; baselines and JMLR on {num_test} held-out questions",
            f"  train {config.max_steps} joint steps on {num_train} training questions "
            f"(index refreshed every {config.index_refresh_steps} steps)",
            f"  systems: {systems}; scored by {methods}",
            "  estimated time on a 2-core CPU (a rough estimate; a GPU or more cores is faster): "
            f"about {sum(est.values()) / 60:.0f} min = "
            + ", ".join(f"{name} {seconds / 60:.1f}" for name, seconds in est.items()),
        ]
    )


class _PhaseTimer:
    """Wall-clock and process CPU seconds per phase: on a busy machine ``cpu / cores`` is closer to what
    the phase costs on an idle one than the wall clock is."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            phase = self.phases.setdefault(name, {"wall": 0.0, "cpu": 0.0})
            phase["wall"] = round(phase["wall"] + time.perf_counter() - wall, 1)
            phase["cpu"] = round(phase["cpu"] + time.process_time() - cpu, 1)


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


def _bar_panel(ax: Any, results: dict[str, dict[str, Any]]) -> None:
    """Grouped bars per system: letter accuracy (with its standard error), hallucination rate, support."""
    metrics = [
        ("accuracy (letter)", "accuracy (letter) SE", "letter accuracy"),
        ("hallucination rate", "hallucination rate SE", "hallucination rate"),
        ("supported sentences", None, "supported sentences"),
    ]
    systems = [name for name in results if name != ABLATION]
    width = 0.8 / len(systems)
    for j, name in enumerate(systems):
        heights = [results[name].get(key) for key, _, _ in metrics]
        errors = [results[name].get(se) if se else None for _, se, _ in metrics]
        xs = [i + (j - (len(systems) - 1) / 2) * width for i in range(len(metrics))]
        ax.bar(
            xs,
            [math.nan if h is None else h for h in heights],
            width,
            yerr=[0.0 if e is None else e for e in errors],
            capsize=3,
            label=name.split(" (")[0],
        )
    ax.set_xticks(range(len(metrics)), [label for _, _, label in metrics], fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title("held-out answers (bars: SE)")


def plot_training_curves(
    log_history: list[dict[str, Any]],
    recall_history: list[dict[str, float]],
    path: str,
    recall_key: str,
    results: dict[str, dict[str, Any]] | None = None,
) -> None:
    """PNG of ``lm_loss``, ``rank_loss``, held-out ``recall_key`` against the step and, with ``results``,
    a panel of letter accuracy, hallucination rate and supported sentences per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4 if results else 3, figsize=(17 if results else 13, 3.8))
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
    if results:
        _bar_panel(axes[3], results)
    fig.suptitle("JMLR on the synthetic demo task (SmolLM2-135M + MiniLM ColBERT)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _use_bf16(config: DemoConfig) -> bool:
    from .retriever.modeling_jmlr_retriever import bf16_supported

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return bf16_supported(device) if config.bf16 is None else config.bf16


def _autocast(config: DemoConfig) -> Any:
    """bf16 autocast for evaluation where training uses it (1.6x faster letter scoring on a bf16 CPU)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, dtype=torch.bfloat16, enabled=_use_bf16(config))


def _correct(result: Any) -> list[float]:
    return [float(p == a) for p, a in zip(result.predictions, result.answers)]


def _evaluate(
    name: str,
    llm: Any,
    tokenizer: Any,
    test: Any,
    passages: Any,
    config: DemoConfig,
    entities: Any,
    full: bool,
) -> tuple[dict[str, Any], dict[str, list[Any]], list[dict[str, Any]]]:
    """One system's metrics, its per-question scores (for paired comparisons) and its generations.

    ``full``: every method of ``config`` (else only the answer letter: the ablation row)."""
    common: dict[str, Any] = {
        "passages": passages,
        "max_context_tokens": config.max_context_tokens,
        "batch_size": config.eval_batch_size,
        "show_progress_bar": config.show_progress,
    }
    if config.show_progress:
        print(f"Evaluating {name}", flush=True)
    with _autocast(config):
        return _score(llm, tokenizer, test, config, entities, full, common)


def _score(
    llm: Any, tokenizer: Any, test: Any, config: DemoConfig, entities: Any, full: bool, common: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, list[Any]], list[dict[str, Any]]]:
    letter = evaluate_mcq(llm, tokenizer, test, method="loglik", **common)
    per_question: dict[str, list[Any]] = {"letter": _correct(letter)}
    metrics: dict[str, Any] = {
        "accuracy (letter)": letter.accuracy,
        "accuracy (letter) SE": standard_error(per_question["letter"]),
    }
    generations: list[dict[str, Any]] = []
    if full and config.option_accuracy:
        option = evaluate_mcq(llm, tokenizer, test, method="option", **common)
        metrics["accuracy (option)"] = option.accuracy
        per_question["option"] = _correct(option)
    if full and config.generate:
        picked = sample_indices(test, _num_generated(config, len(test)), seed=config.seed)
        passages = common["passages"]
        options = {
            **common,
            "passages": None if passages is None else [passages[i] for i in picked],
            "batch_size": config.generate_batch_size,
        }
        generated = evaluate_mcq(
            llm,
            tokenizer,
            test.select(picked),
            method="generate",
            max_new_tokens=config.max_new_tokens,
            **options,
        )
        generations = generated.generations
        per_record = [grounding_summary([record], entities) for record in generations]
        per_question["generated"] = _correct(generated)
        per_question["hallucinated"] = [s["hallucination_rate"] for s in per_record]
        per_question["supported"] = [s["supported_sentences_any"] for s in per_record]
        summary = grounding_summary(generations, entities)
        metrics.update(
            {
                "accuracy (generated)": generated.accuracy,
                "hallucination rate": summary["hallucination_rate"],
                "hallucination rate SE": standard_error(per_question["hallucinated"]),
                "supported sentences": summary["supported_sentences_any"],
                "grounding": summary,
            }
        )
    return metrics, per_question, generations


def _differences(per_question: dict[str, dict[str, list[Any]]]) -> dict[str, dict[str, Any]]:
    """Paired differences with 95% intervals for :data:`COMPARISONS` on every shared per-question score."""
    out: dict[str, dict[str, Any]] = {}
    for better, worse in COMPARISONS:
        if better not in per_question or worse not in per_question:
            continue
        scores = {
            key: paired_difference(per_question[better][key], per_question[worse][key])
            for key in per_question[better]
            if key in per_question[worse] and any(v is not None for v in per_question[better][key])
        }
        out[f"{better} - {worse}"] = scores
    return out


_TABLE_COLUMNS = (
    ("accuracy (letter)", "accuracy (letter) SE"),
    ("accuracy (option)", None),
    ("accuracy (generated)", None),
    ("hallucination rate", "hallucination rate SE"),
    ("supported sentences", None),
)


def _table(results: dict[str, dict[str, Any]], recall_keys: list[str]) -> str:
    """The results table (value ± standard error where there is one) for results.md and the console."""
    rows: dict[str, dict[str, Any]] = {}
    for name, metrics in results.items():
        row: dict[str, Any] = {}
        for key, se in _TABLE_COLUMNS:
            value = metrics.get(key)
            if value is None:
                row[key] = None
            elif se and metrics.get(se) is not None:
                row[key] = f"{value:.3f} ± {metrics[se]:.3f}"
            else:
                row[key] = float(value)
        row.update({k: metrics.get(k) for k in recall_keys})
        rows[name] = row
    return results_to_markdown(rows)


_DIFFERENCE_LABELS = {
    "letter": "accuracy (letter)",
    "option": "accuracy (option)",
    "generated": "accuracy (generated)",
    "hallucinated": "hallucination rate",
    "supported": "supported sentences",
}


def _differences_table(differences: dict[str, dict[str, Any]]) -> str:
    """Paired differences, 95% interval and (for 0/1 scores) the exact McNemar p-value."""
    lines = [
        "| comparison | metric | difference | 95% interval | p (McNemar) |",
        "|---|---|---|---|---|",
    ]
    for comparison, scores in differences.items():
        for key, d in scores.items():
            p = d.get("p_value")
            lines.append(
                f"| {comparison} | {_DIFFERENCE_LABELS.get(key, key)} | {d['difference']:+.3f} | "
                f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | {'-' if p is None else f'{p:.3g}'} |"
            )
    return "\n".join(lines)


def _write_generations(path: str, rows: Any, generations: dict[str, list[dict[str, Any]]]) -> None:
    """One JSON line per (system, question): the generated answer, the parsed letter and the gold one."""
    with open(path, "w", encoding="utf-8") as f:
        for system, records in generations.items():
            for row, record in zip(rows, records):
                line = {"system": system, "id": row["id"], "answer": row["answer"], **record}
                f.write(json.dumps(line, ensure_ascii=False) + "\n")


def _training_arguments(config: DemoConfig) -> Any:
    from . import JMLRTrainingArguments

    return JMLRTrainingArguments(
        output_dir=os.path.join(config.output_dir, "trainer"),
        per_device_train_batch_size=config.per_device_train_batch_size,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        retriever_learning_rate=config.retriever_learning_rate,
        warmup_steps=max(1, config.max_steps // 10),
        lr_scheduler_type="linear",
        num_candidate_docs=config.num_candidate_docs,
        num_scored_docs=config.num_scored_docs,
        num_context_docs=config.num_context_docs,
        max_context_tokens=config.max_context_tokens,
        index_refresh_steps=config.index_refresh_steps,
        logging_steps=max(1, min(5, config.max_steps // 12)),
        save_strategy="no",
        report_to="none",
        seed=config.seed,
        bf16=_use_bf16(config),
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=not config.show_progress,
    )


def demo_task(config: DemoConfig) -> DemoTask:
    """The synthetic task :func:`run_demo` uses for ``config`` (the same seed gives the same task)."""
    return make_demo_task(
        num_facts=config.num_facts,
        seed=config.seed,
        test_fraction=config.test_fraction,
        questions_per_fact=config.questions_per_fact,
        related_docs_per_fact=config.related_docs_per_fact,
    )


def run_demo(config: DemoConfig | None = None) -> dict[str, Any]:
    """Run the demo (see the module docstring) and return the results written to ``results.json``."""
    from . import DocumentIndex, JMLRTrainer
    from .models import load_default_llm, load_default_retriever

    config = config or DemoConfig()
    start, start_cpu = time.perf_counter(), time.process_time()
    os.makedirs(config.output_dir, exist_ok=True)
    torch.manual_seed(config.seed)
    task = demo_task(config)
    test = task.test
    if config.max_eval_questions is not None and len(test) > config.max_eval_questions:
        test = test.select(range(config.max_eval_questions))
    if config.show_progress:
        print(_describe(config, len(test), len(task.train), len(task.corpus)), flush=True)
    llm, tokenizer = load_default_llm()
    retriever = load_default_retriever()
    k = config.num_context_docs
    recall_key = f"recall@{k}"
    entities = task.entities

    # Baselines: the base LLM closed-book and with the untrained (frozen) retriever
    timer = _PhaseTimer()
    with timer("index build"):
        index = DocumentIndex.build(
            task.corpus, retriever, backend="exact", show_progress_bar=config.show_progress
        )
    frozen_recall = recall_at_k(index, test, ks=config.recall_ks)
    frozen_passages = retrieve_passages(index, test, k=k)
    results: dict[str, dict[str, Any]] = {}
    per_question: dict[str, dict[str, list[Any]]] = {}
    generations: dict[str, list[dict[str, Any]]] = {}

    def evaluate(name: str, model: Any, passages: Any, recall: dict[str, float], full: bool = True) -> None:
        with timer(f"evaluation: {name}"):
            metrics, scores, records = _evaluate(
                name, model, tokenizer, test, passages, config, entities, full
            )
        results[name] = {**metrics, **recall}
        per_question[name] = scores
        if records:
            generations[name] = records

    evaluate(CLOSED_BOOK, llm, None, {})
    evaluate(FROZEN_RAG, llm, frozen_passages, frozen_recall)

    # Joint training
    recall_cb = _RecallAfterRefresh(index, test, config.recall_ks)
    recall_cb.history.append({"step": 0, **frozen_recall})
    trainer = JMLRTrainer(
        model=llm,
        retriever=retriever,
        index=index,
        args=_training_arguments(config),
        train_dataset=task.train,
        processing_class=tokenizer,
        callbacks=[recall_cb],
    )
    if config.show_progress:
        print(f"Training LLM and retriever jointly ({config.max_steps} steps)", flush=True)
    with timer("training"):
        trainer.train()
    with timer("final re-encode"):
        index.refresh(retriever, show_progress_bar=config.show_progress)
    recall_cb.record(config.max_steps)
    trained_recall = {key: value for key, value in recall_cb.history[-1].items() if key != "step"}

    # JMLR: the trained LLM with the trained retriever's passages (and, ablation, the frozen retriever's)
    llm = trainer.model
    evaluate(JMLR, llm, retrieve_passages(index, test, k=k), trained_recall)
    if config.ablation:
        evaluate(ABLATION, llm, frozen_passages, frozen_recall, full=False)
        results = {name: results[name] for name in (CLOSED_BOOK, FROZEN_RAG, ABLATION, JMLR)}

    # Checkpoints, tables, plot
    from .layout import INDEX_DIR

    model_dir = os.path.join(config.output_dir, "model")
    with timer("save"):
        trainer.save_model(model_dir)  # the LLM, retriever/ and jmlr_inference.json
        index.save(os.path.join(model_dir, INDEX_DIR))  # the `jmlr train` layout: `jmlr ask --model` finds it
    differences = _differences(per_question)
    recall_keys = [f"recall@{k}" for k in config.recall_ks]
    table = _table(results, recall_keys)
    differences_table = _differences_table(differences)
    summary = {
        "results": results,
        "differences": differences,
        "per_question": per_question,
        "num_test_questions": len(test),
        "num_generated_questions": _num_generated(config, len(test)),
        "num_train_questions": len(task.train),
        "num_passages": len(task.corpus),
        "train_seconds": timer.phases["training"]["wall"],
        "eval_seconds": round(
            sum(v["wall"] for k, v in timer.phases.items() if k.startswith("evaluation")), 1
        ),
        "total_seconds": round(time.perf_counter() - start, 1),
        "total_cpu_seconds": round(time.process_time() - start_cpu, 1),
        "phase_seconds": timer.phases,
        "estimated_seconds": {key: round(v, 1) for key, v in estimate_seconds(config).items()},
        "recall_history": recall_cb.history,
        "log_history": trainer.state.log_history,
        "config": asdict(config),
        "table": table,
        "differences_table": differences_table,
    }
    save_results(summary, os.path.join(config.output_dir, "results.json"))
    with open(os.path.join(config.output_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(
            f"{table}\n\nLetter accuracy on {len(test)} held-out questions (± its standard error); generated "
            f"answers, hallucination rate and supported sentences on {_num_generated(config, len(test))} of "
            f"them.\n\nPaired differences (same questions, 95% intervals):\n\n{differences_table}\n"
        )
    if generations:
        picked = sample_indices(test, _num_generated(config, len(test)), seed=config.seed)  # as in _score
        _write_generations(
            os.path.join(config.output_dir, "generations.jsonl"), test.select(picked), generations
        )
    plot_training_curves(
        trainer.state.log_history,
        recall_cb.history,
        os.path.join(config.output_dir, "training_curves.png"),
        recall_key,
        results,
    )
    return summary
