"""JMLRTrainingArguments: ``TrainingArguments`` plus the joint-step settings (defaults are the paper's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from transformers import TrainingArguments

from ..choices import invalid_choices

# The prompt format lives in jmlr_hf.prompting; these names stay importable from here.
from ..prompting import CLOSED_BOOK_TEMPLATE, DEFAULT_MAX_CONTEXT_TOKENS, DEFAULT_PROMPT_TEMPLATE

__all__ = [
    "CLOSED_BOOK_TEMPLATE",
    "DEFAULT_MAX_CONTEXT_TOKENS",
    "DEFAULT_PROMPT_TEMPLATE",
    "JMLRTrainingArguments",
]


@dataclass
class JMLRTrainingArguments(TrainingArguments):
    r"""Arguments of :class:`~jmlr_hf.JMLRTrainer`: every ``TrainingArguments`` field plus the joint step's.

    Parameters:
        num_candidate_docs (`int`, defaults to 30): passages fetched from the index per question.
        num_scored_docs (`int`, defaults to 10): candidates whose LLM utility is measured each step.
        num_context_docs (`int`, defaults to 7): passages (top by the retriever) in the LM prompt.
        rank_loss (`Literal["llm_rank", "pdist"]`, defaults to ``"llm_rank"``): ``"llm_rank"`` (pairwise
            logistic on utility order, the paper's) or ``"pdist"`` (Atlas-style KL to the utility
            distribution).
        rank_loss_weight (`float`, defaults to 1.0): ``loss = lm_loss + rank_loss_weight * rank_loss``.
        rank_temperature (`float`, defaults to 0.1): temperature of the normalised retriever scores
            (mean cosine per query token) in the ``llm_rank`` loss and in candidate sampling.
        utility_temperature (`float`, defaults to 0.01): temperature of ``-NLL`` in the ``pdist`` target
            (Atlas's ``temperature_gold``). Utility gaps between passages are 0.01-0.1 nats: at 1.0 the
            target would be nearly uniform.
        pdist_score_temperature (`float`, defaults to 0.01): temperature of the normalised retriever scores
            in the ``pdist`` student distribution (Atlas's ``temperature_score``).
        candidate_sampling (`Literal["sample", "top"]`, defaults to ``"sample"``): pick the scored
            documents by sampling ``softmax(s / rank_temperature)`` without replacement, or the ``"top"``
            ones.
        retriever_learning_rate (`float`, defaults to 1e-5): learning rate of the retriever, separate from
            ``learning_rate`` (which, with LoRA, is typically 2e-4: far too high to fine-tune BERT fully).
            The paper's configs use 1e-5; its official code 3e-6.
        retriever_query_max_length (`int`, *optional*, defaults to 512): the longest question the retriever
            sees, in its tokens (capped by the encoder's limit); it becomes the retriever's
            ``config.query_max_length`` and is saved with it. The paper's code encodes questions with
            ``query_maxlen=512``; MedQA vignettes are 150-400 word-pieces. ``None`` keeps the retriever's own.
        index_refresh_steps (`int`, defaults to 500): re-encode the index every N optimizer steps (0 = never,
            the stale-index pitfall of the reference code: candidates then come from the initial retriever).
        freeze_document_encoder (`bool`, defaults to `False`): train the query side only; document
            vectors come from the index (no refresh needed).
        utility_precision (`Literal["auto", "bf16", "fp32"]`, defaults to ``"auto"``): precision of the
            no-grad utility forward; ``"auto"`` uses bf16 autocast where the hardware has fast bf16 (it only
            ranks documents).
        max_context_tokens (`int`, defaults to 2048): budget (LLM tokens) of the joined passages in the
            prompt: 7 passages of 180 retriever tokens with their titles take about 1,700 Llama / SmolLM2
            tokens. The context is truncated as a whole, the question and answer never are.
        prompt_template (`str`, *optional*): user message with ``{context}`` and ``{question}``.
        remove_unused_columns (`bool`, defaults to `False`): ``TrainingArguments``' option, off here: the
            joint step needs the raw QA rows (``True`` is refused).
    """

    num_candidate_docs: int = field(
        default=30, metadata={"help": "Passages fetched from the index per question."}
    )
    num_scored_docs: int = field(
        default=10, metadata={"help": "Candidates whose LLM utility is measured per step."}
    )
    num_context_docs: int = field(
        default=7, metadata={"help": "Top passages (by the retriever) in the LM prompt."}
    )
    rank_loss: Literal["llm_rank", "pdist"] = field(
        default="llm_rank",
        metadata={"help": "'llm_rank' (pairwise, the paper's) or 'pdist' (Atlas-style KL)."},
    )
    rank_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the retriever's rank loss."})
    rank_temperature: float = field(
        default=0.1, metadata={"help": "Temperature of normalised retriever scores (rank loss, sampling)."}
    )
    utility_temperature: float = field(
        default=0.01, metadata={"help": "Temperature of -NLL in the pdist target (Atlas: 0.01)."}
    )
    pdist_score_temperature: float = field(
        default=0.01, metadata={"help": "Temperature of the retriever scores in pdist (Atlas: 0.01)."}
    )
    candidate_sampling: Literal["sample", "top"] = field(
        default="sample",
        metadata={"help": "Sample the scored documents from the retriever's scores, or take the top ones."},
    )
    retriever_learning_rate: float = field(
        default=1e-5, metadata={"help": "Learning rate of the retriever (the paper's configs: 1e-5)."}
    )
    retriever_query_max_length: int | None = field(
        default=512,
        metadata={
            "help": "Longest question the retriever encodes, in its tokens (None: the retriever's own)."
        },
    )
    index_refresh_steps: int = field(
        default=500, metadata={"help": "Re-encode the index every N optimizer steps (0 = never)."}
    )
    freeze_document_encoder: bool = field(
        default=False, metadata={"help": "Train the query encoder only; documents keep their index vectors."}
    )
    utility_precision: Literal["auto", "bf16", "fp32"] = field(
        default="auto",
        metadata={
            "help": "'auto' (bf16 autocast where bf16 is fast), 'bf16' or 'fp32' for the utility forward."
        },
    )
    max_context_tokens: int = field(
        default=DEFAULT_MAX_CONTEXT_TOKENS,
        metadata={"help": "LLM-token budget of the joined passages (7 x 180-token passages fit)."},
    )
    prompt_template: str | None = field(
        default=None, metadata={"help": "User message template with {context} and {question}."}
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={
            "help": "Keep every dataset column (Trainer's default drops unused ones): the joint step needs the "
            "raw QA rows."
        },
    )

    def __post_init__(self) -> None:
        problems = invalid_choices(self)
        if self.remove_unused_columns:
            problems.append("remove_unused_columns must be False: the joint step needs the raw QA rows")
        for name in ("num_candidate_docs", "num_scored_docs", "num_context_docs", "max_context_tokens"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_context_docs > self.num_candidate_docs:
            problems.append(
                f"num_context_docs ({self.num_context_docs}) > num_candidate_docs ({self.num_candidate_docs})"
            )
        if self.num_scored_docs > self.num_candidate_docs:
            problems.append(
                f"num_scored_docs ({self.num_scored_docs}) > num_candidate_docs ({self.num_candidate_docs})"
            )
        if self.num_scored_docs < 2 and self.rank_loss_weight > 0:
            problems.append("num_scored_docs must be at least 2 to rank documents")
        if min(self.rank_temperature, self.utility_temperature, self.pdist_score_temperature) <= 0:
            problems.append(
                "rank_temperature, utility_temperature and pdist_score_temperature must be positive"
            )
        if self.rank_loss_weight < 0:
            problems.append(f"rank_loss_weight must be >= 0, got {self.rank_loss_weight}")
        if self.index_refresh_steps < 0:
            problems.append(f"index_refresh_steps must be >= 0, got {self.index_refresh_steps}")
        if self.retriever_learning_rate is None or self.retriever_learning_rate < 0:
            problems.append(f"retriever_learning_rate must be >= 0, got {self.retriever_learning_rate}")
        if self.retriever_query_max_length is not None and self.retriever_query_max_length < 3:
            problems.append(
                f"retriever_query_max_length must be at least 3, got {self.retriever_query_max_length}"
            )
        if self.prompt_template is not None and (
            "{question}" not in self.prompt_template or "{context}" not in self.prompt_template
        ):
            problems.append("prompt_template must contain {context} and {question}")
        if problems:
            raise ValueError("Invalid JMLRTrainingArguments: " + "; ".join(problems))
        super().__post_init__()
