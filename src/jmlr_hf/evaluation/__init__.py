"""Evaluation: multiple-choice accuracy (closed-book or with retrieved passages), retrieval recall,
retriever/LLM rank agreement, and result tables."""

from .mcq import MCQResult, evaluate_mcq, letter_log_likelihoods, option_log_likelihoods, parse_answer_letter
from .metrics import kendall_tau
from .results import results_to_markdown, save_results
from .retrieval import rag_answer_nll, recall_at_k, retrieve_passages, retriever_llm_agreement

__all__ = [
    "MCQResult",
    "evaluate_mcq",
    "kendall_tau",
    "letter_log_likelihoods",
    "option_log_likelihoods",
    "parse_answer_letter",
    "rag_answer_nll",
    "recall_at_k",
    "results_to_markdown",
    "retrieve_passages",
    "retriever_llm_agreement",
    "save_results",
]
