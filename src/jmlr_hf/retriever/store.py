"""The flat token store of a :class:`~jmlr_hf.DocumentIndex` and exact MaxSim over it.

Token vectors of all passages are stored flat (``[n_tokens, dim]``, bfloat16) with each passage's token
count; every backend (:mod:`jmlr_hf.retriever.backends`) searches such a store.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["STORE_DTYPE", "VectorStore", "segment_maxsim"]

#: dtype of the stored token vectors.
STORE_DTYPE = torch.bfloat16

# Similarity entries (query rows x tokens) scored in one block by segment_maxsim: 2**22 float32
# entries are 16 MiB, so no temporary crosses glibc's 32 MiB mmap threshold (fresh mmapped memory
# page-faults on every call, which cost more than the arithmetic on a small VM).
_SEGMENT_BLOCK_ENTRIES = 1 << 22


def segment_maxsim(
    q: torch.Tensor, qmask: torch.Tensor, vectors: torch.Tensor, lengths: np.ndarray
) -> torch.Tensor:
    """MaxSim of queries ``[nq, Lq, dim]`` against consecutive passages stored flat in ``vectors``
    (``lengths`` tokens each, all > 0) -> ``[nq, n_passages]`` float32."""
    nq, lq, dim = q.shape
    rows = q.reshape(nq * lq, dim).to(vectors.dtype)
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    best = np.empty((nq * lq, len(lengths)), dtype=np.float32)
    block_tokens = max(_SEGMENT_BLOCK_ENTRIES // max(nq * lq, 1), 1)
    p0 = 0
    while p0 < len(lengths):  # blocks of whole passages, about block_tokens tokens each
        p1 = int(np.searchsorted(offsets, offsets[p0] + block_tokens, side="right")) - 1
        p1 = min(max(p1, p0 + 1), len(lengths))
        t0, t1 = int(offsets[p0]), int(offsets[p1])
        sim = (rows @ vectors[t0:t1].T).float().numpy()
        best[:, p0:p1] = np.maximum.reduceat(sim, offsets[p0:p1] - t0, axis=1)
        p0 = p1
    return (torch.from_numpy(best).reshape(nq, lq, -1) * qmask[:, :, None].float()).sum(1)


class VectorStore:
    """Flat token vectors ``[n_tokens, dim]`` plus per-passage token counts."""

    def __init__(self, vectors: torch.Tensor, doclens: torch.Tensor) -> None:
        self.vectors = vectors.to(STORE_DTYPE).contiguous()
        self.doclens = doclens.to(torch.int64).numpy()
        self.offsets = np.zeros(len(self.doclens) + 1, dtype=np.int64)
        np.cumsum(self.doclens, out=self.offsets[1:])

    @property
    def num_passages(self) -> int:
        return len(self.doclens)

    @property
    def num_tokens(self) -> int:
        return int(self.vectors.shape[0])

    def passage_slice(self, p0: int, p1: int) -> torch.Tensor:
        """The token vectors of passages ``p0:p1`` (consecutive in the store)."""
        return self.vectors[int(self.offsets[p0]) : int(self.offsets[p1])]

    def chunks(self, max_tokens: int) -> Iterator[tuple[int, int]]:
        """Consecutive passage ranges ``(p0, p1)`` of about ``max_tokens`` tokens (at least one passage)."""
        p0 = 0
        while p0 < self.num_passages:
            p1 = int(np.searchsorted(self.offsets, self.offsets[p0] + max_tokens, side="right")) - 1
            p1 = min(max(p1, p0 + 1), self.num_passages)
            yield p0, p1
            p0 = p1

    def gather(self, passages: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """The token vectors of ``passages`` (in that order) concatenated, and each one's token count."""
        starts, lengths = self.offsets[passages], self.doclens[passages]
        token_index = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        return self.vectors[torch.from_numpy(token_index)], lengths

    def extend(self, vectors: torch.Tensor, doclens: torch.Tensor) -> None:
        """Append passages (flat ``vectors`` and their ``doclens``) in place."""
        self.__init__(
            torch.cat([self.vectors, vectors.to(STORE_DTYPE)]),
            torch.cat([torch.from_numpy(self.doclens), doclens]),
        )
