"""The trainer's data collator: QA rows go to ``JMLRTrainer.compute_loss`` untokenised.

The prompt format lives in :mod:`jmlr_hf.prompting` and the NLL scoring in :mod:`jmlr_hf.scoring`;
their names stay importable from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..data.qa import validate_qa_row
from ..prompting import IGNORE_INDEX, PromptBuilder, format_context
from ..scoring import answer_nll, eval_mode, lm_loss, passage_utility_nll

__all__ = [
    "IGNORE_INDEX",
    "PromptBuilder",
    "QACollator",
    "answer_nll",
    "eval_mode",
    "format_context",
    "lm_loss",
    "passage_utility_nll",
]


class QACollator:
    """Trainer collator: validates QA rows and hands them to ``JMLRTrainer.compute_loss`` as ``{"rows": [...]}``.

    The joint step needs the raw text (retrieval happens inside the step), so tokenisation happens there.
    """

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return {"rows": [validate_qa_row(f) for f in features]}
