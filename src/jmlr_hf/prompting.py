"""The one prompt format of JMLR: training, passage utility, evaluation and ``jmlr ask`` all build it here.

The prompt is the tokenizer's chat template (when it has one) around a user message built from
``prompt_template``; retrieved passages are listed worst first so that the best one sits nearest
the question. The joined context is truncated *as a whole* to ``max_context_tokens`` (the least
relevant passages are cut first); the question and the answer are never truncated.

Examples:
    >>> print(format_context([{"title": "Best", "text": "Metformin first."}, {"title": "", "text": "Diet."}]))
    [2] Diet.
    <BLANKLINE>
    [1] Best
    Metformin first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .data.qa import format_question, format_target

__all__ = [
    "CLOSED_BOOK_TEMPLATE",
    "DEFAULT_MAX_CONTEXT_TOKENS",
    "DEFAULT_PROMPT_TEMPLATE",
    "IGNORE_INDEX",
    "PromptBuilder",
    "format_context",
]

DEFAULT_PROMPT_TEMPLATE = (
    "Use the clinical guideline excerpts to answer the medical question.\n\n"
    "{context}\n\nQuestion: {question}\n"
    "Answer with the letter of the correct option first, then explain in one to three sentences, "
    "citing the excerpts that support each sentence as [n]."
)
#: Budget (LLM tokens) of the joined passages: the paper's 7 passages of 180 retriever tokens fit.
DEFAULT_MAX_CONTEXT_TOKENS = 2048
CLOSED_BOOK_TEMPLATE = "Answer the medical question.\n\nQuestion: {question}\nAnswer with the letter of the correct option, then explain."
#: Label of the prompt (and padding) tokens: no loss there.
IGNORE_INDEX = -100


def _passage_block(rank: int, passage: Mapping[str, Any]) -> str:
    """One passage of the context: ``[rank] title`` and its text on the next line."""
    title = f"{passage['title']}\n" if passage.get("title") else ""
    return f"[{rank}] {title}{passage['text']}"


def format_context(passages: Sequence[Mapping[str, Any]]) -> str:
    """Passages in relevance order (best first) -> context text with the best one last."""
    return "\n\n".join(_passage_block(rank, passages[rank - 1]) for rank in range(len(passages), 0, -1))


@dataclass
class PromptBuilder:
    """Builds prompts and their token tensors for an LLM tokenizer.

    Args:
        tokenizer: the LLM's tokenizer (fast tokenizers give exact context truncation).
        prompt_template: user message with ``{context}`` and ``{question}``.
        max_context_tokens: token budget of the joined passages.

    Example:
        A tokenizer without a chat template (the LLM's own wraps the message in its template):

        >>> from transformers import AutoTokenizer
        >>> from jmlr_hf.models import default_encoder_path
        >>> tokenizer = AutoTokenizer.from_pretrained(default_encoder_path())
        >>> builder = PromptBuilder(tokenizer, max_context_tokens=64)
        >>> options = {"A": "Metformin", "B": "Aspirin"}
        >>> row = {"question": "First-line drug for diabetes?", "options": options, "answer": "A"}
        >>> print(builder.prompt(row, [{"title": "Metformin", "text": "Metformin is first-line."}]).rstrip())
        Use the clinical guideline excerpts to answer the medical question.
        <BLANKLINE>
        [1] Metformin
        Metformin is first-line.
        <BLANKLINE>
        Question: First-line drug for diabetes?
        A. Metformin
        B. Aspirin
        Answer with the letter of the correct option first, then explain in one to three sentences, citing the excerpts that support each sentence as [n].
        Answer:
        >>> batch = builder.batch([builder.prompt(row)], ["A. Metformin"])  # loss on the target tokens only
        >>> sorted(batch), batch["target_lengths"].tolist()
        (['attention_mask', 'input_ids', 'labels', 'target_lengths'], [5])
    """

    tokenizer: Any
    prompt_template: str | None = None
    max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS

    def __post_init__(self) -> None:
        self.prompt_template = self.prompt_template or DEFAULT_PROMPT_TEMPLATE
        self.use_chat_template = bool(getattr(self.tokenizer, "chat_template", None))
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _truncate_passages(self, passages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Fit the joined context into ``max_context_tokens``: the budget goes to passages in
        relevance order, so the best passages stay whole and the least relevant are cut or dropped."""
        budget = self.max_context_tokens
        kept: list[dict[str, Any]] = []
        for rank, passage in enumerate(passages, 1):
            header = len(
                self.tokenizer(_passage_block(rank, {**passage, "text": ""}), add_special_tokens=False)[
                    "input_ids"
                ]
            )
            room = budget - header - 2  # the "\n\n" separator
            if room <= 0:
                break
            text = passage["text"]
            enc = self.tokenizer(
                text, add_special_tokens=False, return_offsets_mapping=self.tokenizer.is_fast
            )
            ids = enc["input_ids"]
            if len(ids) > room:
                text = (
                    text[: enc["offset_mapping"][room - 1][1]]
                    if self.tokenizer.is_fast
                    else self.tokenizer.decode(ids[:room])
                )
                ids = ids[:room]
            kept.append({**passage, "text": text})
            budget -= header + len(ids) + 2
        return kept

    def placed_passages(self, passages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The passages :meth:`prompt` actually places (best first; cut or dropped to fit the budget)."""
        return self._truncate_passages(passages)

    def target(self, row: Mapping[str, Any], passages: Sequence[Mapping[str, Any]] = ()) -> str:
        """The training target of ``row`` under a prompt with ``passages``: :func:`format_target`, each
        explanation sentence followed by ``[n]`` of the placed passage that supports it best (content-word
        precision >= 0.6, :func:`~jmlr_hf.evaluation.grounding.cite_passages`), so ``[n]`` matches the prompt."""
        from .evaluation.grounding import cite_passages  # lazy: evaluation imports this module

        explanation = (row.get("explanation") or "").strip()
        if passages and explanation:
            row = {**row, "explanation": cite_passages(explanation, self.placed_passages(passages))}
        return format_target(row)

    def prompt(self, row: Mapping[str, Any], passages: Sequence[Mapping[str, Any]] = ()) -> str:
        """The full prompt text (up to where the answer starts) for a QA row and its passages."""
        question = format_question(row)
        if passages:
            context = format_context(self._truncate_passages(passages))
            message = self.prompt_template.format(context=context, question=question)
        else:
            message = CLOSED_BOOK_TEMPLATE.format(question=question)
        if self.use_chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
            )
        return message + "\nAnswer: "

    def target_ids(self, target: str, add_eos: bool = True) -> list[int]:
        """Token ids of an answer tokenized on its own (no special tokens), ended by EOS unless ``add_eos`` is
        false; :meth:`encode` gives the ids the answer has after a prompt (what :meth:`batch` trains on)."""
        ids = self.tokenizer(target, add_special_tokens=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        return ids + ([eos] if eos is not None and add_eos else [])

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of a prompt from :meth:`prompt`."""
        # The chat template already holds the special tokens it needs.
        return self.tokenizer(prompt, add_special_tokens=not self.use_chat_template)["input_ids"]

    def encode(self, prompt: str, target: str, add_eos: bool = True) -> tuple[list[int], list[int]]:
        """``(prompt ids, target ids)`` with the target tokenized as the tokenizer writes it after the prompt.

        The prompt's trailing spaces move to the target, and the target's ids are the tail of the
        tokenized ``prompt + target``: after ``"...Answer: "`` a base model's target starts with the
        one token ``" A"`` of ordinary text, not a lone ``" "`` then ``"A"`` (sentencepiece and GPT-2
        tokenizers alike). Training, utility scoring and evaluation all score targets this way.
        """
        head = prompt.rstrip(" ")
        plain_head = self.tokenizer(head, add_special_tokens=False)["input_ids"]
        full = self.tokenizer(prompt + target, add_special_tokens=False)["input_ids"]
        if full[: len(plain_head)] == plain_head:
            ids = full[len(plain_head) :]
        else:  # a token spans the boundary (rare): the tail tokenized on its own still spells the text
            ids = self.tokenizer(prompt[len(head) :] + target, add_special_tokens=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        return self.prompt_ids(head), ids + ([eos] if eos is not None and add_eos else [])

    def batch(
        self,
        prompts: Sequence[str],
        targets: Sequence[str] | None,
        padding_side: str = "right",
        add_eos: bool = True,
    ) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask``, ``labels`` (loss on the target only) and ``target_lengths``;
        ``add_eos=False`` scores a target that is only the beginning of an answer; ``targets=None``
        pads the prompts alone (for inference)."""
        seqs, labels, target_lengths = [], [], []
        for prompt, target in zip(prompts, targets if targets is not None else [None] * len(prompts)):
            p, t = (
                self.encode(prompt, target, add_eos) if target is not None else (self.prompt_ids(prompt), [])
            )
            seqs.append(p + t)
            labels.append([IGNORE_INDEX] * len(p) + t)
            target_lengths.append(len(t))
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        label_t = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, (s, lab) in enumerate(zip(seqs, labels)):
            sl = slice(width - len(s), width) if padding_side == "left" else slice(0, len(s))
            input_ids[i, sl] = torch.tensor(s)
            label_t[i, sl] = torch.tensor(lab)
            mask[i, sl] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": label_t,
            "target_lengths": torch.tensor(target_lengths),
        }
