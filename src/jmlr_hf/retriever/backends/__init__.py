"""The search backends of :class:`~jmlr_hf.DocumentIndex`, one module each, behind :class:`IndexBackend`."""

from __future__ import annotations

from .base import IndexBackend, IndexFileError, read_index_file
from .exact import ExactBackend
from .faiss import FaissBackend

#: Backends by the name ``DocumentIndex.build(backend=...)`` and ``index_config.json`` use.
BACKENDS: dict[str, type[IndexBackend]] = {ExactBackend.name: ExactBackend, FaissBackend.name: FaissBackend}

__all__ = ["BACKENDS", "ExactBackend", "FaissBackend", "IndexBackend", "IndexFileError", "read_index_file"]
