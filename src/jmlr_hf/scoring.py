"""NLL of answers under a causal LLM: the LM loss of the joint step and the batched utility of passages.

Evaluation and the trainer share these functions, so a passage's utility is computed the same way
when the retriever learns from it and when the agreement of retriever and LLM is measured.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from .data.qa import format_target
from .prompting import IGNORE_INDEX, PromptBuilder

__all__ = ["answer_nll", "eval_mode", "lm_loss", "passage_utility_nll"]


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
