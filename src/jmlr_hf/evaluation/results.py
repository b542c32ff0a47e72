"""Evaluation results as JSON and as a markdown table."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["results_to_markdown", "save_results"]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def results_to_markdown(results: Mapping[str, Mapping[str, Any]], row_header: str = "system") -> str:
    """``{row name: {column: value}}`` -> a markdown table (columns in first-seen order, floats to 3 places)."""
    columns: list[str] = []
    for metrics in results.values():
        columns.extend(c for c in metrics if c not in columns)
    lines = [
        "| " + " | ".join([row_header, *columns]) + " |",
        "|" + "|".join(["---"] * (len(columns) + 1)) + "|",
    ]
    for name, metrics in results.items():
        lines.append("| " + " | ".join([name, *(_cell(metrics.get(c)) for c in columns)]) + " |")
    return "\n".join(lines)


def save_results(results: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write results as indented JSON (folders created as needed)."""
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, sort_keys=False)
        f.write("\n")
