"""Evaluation: multiple-choice accuracy (closed-book or with retrieved passages), retrieval recall,
retriever/LLM rank agreement, and result tables."""

from .grounding import (
    cite_passages,
    extract_citations,
    grounding_summary,
    hallucination_rate,
    invalid_citations,
    letter_agrees_with_rationale,
    split_answer,
    supported_sentence_share,
)
from .judge import JudgeResult, pairwise_judge
from .mcq import MCQResult, evaluate_mcq, letter_log_likelihoods, option_log_likelihoods, parse_answer_letter
from .metrics import kendall_tau
from .results import results_to_markdown, save_results
from .retrieval import rag_answer_nll, recall_at_k, retrieve_passages, retriever_llm_agreement
from .sampling import sample_indices, sample_questions

__all__ = [
    "JudgeResult",
    "MCQResult",
    "cite_passages",
    "evaluate_mcq",
    "extract_citations",
    "grounding_summary",
    "hallucination_rate",
    "invalid_citations",
    "kendall_tau",
    "letter_agrees_with_rationale",
    "letter_log_likelihoods",
    "option_log_likelihoods",
    "pairwise_judge",
    "parse_answer_letter",
    "rag_answer_nll",
    "recall_at_k",
    "results_to_markdown",
    "retrieve_passages",
    "retriever_llm_agreement",
    "sample_indices",
    "sample_questions",
    "save_results",
    "split_answer",
    "supported_sentence_share",
]
