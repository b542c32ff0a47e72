"""The ``"exact"`` backend: chunked brute-force MaxSim over every passage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..store import TokenStore, segment_maxsim
from .base import IndexBackend

__all__ = ["ExactBackend"]


class ExactBackend(IndexBackend):
    """Chunked brute-force MaxSim over every passage."""

    name = "exact"

    def __init__(self, chunk_tokens: int = 262_144) -> None:
        self.chunk_tokens = chunk_tokens

    def build(self, store: TokenStore) -> None:  # nothing to build
        return None

    def add(self, store: TokenStore, first_new: int) -> None:
        return None

    def search(self, store: TokenStore, q: torch.Tensor, qmask: torch.Tensor, k: int):
        scores = []
        for p0, p1 in store.chunks(self.chunk_tokens):
            scores.append(segment_maxsim(q, qmask, store.passage_slice(p0, p1), store.doclens[p0:p1]))
        return torch.cat(scores, dim=1).topk(k, dim=1)

    def save(self, folder: Path) -> dict[str, Any]:
        return {"chunk_tokens": self.chunk_tokens}

    @classmethod
    def load(cls, folder: Path, params: dict[str, Any]) -> ExactBackend:
        return cls(chunk_tokens=int(params.get("chunk_tokens", 262_144)))
