"""jmlr-hf: Joint Medical LLM and Retrieval training (JMLR) for the HuggingFace ecosystem.

Importing the package registers ``JMLRRetrieverConfig`` / ``JMLRRetriever`` with the
``transformers`` Auto classes and ``attn_implementation="s2_attn"`` (Shifted Sparse Attention).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .attention import register_s2_attn
from .retriever import DocumentIndex, JMLRRetriever, JMLRRetrieverConfig

__version__ = "0.1.0"

__all__ = [
    "DocumentIndex",
    "JMLRRetriever",
    "JMLRRetrieverConfig",
    "JMLRTrainer",
    "JMLRTrainingArguments",
    "register_s2_attn",
    "__version__",
]

# The trainer pulls in transformers.Trainer (and accelerate); import it only when asked for.
_LAZY = {"JMLRTrainer": ".trainer", "JMLRTrainingArguments": ".trainer"}

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import JMLRTrainer, JMLRTrainingArguments


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name], __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


register_s2_attn()
