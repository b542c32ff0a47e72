"""Multiple-choice accuracy of a causal LLM, closed-book or with retrieved passages.

The prompt is exactly the training prompt (:class:`~jmlr_hf.prompting.PromptBuilder`), so a model
trained by :class:`~jmlr_hf.JMLRTrainer` is evaluated the way it was trained. Two ways to read the
model's choice:

- ``"loglik"`` (default): one forward per question; the option whose letter has the highest
  log-probability as the first answer token wins (the target starts with ``"<letter>. "``);
- ``"option"``: the log-likelihood of each whole answer beginning ``"<letter>. <option text>"``
  (summed over its tokens; one row per option, batched) - the usual ``acc`` of lm-evaluation-harness,
  which credits a model that can reproduce the right option from a retrieved passage;
- ``"generate"``: greedy generation of a few tokens, parsed for the first option letter
  (a question whose output names no letter counts as wrong and is reported as ``None``).
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data.qa import answer_letters, validate_qa_dataset
from ..prompting import DEFAULT_MAX_CONTEXT_TOKENS, PromptBuilder

logger = logging.getLogger(__name__)

__all__ = [
    "MCQResult",
    "evaluate_mcq",
    "letter_log_likelihoods",
    "option_log_likelihoods",
    "parse_answer_letter",
]
METHODS = ("loglik", "option", "generate")

_LETTER_PATTERN = re.compile(r"^\W*(?:answer\W*)?\(?([A-Z])\b", re.IGNORECASE)


@dataclass
class MCQResult:
    """Accuracy and per-question predictions of :func:`evaluate_mcq`."""

    accuracy: float
    num_questions: int
    method: str
    ids: list[Any] = field(default_factory=list)
    predictions: list[str | None] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_answer_letter(text: str, letters: Sequence[str]) -> str | None:
    """The option letter a generated answer starts with (``"B. ..."``, ``"(b)"``, ``"Answer: C"``), or None."""
    match = _LETTER_PATTERN.match(text.strip())
    if match and match.group(1).upper() in letters:
        return match.group(1).upper()
    return None


def _letter_token_ids(tokenizer: Any, letters: Sequence[str]) -> list[int]:
    """Token id of each letter as the first token of a target (how PromptBuilder tokenizes targets)."""
    ids = []
    for letter in letters:
        tokens = tokenizer(f"{letter}. x", add_special_tokens=False)["input_ids"]
        if not tokens:
            raise ValueError(f"the tokenizer produced no token for the answer letter {letter!r}")
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"the answer letters {list(letters)} do not start with distinct tokens")
    return ids


def _prompt_batch(
    prompts: PromptBuilder,
    rows: Sequence[Mapping[str, Any]],
    passages: Sequence[Sequence[Mapping[str, Any]]] | None,
    offset: int,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """The left-padded prompts of ``rows`` (``passages[offset + i]`` in row i's prompt; none if None)."""
    texts = [
        prompts.prompt(row, passages[offset + i] if passages is not None else ())
        for i, row in enumerate(rows)
    ]
    batch = prompts.batch(texts, None, "left")
    return {key: batch[key].to(device) for key in ("input_ids", "attention_mask")}


@torch.no_grad()
def letter_log_likelihoods(
    model: torch.nn.Module,
    prompts: PromptBuilder,
    rows: Sequence[Mapping[str, Any]],
    passages: Sequence[Sequence[Mapping[str, Any]]] | None = None,
    batch_size: int = 8,
    show_progress_bar: bool = False,
) -> list[dict[str, float]]:
    """Log-probability of each option letter as the first answer token: one dict per row.

    Args:
        model: a causal LM.
        prompts: the :class:`PromptBuilder` of the LLM's tokenizer (template, context budget).
        rows: validated QA rows with options.
        passages: per row, the retrieved passages (best first); ``None`` for closed-book.
        batch_size: questions per forward (left-padded, only the last position's logits computed).
        show_progress_bar: a tqdm bar over the batches.
    """
    device = next(model.parameters()).device
    out: list[dict[str, float]] = []
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc="Scoring answers", disable=not show_progress_bar):
        chunk = rows[start : start + batch_size]
        batch = _prompt_batch(prompts, chunk, passages, start, device)
        position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        logits = model(**batch, position_ids=position_ids, logits_to_keep=1).logits[:, -1].float()
        logprobs = torch.log_softmax(logits, dim=-1).cpu()
        for i, row in enumerate(chunk):
            letters = answer_letters(row)
            if not letters:
                raise ValueError(f"row {row.get('id')!r} has no options: letter log-likelihood needs options")
            ids = _letter_token_ids(prompts.tokenizer, letters)
            out.append({letter: float(logprobs[i, t]) for letter, t in zip(letters, ids)})
    return out


