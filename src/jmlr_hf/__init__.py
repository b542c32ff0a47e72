"""jmlr-hf: Joint Medical LLM and Retrieval training (JMLR) for the HuggingFace ecosystem.

Importing the package registers ``JMLRRetrieverConfig`` / ``JMLRRetriever`` with the
``transformers`` Auto classes and ``attn_implementation="s2_attn"`` (Shifted Sparse Attention): at once
when ``transformers`` is already imported, else the moment it is (before any model can be loaded). So
``import jmlr_hf`` itself loads neither torch nor transformers, and the ``jmlr`` command's ``--help``
answers at once. The public names load on first use.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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

_LAZY = {
    "DocumentIndex": ".retriever",
    "JMLRRetriever": ".retriever",
    "JMLRRetrieverConfig": ".retriever",
    "register_s2_attn": ".attention",
    "JMLRTrainer": ".trainer",
    "JMLRTrainingArguments": ".trainer",
}

if TYPE_CHECKING:  # pragma: no cover
    from .attention import register_s2_attn
    from .retriever import DocumentIndex, JMLRRetriever, JMLRRetrieverConfig
    from .trainer import JMLRTrainer, JMLRTrainingArguments


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name], __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register() -> None:
    """Register "s2_attn" and the retriever's Auto classes: importing these subpackages does it (a
    subpackage that is importing right now registers when it finishes)."""
    for name in (".attention", ".retriever"):
        importlib.import_module(name, __name__)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``callback`` right after the module ``name`` is first imported (by anyone), then steps aside."""

    def __init__(self, name: str, callback: Callable[[], None]) -> None:
        self.name, self.callback = name, callback

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def exec_then_callback(module: Any) -> None:
                exec_module(module)
                self.callback()

            spec.loader.exec_module = exec_then_callback  # this spec's own loader instance
        return spec


if "transformers" in sys.modules:
    _register()
elif not any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
    sys.meta_path.insert(0, _AfterImport("transformers", _register))
