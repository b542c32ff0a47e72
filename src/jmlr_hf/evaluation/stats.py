"""Uncertainty of evaluation numbers: standard errors and paired differences between two systems.

Two systems scored on the *same* questions are compared question by question (paired): the
difference of their means is ``mean(a_i - b_i)`` and its standard error comes from the spread of the
per-question differences, which is much smaller than treating the two accuracies as independent when
the systems agree on most questions. For 0/1 scores (right/wrong, hallucinated or not) this is the
Wald interval for a difference of paired proportions, ``(n10 - n01) / n`` with standard error
``sqrt(n10 + n01 - (n10 - n01)^2 / n) / n``, where ``n10`` counts the questions only ``a`` gets right
and ``n01`` those only ``b`` gets right; the exact McNemar test on those discordant questions gives
the p-value.

Examples:
    >>> round(standard_error([1, 0, 1, 1]), 4)  # sqrt(0.75 * 0.25 / 4)
    0.2165
    >>> diff = paired_difference([1, 1, 1, 0, 1], [0, 1, 0, 0, 1])
    >>> diff["difference"], diff["discordant"]
    (0.4, [2, 0])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

__all__ = ["mcnemar_p_value", "paired_difference", "standard_error"]


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean of per-question scores, ``sqrt(var / n)`` with the population variance
    (for 0/1 scores: ``sqrt(p (1 - p) / n)``, the binomial standard error). None / NaN values are skipped."""
    xs = _finite(values)
    if not xs:
        return math.nan
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs) / len(xs))


def mcnemar_p_value(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: the binomial(``only_a + only_b``, 1/2) test on the discordant pairs."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """``mean(a) - mean(b)`` over the questions both score, with a paired normal interval.

    Args:
        a, b: per-question scores of two systems on the same questions, in the same order (0/1 for
            accuracy or hallucination, or a share such as supported sentences); a question where either
            is None or NaN is left out of the comparison.
        confidence: coverage of the interval (default 95%).

    Returns:
        ``difference``, ``se`` (its standard error), ``ci_low`` / ``ci_high``, ``n`` (questions
        compared) and, when every score is 0 or 1, ``discordant`` (``[only a, only b]``) and
        ``p_value`` (exact McNemar).
    """
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same questions: got {len(a)} and {len(b)} scores")
    pairs = [
        (float(x), float(y))
        for x, y in zip(a, b)
        if x is not None and y is not None and not math.isnan(float(x)) and not math.isnan(float(y))
    ]
    if not pairs:
        raise ValueError("no question has a score from both systems")
    diffs = [x - y for x, y in pairs]
    n = len(diffs)
    se = standard_error(diffs)
    mean = sum(diffs) / n
    half = _z(confidence) * se
    out: dict[str, Any] = {
        "difference": mean,
        "se": se,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "n": n,
    }
    if all(x in (0.0, 1.0) and y in (0.0, 1.0) for x, y in pairs):
        only_a = sum(x > y for x, y in pairs)
        only_b = sum(y > x for x, y in pairs)
        out["discordant"] = [only_a, only_b]
        out["p_value"] = mcnemar_p_value(only_a, only_b)
    return out