def _cache_argument(model: torch.nn.Module) -> str:
    """``cache`` in transformers >= 5.24 (``past_key_values`` is deprecated there), else ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def option_log_likelihoods(
    model: torch.nn.Module,
    prompts: PromptBuilder,
    rows: Sequence[Mapping[str, Any]],
    passages: Sequence[Sequence[Mapping[str, Any]]] | None = None,
    batch_size: int = 8,
    show_progress_bar: bool = False,
) -> list[dict[str, float]]:
    """Summed log-probability of each answer beginning ``"<letter>. <option text>"``: one dict per row.

    Arguments as :func:`letter_log_likelihoods`. Each prompt is run once; its KV cache is shared by the
    row's options, so scoring four options costs about one prompt forward, not four.
    """
    device = next(model.parameters()).device
    tokenizer = prompts.tokenizer
    out: list[dict[str, float]] = []
    for start in tqdm(range(0, len(rows), batch_size), desc="Scoring options", disable=not show_progress_bar):
        chunk = rows[start : start + batch_size]
        batch = _prompt_batch(prompts, chunk, passages, start, device)
        mask = batch["attention_mask"]
        first = model(
            **batch, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True, logits_to_keep=1
        )
        first_logprobs = torch.log_softmax(first.logits[:, -1].float(), -1)
        # one continuation per (row, option), right-padded, on a copy of its row's cache
        owners, letters, answers = [], [], []
        for i, row in enumerate(chunk):
            for letter, text in row["options"].items():
                owners.append(i)
                letters.append(letter)
                answers.append(tokenizer(f"{letter}. {text}", add_special_tokens=False)["input_ids"])
        owner = torch.tensor(owners, device=device)
        width = max(len(a) for a in answers)
        cont = torch.full((len(answers), width), tokenizer.pad_token_id, dtype=torch.long, device=device)
        cont_mask = torch.zeros_like(cont)
        for j, a in enumerate(answers):
            cont[j, : len(a)] = torch.tensor(a, device=device)
            cont_mask[j, : len(a)] = 1
        cache = first.get("cache") if first.get("cache") is not None else first.get("past_key_values")
        cache.reorder_cache(owner)
        prompt_lengths = mask.sum(-1)[owner]
        logits = model(
            input_ids=cont,
            attention_mask=torch.cat([mask[owner], cont_mask], dim=1),
            position_ids=prompt_lengths[:, None] + torch.arange(width, device=device),
            **{_cache_argument(model): cache},
        ).logits.float()
        # token j of an answer is predicted by the prompt's last position (j = 0) or by answer token j - 1
        logprobs = torch.cat([first_logprobs[owner][:, None], torch.log_softmax(logits[:, :-1], -1)], dim=1)
        token_logprobs = logprobs.gather(-1, cont[..., None]).squeeze(-1) * cont_mask
        totals = token_logprobs.sum(-1).cpu().tolist()
        scores: list[dict[str, float]] = [{} for _ in chunk]
        for i, letter, total in zip(owners, letters, totals):
            scores[i][letter] = total
        out.extend(scores)
    return out


@torch.no_grad()
def _generate_letters(
    model: torch.nn.Module,
    prompts: PromptBuilder,
    rows: Sequence[Mapping[str, Any]],
    passages: Sequence[Sequence[Mapping[str, Any]]] | None,
    batch_size: int,
    max_new_tokens: int,
    show_progress_bar: bool,
) -> list[str | None]:
    device = next(model.parameters()).device
    tokenizer = prompts.tokenizer
    out: list[str | None] = []
    for start in tqdm(range(0, len(rows), batch_size), desc="Generating", disable=not show_progress_bar):
        chunk = rows[start : start + batch_size]
        batch = _prompt_batch(prompts, chunk, passages, start, device)
        generated = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )[:, batch["input_ids"].shape[1] :]
        for row, ids in zip(chunk, generated):
            text = tokenizer.decode(ids, skip_special_tokens=True)
            out.append(parse_answer_letter(text, answer_letters(row)))
    return out


def evaluate_mcq(
    model: torch.nn.Module,
    tokenizer: Any,
    dataset: Any,
    *,
    passages: Sequence[Sequence[Mapping[str, Any]]] | None = None,
    prompt_template: str | None = None,
    max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS,
    method: str = "loglik",
    batch_size: int = 8,
    max_new_tokens: int = 8,
    show_progress_bar: bool = True,
) -> MCQResult:
    """Multiple-choice accuracy of ``model`` on ``dataset`` (QA rows with options).

    Args:
        model: a causal LM (put in eval mode here).
        tokenizer: its tokenizer (the chat template builds the prompt, as in training).
        dataset: QA rows (a ``datasets.Dataset`` or a list of dicts); bad rows raise naming the row.
        passages: per row, the passages to put in the prompt (best first), e.g. from
            :func:`~jmlr_hf.evaluation.retrieve_passages`; ``None`` = closed-book.
        prompt_template / max_context_tokens: as in :class:`~jmlr_hf.JMLRTrainingArguments`.
        method: ``"loglik"`` (answer-letter log-likelihood), ``"option"`` (log-likelihood of
            ``"<letter>. <option text>"``) or ``"generate"`` (greedy + parsing).
        batch_size: questions per forward.
        max_new_tokens: generation length for ``method="generate"``.
        show_progress_bar: tqdm progress.

    Returns:
        An :class:`MCQResult`.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    rows = validate_qa_dataset(dataset)
    if not rows:
        raise ValueError("the evaluation dataset is empty")
    if passages is not None and len(passages) != len(rows):
        raise ValueError(f"got passages for {len(passages)} rows but the dataset has {len(rows)}")
    for i, row in enumerate(rows):
        if not answer_letters(row):
            raise ValueError(
                f"row {i} (id {row['id']!r}) has no options: multiple-choice evaluation needs them"
            )
    prompts = PromptBuilder(tokenizer, prompt_template, max_context_tokens)
    was_training = model.training
    model.eval()
    try:
        if method == "loglik":
            scores = letter_log_likelihoods(model, prompts, rows, passages, batch_size, show_progress_bar)
            predictions: list[str | None] = [max(s, key=s.get) for s in scores]
        elif method == "option":
            scores = option_log_likelihoods(model, prompts, rows, passages, batch_size, show_progress_bar)
            predictions = [max(s, key=s.get) for s in scores]
        else:
            predictions = _generate_letters(
                model, prompts, rows, passages, batch_size, max_new_tokens, show_progress_bar
            )
    finally:
        model.train(was_training)
    answers = [row["answer"] for row in rows]
    correct = sum(p == a for p, a in zip(predictions, answers))
    return MCQResult(
        accuracy=correct / len(rows),
        num_questions=len(rows),
        method=method,
        ids=[row["id"] for row in rows],
        predictions=predictions,
        answers=answers,
    )
