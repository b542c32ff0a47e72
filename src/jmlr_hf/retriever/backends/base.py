"""The interface every :class:`~jmlr_hf.DocumentIndex` backend implements (as PyLate's ``indexes/base.py``).

The index owns the passages and their token vectors (a :class:`~jmlr_hf.retriever.store.TokenStore`); a
backend only decides how to search them: it is built over a store, told when passages are appended,
searched with encoded queries, and saved into / loaded from the index's folder (its parameters go to
``index_config.json``, its own files beside it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from ..store import TokenStore

__all__ = ["IndexBackend", "IndexFileError", "read_index_file"]

_T = TypeVar("_T")


class IndexBackend(ABC):
    """A way of searching the token vectors of a :class:`~jmlr_hf.retriever.store.TokenStore`."""

    #: The name saved in ``index_config.json`` (``DocumentIndex.build(backend=name)``).
    name: ClassVar[str]
    #: The files :meth:`save` writes into the index folder.
    files: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def needed_files(cls, params: dict[str, Any]) -> tuple[str, ...]:
        """The files a folder saved with ``params`` (its ``index_config.json`` entry) must hold."""
        return cls.files

    @abstractmethod
    def build(self, store: TokenStore) -> None:
        """Index every passage of ``store`` (after encoding the corpus, and at each refresh)."""

    @abstractmethod
    def add(self, store: TokenStore, first_new: int) -> None:
        """Index the passages ``first_new:`` that were just appended to ``store``."""

    @abstractmethod
    def search(self, store: TokenStore, q: torch.Tensor, qmask: torch.Tensor, k: int) -> Any:
        """The top ``k`` passages of each query ``q [nq, Lq, dim]`` (``qmask [nq, Lq]``) by MaxSim:
        a ``torch.return_types.topk`` whose ``values`` and ``indices`` are ``[nq, k]``."""

    @abstractmethod
    def save(self, folder: Path) -> dict[str, Any]:
        """Write the backend's own files to ``folder``; returns its parameters for ``index_config.json``."""

    @classmethod
    @abstractmethod
    def load(cls, folder: Path, params: dict[str, Any]) -> IndexBackend:
        """The backend saved in ``folder`` with ``params`` (raises :class:`IndexFileError` for a bad file)."""


class IndexFileError(ValueError):
    """A file of a saved index is missing, truncated or corrupt."""


def read_index_file(path: Path, reader: Callable[[str], _T]) -> _T:
    """``reader(path)``, any failure raised as :class:`IndexFileError` naming the file."""
    if not path.is_file():
        raise IndexFileError(f"{path}: missing from the saved index (an interrupted save?)")
    try:
        return reader(str(path))
    except Exception as err:  # safetensors, arrow, faiss and json each raise their own types
        raise IndexFileError(
            f"{path}: cannot be read, the file is truncated or corrupt ({type(err).__name__}: {err}); "
            "rebuild the index or use an intact copy"
        ) from err
