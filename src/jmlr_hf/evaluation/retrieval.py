"""Retrieval metrics: recall@k against known gold passages, and agreement with the LLM's utility."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data.qa import format_target, validate_qa_dataset
from ..prompting import DEFAULT_MAX_CONTEXT_TOKENS, PromptBuilder
from ..retriever import DocumentIndex
from ..scoring import answer_nll, eval_mode, passage_utility_nll
from .metrics import kendall_tau

__all__ = ["rag_answer_nll", "recall_at_k", "retrieve_passages", "retriever_llm_agreement"]


def _questions(dataset: Any) -> list[str]:
    return [row["question"] for row in validate_qa_dataset(dataset)]


def retrieve_passages(
    index: DocumentIndex, dataset: Any, k: int, batch_size: int = 32
) -> list[list[dict[str, Any]]]:
    """The top-``k`` passages (best first) for each row's question, as the trainer retrieves them."""
    hits = index.search(_questions(dataset), k=k, batch_size=batch_size)
    return [[dict(h) for h in row] for row in hits]


def recall_at_k(
    index: DocumentIndex,
    dataset: Any,
    ks: Sequence[int] = (1, 5, 10),
    gold_field: str = "gold_doc_id",
    batch_size: int = 32,
) -> dict[str, float]:
    """Fraction of questions whose gold document (``row[gold_field]``, a corpus ``id``) is in the top k.

    Returns:
        ``{"recall@1": ..., "recall@5": ..., ...}``.
    """
    rows = list(dataset)
    if not rows:
        raise ValueError("the evaluation dataset is empty")
    for i, row in enumerate(rows):
        if not row.get(gold_field):
            raise ValueError(
                f"row {i} (id {row.get('id')!r}) has no {gold_field!r}: recall needs the gold passage"
            )
    ks = sorted(set(ks))
    known = set(index.passages["doc_id"])
    missing = [row[gold_field] for row in rows if row[gold_field] not in known]
    if missing:
        raise ValueError(f"{len(missing)} gold documents are not in the index, e.g. {missing[0]!r}")
    hits = retrieve_passages(index, rows, k=max(ks), batch_size=batch_size)
    out = {}
    for k in ks:
        found = sum(row[gold_field] in {h["doc_id"] for h in top[:k]} for row, top in zip(rows, hits))
        out[f"recall@{k}"] = found / len(rows)
    return out


def retriever_llm_agreement(
    model: torch.nn.Module,
    tokenizer: Any,
    index: DocumentIndex,
    dataset: Any,
    k: int = 10,
    prompt_template: str | None = None,
    max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS,
    show_progress_bar: bool = True,
) -> float:
    """Mean Kendall tau between the retriever's ranking of its top ``k`` passages and the LLM's
    (lower answer NLL given the passage = more useful): 1 = same order, 0 = unrelated."""
    rows = validate_qa_dataset(dataset)
    prompts = PromptBuilder(tokenizer, prompt_template, max_context_tokens)
    device = next(model.parameters()).device
    hits = retrieve_passages(index, rows, k=k)
    taus = []
    for row, top in tqdm(list(zip(rows, hits)), desc="Rank agreement", disable=not show_progress_bar):
        nll = passage_utility_nll(model, prompts, [row], [top], device)[0].float().cpu()  # in eval mode
        scores = torch.tensor([h["score"] for h in top])
        taus.append(kendall_tau(scores, -nll))
    return sum(taus) / len(taus)


def rag_answer_nll(
    model: torch.nn.Module,
    tokenizer: Any,
    dataset: Any,
    passages: Sequence[Sequence[dict[str, Any]]],
    prompt_template: str | None = None,
    max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS,
    batch_size: int = 4,
    show_progress_bar: bool = True,
) -> list[float]:
    """Per-row NLL (mean over target tokens) of each row's answer (letter, option text and explanation)
    given its passages (best first) in the training prompt: how well the LLM answers from what the
    retriever found. The LLM runs in eval mode; its mode is restored afterwards."""
    rows = validate_qa_dataset(dataset)
    if len(passages) != len(rows):
        raise ValueError(f"{len(passages)} passage lists for {len(rows)} rows")
    prompts = PromptBuilder(tokenizer, prompt_template, max_context_tokens)
    device = next(model.parameters()).device
    out: list[float] = []
    starts = range(0, len(rows), batch_size)
    with eval_mode(model):
        for start in tqdm(starts, desc="Answer NLL", disable=not show_progress_bar):
            chunk = rows[start : start + batch_size]
            texts = [prompts.prompt(r, p) for r, p in zip(chunk, passages[start : start + batch_size])]
            batch = prompts.batch(texts, [format_target(r) for r in chunk], "left")
            out.extend(answer_nll(model, {k: v.to(device) for k, v in batch.items()}).float().tolist())
    return out
