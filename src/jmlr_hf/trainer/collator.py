"""Prompts -> tensors: the one prompt format used at training and inference, and batched answer NLL.

The prompt is the tokenizer's chat template (when it has one) around a user message built from
``prompt_template``; retrieved passages are listed worst first so that the best one sits nearest
the question. The joined context is truncated *as a whole* to ``max_context_tokens`` (the least
relevant passages are cut first); the question and the answer are never truncated.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ..data.qa import format_question, format_target
from .arguments import CLOSED_BOOK_TEMPLATE, DEFAULT_MAX_CONTEXT_TOKENS, DEFAULT_PROMPT_TEMPLATE

IGNORE_INDEX = -100


def _passage_block(rank: int, passage: Mapping[str, Any]) -> str:
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
        ids = self.tokenizer(target, add_special_tokens=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        return ids + ([eos] if eos is not None and add_eos else [])

    def prompt_ids(self, prompt: str) -> list[int]:
        # The chat template already holds the special tokens it needs.
        return self.tokenizer(prompt, add_special_tokens=not self.use_chat_template)["input_ids"]

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
            p = self.prompt_ids(prompt)
            t = self.target_ids(target, add_eos) if target is not None else []
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


def lm_loss(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over all target tokens of a right-padded batch (with autograd)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


@torch.no_grad()
def answer_nll(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean NLL of each row's target, one no-grad forward of a *left*-padded batch: ``[n_rows]``.

    With left padding every target ends at the last position, so only the last
    ``max(target_lengths) + 1`` logits are computed (``logits_to_keep``).
    """
    input_ids, mask = batch["input_ids"], batch["attention_mask"]
    keep = int(batch["target_lengths"].max()) + 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, logits_to_keep=keep)
    logits = out.logits[:, -keep:-1].float()
    labels = batch["labels"][:, -keep + 1 :]
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(labels.shape)
    valid = labels != IGNORE_INDEX
    return (nll * valid).sum(-1) / valid.sum(-1).clamp(min=1)


def passage_utility_nll(
    model: torch.nn.Module,
    prompts: PromptBuilder,
    rows: Sequence[Mapping[str, Any]],
    passages: Sequence[Sequence[Mapping[str, Any]]],
    device: torch.device | str,
) -> torch.Tensor:
    """Utility of passages: the NLL of each row's target with each of its passages alone in the prompt.

    ``passages[i]`` holds the same number ``n`` of passages for every row; all ``rows x n`` prompts go
    through one left-padded no-grad forward (:func:`answer_nll`). Returns ``[len(rows), n]``.

    The LLM scores in eval mode (as Atlas's reader does), and its training mode is restored afterwards:
    in training mode LoRA / attention dropout would make a passage's utility random, and S2-Attn's
    groups (aligned to position 0 of the left-padded batch) would make it depend on how long the
    *other* passages of the batch are.
    """
    n = len(passages[0])
    texts = [
        prompts.prompt(row, [passage])
        for row, row_passages in zip(rows, passages)
        for passage in row_passages
    ]
    targets = [format_target(row) for row in rows for _ in range(n)]
    batch = {key: value.to(device) for key, value in prompts.batch(texts, targets, "left").items()}
    with eval_mode(model):
        return answer_nll(model, batch).view(len(rows), n)


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run ``model`` in eval mode inside the block, restoring each submodule's own mode afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def targets_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return [format_target(r) for r in rows]


class QACollator:
    """Trainer collator: validates QA rows and hands them to ``JMLRTrainer.compute_loss`` as ``{"rows": [...]}``.

    The joint step needs the raw text (retrieval happens inside the step), so tokenisation happens there.
    """

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        from ..data.qa import validate_qa_row

        return {"rows": [validate_qa_row(f) for f in features]}
