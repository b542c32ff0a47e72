"""Rank metrics shared by evaluation and the trainer's logs."""

from __future__ import annotations

import torch

__all__ = ["kendall_tau"]


def kendall_tau(a: torch.Tensor, b: torch.Tensor) -> float:
    """Kendall's tau-a between two score vectors ``[n]`` (1 = same order, -1 = reversed).

    Examples:
        >>> kendall_tau(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([0.9, 0.5, 0.1]))
        1.0
        >>> kendall_tau(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 1.0]))
        -1.0
    """
    n = a.numel()
    if n < 2:
        return 0.0
    da = torch.sign(a[:, None] - a[None, :])
    db = torch.sign(b[:, None] - b[None, :])
    return float((da * db).sum() / (n * (n - 1)))
