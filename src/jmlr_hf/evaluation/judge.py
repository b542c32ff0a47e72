"""Pairwise LLM judge of two systems' rationales (the paper's GPT-4 comparison, with a local LLM).

For each question the judge sees the question, its options and the two answers, each with the passages
its system was given (once when both had the same), in both orders: A as "Answer 1" then B as
"Answer 1". Its preference is read without sampling, from the next-token probabilities of ``"1"`` and
``"2"`` after the prompt (renormalised over the two), so the verdict is deterministic.

**Combining the orders.** ``p_a`` (the probability that A is better) is the mean of the two orders'
probabilities, which cancels a constant position bias. A question is a *win* of A when A is preferred
(probability > 0.5) in both orders, a *loss* when B is, and a *tie* when the orders disagree (the
judge followed the position). ``win_rate = (wins + ties / 2) / questions``; swapping A and B gives
``1 - win_rate``.

**Confidence interval.** 95% percentile bootstrap over questions (``num_bootstrap`` resamples of the
per-question scores 1 / 0.5 / 0, seeded, so deterministic).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = ["JUDGE_TEMPLATE", "JudgeResult", "pairwise_judge"]

JUDGE_TEMPLATE = (
    "You are comparing two answers to a medical multiple-choice question. The better answer picks the "
    "correct option and gives a rationale that is supported by its excerpts and cites them as [n].\n\n"
    "{context}Question: {question}\n\n{answers}\n\n"
    "Which answer is better? Reply with 1 or 2."
)
_MAX_PASSAGE_CHARS = 600


@dataclass
class JudgeResult:
    """What :func:`pairwise_judge` reports (A = ``records_a``'s system).

    Attributes:
        win_rate: ``(wins + ties / 2) / num_questions``.
        ci_low, ci_high: 95% percentile-bootstrap interval of ``win_rate``.
        wins, losses, ties: questions where A was preferred in both orders, B in both, or neither.
        num_questions: questions judged.
        first_position_rate: share of the ``2 * num_questions`` judgments preferring the answer shown first
            (0.5 = no position bias).
        consistency: share of questions whose two orders agree (not a tie).
        p_a: per question, the probability that A is better (mean of the two orders).
        p_first: per question, ``(P(1) with A first, P(1) with B first)``.
    """

    win_rate: float
    ci_low: float
    ci_high: float
    wins: int
    losses: int
    ties: int
    num_questions: int
    first_position_rate: float
    consistency: float
    p_a: list[float] = field(default_factory=list)
    p_first: list[tuple[float, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _passages_block(label: str, passages: Sequence[Mapping[str, Any]]) -> str:
    lines = [f"{label}:"] if passages else []
    for n, passage in enumerate(passages, 1):
        title = f"{passage['title']}: " if passage.get("title") else ""
        lines.append(f"[{n}] {title}{' '.join(str(passage['text']).split())[:_MAX_PASSAGE_CHARS]}")
    return "\n".join(lines) + "\n\n" if lines else ""


def _answer_text(record: Mapping[str, Any]) -> str:
    options = record.get("options") or {}
    letter = record.get("stated_letter")
    head = f"{letter}. {options.get(letter) or ''}".strip() if letter else "(no option stated)"
    return f"{head}\n{(record.get('rationale') or '').strip()}".strip()


def judge_prompt(first: Mapping[str, Any], second: Mapping[str, Any], template: str = JUDGE_TEMPLATE) -> str:
    """The judge's message for two answers (``first`` shown as "Answer 1") to the same question."""
    question = str(first["question"])
    options = {k: v for k, v in (first.get("options") or {}).items() if v}
    if options:
        question += "\n" + "\n".join(f"{k}. {v}" for k, v in options.items())
    p1, p2 = list(first.get("passages") or ()), list(second.get("passages") or ())
    if p1 == p2:
        context = _passages_block("Excerpts given to both answers", p1)
        answers = f"Answer 1:\n{_answer_text(first)}\n\nAnswer 2:\n{_answer_text(second)}"
    else:
        context = ""
        answers = (
            f"{_passages_block('Excerpts given to answer 1', p1)}Answer 1:\n{_answer_text(first)}\n\n"
            f"{_passages_block('Excerpts given to answer 2', p2)}Answer 2:\n{_answer_text(second)}"
        )
    return template.format(context=context, question=question, answers=answers)


def _choice_ids(tokenizer: Any, chat: bool) -> tuple[int, int]:
    """Token ids of the replies "1" and "2" as the judge would write them next."""
    ids = [tokenizer(("" if chat else " ") + c, add_special_tokens=False)["input_ids"][-1] for c in "12"]
    if ids[0] == ids[1]:
        raise ValueError("the judge's tokenizer does not tell the replies '1' and '2' apart")
    return ids[0], ids[1]


def _encode(tokenizer: Any, message: str) -> tuple[list[int], bool]:
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"], True
    return tokenizer(message + "\nBetter answer:")["input_ids"], False


@torch.no_grad()
def _p_first(model: Any, tokenizer: Any, messages: Sequence[str], batch_size: int) -> list[float]:
    """P("1") / (P("1") + P("2")) as the next token after each judge message."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[float] = []
    for start in range(0, len(messages), batch_size):
        encoded = [_encode(tokenizer, m) for m in messages[start : start + batch_size]]
        one, two = _choice_ids(tokenizer, encoded[0][1])
        width = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, (ids, _) in enumerate(encoded):  # left padding: the next token is at the last position
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            mask[i, width - len(ids) :] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids).logits[:, -1]
        pair = torch.log_softmax(logits.float()[:, [one, two]], dim=-1).exp()
        out.extend(pair[:, 0].cpu().tolist())
    return out


def _bootstrap_ci(scores: Sequence[float], num_bootstrap: int, seed: int) -> tuple[float, float]:
    values = torch.tensor(scores, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(values), (num_bootstrap, len(values)), generator=generator)
    means = values[picks].mean(-1)
    return float(means.quantile(0.025)), float(means.quantile(0.975))


def pairwise_judge(
    judge_model: Any,
    tokenizer: Any,
    records_a: Sequence[Mapping[str, Any]],
    records_b: Sequence[Mapping[str, Any]],
    *,
    template: str = JUDGE_TEMPLATE,
    batch_size: int = 4,
    num_bootstrap: int = 2000,
    seed: int = 0,
) -> JudgeResult:
    """Compare system A's rationales with system B's, question by question, with a judge LLM.

    Args:
        judge_model: a causal LM (any size; put in eval mode here).
        tokenizer: its tokenizer (its chat template wraps the message when it has one).
        records_a, records_b: the two systems' generation records for the same questions in the same
            order (``{"question", "options", "passages", "rationale", "stated_letter"}``, as
            :func:`~jmlr_hf.evaluation.grounding_summary` takes them).
        template: judge message with ``{context}``, ``{question}`` and ``{answers}``.
        batch_size: judge prompts per forward.
        num_bootstrap, seed: the bootstrap of the confidence interval.

    Returns:
        A :class:`JudgeResult` (see the module docstring for how the two orders combine).
    """
    if len(records_a) != len(records_b) or not records_a:
        raise ValueError(
            f"need the same, non-zero number of records, got {len(records_a)} and {len(records_b)}"
        )
    for i, (a, b) in enumerate(zip(records_a, records_b)):
        if a["question"] != b["question"]:
            raise ValueError(f"record {i}: the two systems answered different questions")
    messages = [judge_prompt(a, b, template) for a, b in zip(records_a, records_b)]
    messages += [judge_prompt(b, a, template) for a, b in zip(records_a, records_b)]
    was_training = judge_model.training
    judge_model.eval()
    try:
        p1 = _p_first(judge_model, tokenizer, messages, batch_size)
    finally:
        judge_model.train(was_training)
    n = len(records_a)
    a_first, b_first = p1[:n], p1[n:]  # P(answer 1 is better) with A shown first / with B shown first
    p_a = [(x + (1 - y)) / 2 for x, y in zip(a_first, b_first)]
    wins = sum(x > 0.5 and y < 0.5 for x, y in zip(a_first, b_first))
    losses = sum(x < 0.5 and y > 0.5 for x, y in zip(a_first, b_first))
    scores = [
        1.0 if x > 0.5 and y < 0.5 else 0.0 if x < 0.5 and y > 0.5 else 0.5 for x, y in zip(a_first, b_first)
    ]
    low, high = _bootstrap_ci(scores, num_bootstrap, seed)
    return JudgeResult(
        win_rate=sum(scores) / n,
        ci_low=low,
        ci_high=high,
        wins=wins,
        losses=losses,
        ties=n - wins - losses,
        num_questions=n,
        first_position_rate=sum(p > 0.5 for p in p1) / (2 * n),
        consistency=(wins + losses) / n,
        p_a=p_a,
        p_first=list(zip(a_first, b_first)),
    )
