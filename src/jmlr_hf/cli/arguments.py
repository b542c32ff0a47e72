"""The arguments of each ``jmlr`` command: one dataclass per command, parsed by :class:`~jmlr_hf.parsing.JMLRParser`.

``jmlr train`` takes the recipe's (:class:`~jmlr_hf.recipe.ModelArguments`,
:class:`~jmlr_hf.recipe.DataArguments`, :class:`~jmlr_hf.JMLRTrainingArguments`). Every field is a flag
(``--chunk_tokens`` or ``--chunk-tokens``) and a key of the ``--config`` YAML file; ``Literal`` fields list
their choices in ``--help``. Values are checked here, before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..choices import DType, IndexBackend, MCQMethod, QAFormat
from ..recipe import DEFAULT_MODEL, chunk_overlap_option, chunk_tokens_option, index_backend_option
from ..recipe import option as flag

__all__ = ["AskArguments", "DemoArguments", "EvalArguments", "IndexArguments", "InferenceArguments"]

_DEVICE_HELP = "'auto' (CUDA when available), 'cpu', 'cuda:0', ..."
_QUIET_HELP = "no progress bars"


def _check_positive(args: object, *names: str) -> None:
    """``ValueError`` naming the first of ``names`` whose value is set and not positive."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name} must be positive, got {value}")


@dataclass
class DemoArguments:
    """``jmlr demo``: JMLR end to end on the embedded defaults and the synthetic demo task."""

    output_dir: str = flag("jmlr-demo", "folder for results, plot, model and index")
    max_steps: int | None = flag(None, "training steps (default: the demo's 90)")
    seed: int = flag(0, "seed of the synthetic task and of training")
    num_facts: int | None = flag(None, "synthetic guideline facts (default: 100; 120 retrieval-only)")
    max_eval_questions: int | None = flag(None, "held-out questions scored (default: all, 160)")
    retrieval_only: bool = flag(False, "only the retrieval demo (recall of the untrained retriever)")
    k: int = flag(7, "retrieval-only: passages retrieved per question")
    backend: IndexBackend = index_backend_option()

    def __post_init__(self) -> None:
        _check_positive(self, "max_steps", "num_facts", "max_eval_questions", "k")


@dataclass
class IndexArguments:
    """``jmlr index``: chunk and encode a corpus into a saved index (or re-encode a saved one)."""

    output: str = flag(help="folder the index is saved to (with --refresh: the saved index)", metavar="DIR")
    corpus: list[str] | None = flag(
        None,
        "corpus file(s) (.jsonl[.gz], .json, .parquet) of {id, title, text} rows; repeat for several",
        metavar="FILE",
    )
    retriever: str = flag(
        DEFAULT_MODEL,
        "retriever checkpoint, plain encoder (gets a new ColBERT head), a `jmlr train` output folder, or "
        "'default'",
    )
    backend: IndexBackend = index_backend_option()
    chunk_tokens: int = chunk_tokens_option()
    chunk_overlap: int = chunk_overlap_option()
    refresh: bool = flag(False, "re-encode the saved index at --output with --retriever instead")
    device: str = flag("auto", _DEVICE_HELP)
    quiet: bool = flag(False, _QUIET_HELP, aliases=["-q"])

    def __post_init__(self) -> None:
        _check_positive(self, "chunk_tokens")
        if self.refresh and self.corpus:
            raise ValueError("--refresh re-encodes the saved index at --output: drop --corpus")
        if not self.refresh and not self.corpus:
            raise ValueError("give at least one --corpus FILE (or --refresh to re-encode a saved index)")


@dataclass(kw_only=True)
class InferenceArguments:
    """What ``jmlr eval`` and ``jmlr ask`` share: the models, the index and the prompt budget."""

    model: str = flag(
        DEFAULT_MODEL,
        "LLM folder, Hub id, LoRA adapter folder or 'default'; a `jmlr train` folder brings its retriever/, "
        "index/ and prompt settings",
    )
    index: str | None = flag(None, "saved index (default: --model's index/)", metavar="DIR")
    retriever: str | None = flag(
        None, "retriever the index was built with (default: --model's retriever/, else 'default')"
    )
    k: int | None = flag(None, "passages in the prompt (default: the trained num_context_docs, else 7)")
    max_context_tokens: int | None = flag(None, "context budget (default: the trained one, else 2048)")
    dtype: DType | None = flag(None, "LLM dtype (default: the checkpoint's)")
    device: str = flag("auto", _DEVICE_HELP)

    def __post_init__(self) -> None:
        _check_positive(self, "k", "max_context_tokens")


@dataclass(kw_only=True)
class EvalArguments(InferenceArguments):
    """``jmlr eval``: multiple-choice accuracy, closed-book or with retrieved passages (RAG / JMLR)."""

    data: str = flag(help="QA file (MIRAGE: benchmark.json)", metavar="FILE")
    format: Literal[QAFormat, "mirage"] = flag("qa", "layout of the QA file")
    mirage_subset: list[str] | None = flag(
        None,
        "MIRAGE dataset(s) to evaluate (medqa, medmcqa, mmlu, pubmedqa, bioasq); repeat; default: all",
        metavar="NAME",
    )
    split: str | None = flag(None, "split to use when the QA file holds several")
    mode: Literal["closed-book", "rag"] | None = flag(
        None, "default: rag when an index is given (or in --model), else closed-book"
    )
    method: MCQMethod = flag(
        "loglik",
        "how the answer is read: answer-letter log-likelihood, log-likelihood of the option text "
        "(acc and length-normalised acc_norm), or greedy generation (answer + rationale) parsed for the option",
    )
    limit: int | None = flag(
        None,
        "score a seeded random sample of N questions per dataset, stratified by gold answer (files are often "
        "sorted by answer: never the first N)",
        metavar="N",
    )
    seed: int = flag(0, "seed of the --limit sample")
    max_new_tokens: int = flag(96, "--method generate: tokens generated (the answer and a short rationale)")
    batch_size: int = flag(8, "questions per forward")
    output: str | None = flag(None, "write results (and per-question predictions) as JSON", metavar="FILE")
    judge_model: str | None = flag(
        None,
        "--method generate: an LLM (folder or Hub id) that judges this run's rationales against --compare's, "
        "pairwise in both orders (win rate with a 95 percent bootstrap interval)",
        metavar="NAME",
    )
    compare: str | None = flag(
        None, "the --output JSON of another `jmlr eval --method generate` run, judged against", metavar="FILE"
    )
    quiet: bool = flag(False, _QUIET_HELP, aliases=["-q"])

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive(self, "limit", "batch_size", "max_new_tokens")
        if self.mirage_subset and self.format != "mirage":
            raise ValueError("--mirage-subset only applies to --format mirage")
        if (self.judge_model is None) != (self.compare is None):
            raise ValueError("--judge-model and --compare go together: the judge compares this run with it")
        if self.judge_model is not None and self.method != "generate":
            raise ValueError("--judge-model judges generated rationales: add --method generate")


@dataclass(kw_only=True)
class AskArguments(InferenceArguments):
    """``jmlr ask``: answer one question with retrieved passages and show them."""

    question: str | None = flag(None, "the question (or give it as the first argument)")
    option: list[str] | None = flag(None, "an answer option; repeat for each", metavar="A=TEXT")
    max_new_tokens: int = flag(256, "answer length limit")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive(self, "max_new_tokens")
