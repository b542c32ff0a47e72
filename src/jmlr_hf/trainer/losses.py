"""Rank losses that teach the retriever the LLM's utility ordering of documents.

Scores are normalised retriever scores (MaxSim divided by the number of query tokens: a mean
cosine in [-1, 1]), so their scale does not depend on the query length and nothing divides by a
spread that can be zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# kendall_tau (the logged rank agreement) lives in jmlr_hf.evaluation.metrics; still importable from here.
from ..evaluation.metrics import kendall_tau

__all__ = ["kendall_tau", "llm_rank_loss", "pdist_loss"]


def llm_rank_loss(scores: torch.Tensor, nll: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """The paper's pairwise loss: ``BCE(sigmoid((s_i - s_j) / T), 1[l_i < l_j])`` over all ordered pairs.

    Args:
        scores: normalised retriever scores ``[batch, n]`` (with grad).
        nll: LLM answer NLL per document ``[batch, n]`` (lower = more useful).
        temperature: divides score differences.

    Pairs with equal NLL carry no preference and are left out; a batch without any preference
    gives a zero loss that still belongs to the graph.
    """
    diff = (scores[:, :, None] - scores[:, None, :]) / temperature
    target = (nll[:, :, None] < nll[:, None, :]).to(diff.dtype)
    decided = nll[:, :, None] != nll[:, None, :]
    if not decided.any():
        return diff.sum() * 0.0
    losses = F.binary_cross_entropy_with_logits(diff, target, reduction="none")
    return losses[decided].mean()


def pdist_loss(
    scores: torch.Tensor, nll: torch.Tensor, temperature: float = 0.01, utility_temperature: float = 0.01
) -> torch.Tensor:
    """Atlas-style perplexity distillation: ``KL(softmax(-l / T_g) || softmax(s / T_s))``, batch mean.

    The defaults are Atlas's (``temperature_gold = temperature_score = 0.01``).
    """
    target = F.softmax(-nll / utility_temperature, dim=-1)
    log_student = F.log_softmax(scores / temperature, dim=-1)
    return F.kl_div(log_student, target, reduction="batchmean")
