"""Seeded, answer-stratified subsets of an evaluation set (what ``jmlr eval --limit N`` scores).

Benchmark files are often sorted: MIRAGE's ``pubmedqa`` lists its 276 "yes" questions first, so
the first 100 questions are all "yes" and an always-"yes" model scores 1.0 on them. A subset must
be a random sample, and a small random sample of a skewed set still swings with the draw, so the
sample is *always* stratified by the gold answer: each answer keeps its share of the full set
(largest-remainder rounding), and the questions of each answer are drawn with a seeded RNG.
Stratifying unconditionally (instead of only when the file looks sorted) keeps the rule simple and
the chance accuracy of an N-question subset equal to that of the full set.

Examples:
    >>> rows = [{"answer": "A"}] * 6 + [{"answer": "B"}] * 3 + [{"answer": "C"}]
    >>> picked = sample_indices(rows, 5, seed=0)
    >>> sorted(rows[i]["answer"] for i in picked)
    ['A', 'A', 'A', 'B', 'B']
    >>> picked == sample_indices(rows, 5, seed=0) and picked == sorted(picked)
    True
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

__all__ = ["sample_indices", "sample_questions"]


def _column(dataset: Any, key: str) -> list[Hashable]:
    """The ``key`` values of a ``datasets.Dataset`` (one column read) or of a sequence of rows."""
    if hasattr(dataset, "column_names"):
        return list(dataset[key])
    return [row[key] for row in dataset]


def _quotas(sizes: Sequence[int], n: int) -> list[int]:
    """``n`` split across groups in proportion to ``sizes`` (largest remainder; ties to the larger group)."""
    total = sum(sizes)
    exact = [n * size / total for size in sizes]
    quotas = [int(x) for x in exact]
    order = sorted(range(len(sizes)), key=lambda g: (quotas[g] - exact[g], -sizes[g], g))
    for g in order[: n - sum(quotas)]:
        quotas[g] += 1
    return quotas


def sample_indices(dataset: Any, n: int, *, seed: int = 0, stratify_by: str | None = "answer") -> list[int]:
    """Indices (in file order) of a seeded random sample of ``n`` rows, stratified by ``stratify_by``.

    Args:
        dataset: a ``datasets.Dataset`` or a sequence of row mappings.
        n: sample size; ``n >= len(dataset)`` returns every index.
        seed: the RNG seed (same seed and data -> same sample).
        stratify_by: column whose values keep their shares in the sample (default: the gold
            ``"answer"``); ``None`` draws a plain uniform sample.

    Returns:
        Sorted row indices.
    """
    if n <= 0:
        raise ValueError(f"the sample size must be positive, got {n}")
    size = len(dataset)
    if n >= size:
        return list(range(size))
    rng = random.Random(seed)
    if stratify_by is None:
        return sorted(rng.sample(range(size), n))
    groups: dict[Hashable, list[int]] = {}
    for i, value in enumerate(_column(dataset, stratify_by)):
        groups.setdefault(value, []).append(i)
    members = list(groups.values())
    picked: list[int] = []
    for group, quota in zip(members, _quotas([len(m) for m in members], n)):
        picked.extend(rng.sample(group, quota))
    return sorted(picked)


def sample_questions(dataset: Any, n: int, *, seed: int = 0, stratify_by: str | None = "answer") -> Any:
    """The rows of :func:`sample_indices` (``Dataset.select`` for a dataset, else a list)."""
    indices = sample_indices(dataset, n, seed=seed, stratify_by=stratify_by)
    if hasattr(dataset, "select"):
        return dataset.select(indices)
    rows: Sequence[Mapping[str, Any]] = dataset
    return [rows[i] for i in indices]
