"""The token stores of a :class:`~jmlr_hf.DocumentIndex` and exact MaxSim over them.

Token vectors of all passages are stored flat (``[n_tokens, dim]``) with each passage's token count.
Every backend (:mod:`jmlr_hf.retriever.backends`) and the index read a store only through the
:class:`TokenStore` API (``token_range``, ``take_tokens`` and what is built on them), so a store may
keep its vectors in RAM, in a memory-mapped file (:class:`VectorStore`) or compressed (a subclass that
decompresses in those two methods).
"""

from __future__ import annotations

import mmap
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "STORE_DTYPE",
    "TokenStore",
    "VectorStore",
    "bf16_from_bits",
    "bf16_to_bits",
    "map_npy",
    "segment_maxsim",
]

#: dtype of the stored token vectors.
STORE_DTYPE = torch.bfloat16

# Similarity entries (query rows x tokens) scored in one block by segment_maxsim: 2**22 float32
# entries are 16 MiB, so no temporary crosses glibc's 32 MiB mmap threshold (fresh mmapped memory
# page-faults on every call, which cost more than the arithmetic on a small VM).
_SEGMENT_BLOCK_ENTRIES = 1 << 22
# Token vectors a block holds at most (fewer when the query rows would make its similarities pass
# _SEGMENT_BLOCK_ENTRIES).
_SEGMENT_BLOCK_TOKENS = 1 << 13


def _row_bucket(n: int) -> int:
    """``n`` rounded up to 16, 24, 32, 48, 64, 96, ... (``2**k`` or ``1.5 * 2**k``; at most a third more)."""
    size = 16
    while size < n:
        size = size * 3 // 2 if (size & (size - 1)) == 0 else size * 4 // 3
    return size


def segment_maxsim(
    q: torch.Tensor, qmask: torch.Tensor, vectors: torch.Tensor, lengths: np.ndarray
) -> torch.Tensor:
    """MaxSim of queries ``[nq, Lq, dim]`` against consecutive passages stored flat in ``vectors``
    (``lengths`` tokens each, all > 0) -> ``[nq, n_passages]`` float32.

    The products run in the vectors' dtype (bf16 for a store: the query rows are rounded to it) with a
    few fixed shapes: the query rows padded to a :func:`_row_bucket`, the tokens in blocks of one size
    (the last block zero-padded; padding never scores). On CPUs with bf16 matrix units every new
    matmul shape builds and caches a oneDNN kernel: with one shape per (query length, candidate tokens),
    and one per query length in the encoder, a search process grew by about 4.6 MiB a question without
    bound (26M-token store: +1,387 MiB over 300 full-length questions; docs/benchmarks.md), and float32
    products instead cost twice the time."""
    nq, lq, dim = q.shape
    n_rows = nq * lq
    rows = torch.zeros(_row_bucket(n_rows), dim, dtype=vectors.dtype)
    rows[:n_rows] = q.reshape(n_rows, dim)
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    n_tokens = int(offsets[-1])
    best = np.full((n_rows, len(lengths)), -np.inf, dtype=np.float32)
    block = min(_SEGMENT_BLOCK_TOKENS, max(256, 1 << (_SEGMENT_BLOCK_ENTRIES // len(rows)).bit_length() - 1))
    for t0 in range(0, n_tokens, block):
        t1 = min(t0 + block, n_tokens)
        chunk = vectors[t0:t1]
        if t1 - t0 < block:  # the last block, zero-padded to the one shape
            chunk = torch.zeros(block, dim, dtype=vectors.dtype)
            chunk[: t1 - t0] = vectors[t0:t1]
        sim = (rows @ chunk.T)[:n_rows, : t1 - t0].float().numpy()
        # the passages this block holds tokens of; a passage across blocks keeps the larger maximum
        p0 = int(np.searchsorted(offsets, t0, side="right")) - 1
        p1 = int(np.searchsorted(offsets, t1, side="left"))
        starts = np.maximum(offsets[p0:p1], t0) - t0
        np.maximum(best[:, p0:p1], np.maximum.reduceat(sim, starts, axis=1), out=best[:, p0:p1])
    return (torch.from_numpy(best).reshape(nq, lq, -1) * qmask[:, :, None].float()).sum(1)


def bf16_from_bits(bits: np.ndarray) -> torch.Tensor:
    """A bfloat16 tensor viewing the uint16 array ``bits`` (no copy; a read-only map stays read-only:
    the tensor must never be written to)."""
    with warnings.catch_warnings():  # torch warns that a read-only array gives a writable-looking tensor
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)


def bf16_to_bits(vectors: torch.Tensor) -> np.ndarray:
    """The uint16 bits of ``vectors`` in bfloat16 (a view when they already are)."""
    return vectors.to(STORE_DTYPE).contiguous().view(torch.int16).numpy().view(np.uint16)


def map_npy(path: str | os.PathLike, random_access: bool = True) -> np.memmap:
    """``path`` (a ``.npy`` file) memory-mapped read-only; with ``random_access`` the kernel is told not
    to read ahead (search touches a few scattered pages of a large file)."""
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    raw = getattr(array, "_mmap", None)
    if random_access and raw is not None and hasattr(mmap, "MADV_RANDOM"):
        try:
            raw.madvise(mmap.MADV_RANDOM)
        except (OSError, ValueError):  # e.g. an empty file
            pass
    return array


class TokenStore:
    """Flat token vectors of consecutive passages, read through :meth:`token_range` and :meth:`take_tokens`.

    Subclasses set ``doclens`` (via ``__init__``) and implement ``dim``, ``bytes_per_token``,
    ``token_range`` and ``take_tokens``; passage-level reads (:meth:`passage_slice`, :meth:`gather`,
    :meth:`chunks`) are built on them.
    """

    def __init__(self, doclens: np.ndarray | torch.Tensor) -> None:
        if isinstance(doclens, torch.Tensor):
            doclens = doclens.numpy()
        self.doclens = np.ascontiguousarray(doclens, dtype=np.int64)
        self.offsets = np.zeros(len(self.doclens) + 1, dtype=np.int64)
        np.cumsum(self.doclens, out=self.offsets[1:])

    @property
    def num_passages(self) -> int:
        return len(self.doclens)

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def dim(self) -> int:
        raise NotImplementedError

    @property
    def bytes_per_token(self) -> float:
        """Bytes one token vector takes in the store (its codes, for a compressed store)."""
        raise NotImplementedError

    def token_range(self, t0: int, t1: int) -> torch.Tensor:
        """The token vectors ``t0:t1`` as bfloat16 ``[t1 - t0, dim]``."""
        raise NotImplementedError

    def take_tokens(self, token_index: np.ndarray) -> torch.Tensor:
        """The token vectors at ``token_index`` (int64, any order) as bfloat16 ``[len, dim]``."""
        raise NotImplementedError

    def passage_slice(self, p0: int, p1: int) -> torch.Tensor:
        """The token vectors of passages ``p0:p1`` (consecutive in the store)."""
        return self.token_range(int(self.offsets[p0]), int(self.offsets[p1]))

    def chunks(self, max_tokens: int, start: int = 0) -> Iterator[tuple[int, int]]:
        """Consecutive passage ranges ``(p0, p1)`` of about ``max_tokens`` tokens (at least one passage),
        from passage ``start`` on."""
        p0 = start
        while p0 < self.num_passages:
            p1 = int(np.searchsorted(self.offsets, self.offsets[p0] + max_tokens, side="right")) - 1
            p1 = min(max(p1, p0 + 1), self.num_passages)
            yield p0, p1
            p0 = p1

    def token_blocks(self, t0: int, block_tokens: int) -> Iterator[torch.Tensor]:
        """The token vectors from ``t0`` on, ``block_tokens`` at a time (bounded memory)."""
        for a in range(t0, self.num_tokens, block_tokens):
            yield self.token_range(a, min(a + block_tokens, self.num_tokens))

    def gather(self, passages: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """The token vectors of ``passages`` (in that order) concatenated, and each one's token count."""
        passages = np.asarray(passages, dtype=np.int64)
        starts, lengths = self.offsets[passages], self.doclens[passages]
        token_index = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        return self.take_tokens(token_index), lengths


def _file_id(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def _file_position(array: np.memmap) -> int | None:
    """Where the first row of the memory-mapped ``array`` lies in its file (a view of a map may start past the
    map's ``offset``), or ``None`` when its rows are not consecutive in the file."""
    raw = getattr(array, "_mmap", None)
    if raw is None or not array.flags.c_contiguous:
        return None
    map_start = array.offset - array.offset % mmap.ALLOCATIONGRANULARITY  # numpy maps from a granule start
    return map_start + array.ctypes.data - np.frombuffer(raw, dtype=np.uint8).ctypes.data


class VectorStore(TokenStore):
    """bfloat16 token vectors ``[n_tokens, dim]`` plus per-passage token counts.

    ``vectors`` is a tensor in RAM, or the uint16 bits of a read-only memory map
    (:meth:`from_files`), which every process of a node shares through the page cache.
    """

    def __init__(self, vectors: torch.Tensor | np.ndarray, doclens: np.ndarray | torch.Tensor) -> None:
        super().__init__(doclens)
        if isinstance(vectors, np.ndarray):
            if vectors.dtype != np.uint16:
                raise ValueError(f"a store array holds bfloat16 bits as uint16, got {vectors.dtype}")
            self._bits: np.ndarray | None = vectors
            self._vectors = bf16_from_bits(vectors)
        else:
            self._bits = None
            self._vectors = vectors.to(STORE_DTYPE).contiguous()
        if self._vectors.ndim != 2 or self._vectors.shape[0] != self.num_tokens:
            raise ValueError(
                f"{tuple(self._vectors.shape)} vectors for {self.num_tokens} tokens of {self.num_passages} passages"
            )
        self.path: Path | None = Path(vectors.filename) if isinstance(vectors, np.memmap) else None
        # the mapped file's identity: gather() reads by path only while the path still names that file
        self._file_id = _file_id(os.stat(self.path)) if self.path is not None else None
        self._file_start = _file_position(vectors) if self.path is not None else None

    @classmethod
    def from_files(cls, vectors_file: str | os.PathLike, doclens_file: str | os.PathLike) -> VectorStore:
        """The store saved as ``vectors.npy`` (uint16 bits) and ``doclens.npy``, vectors memory-mapped."""
        return cls(map_npy(vectors_file), np.load(doclens_file, allow_pickle=False))

    @property
    def vectors(self) -> torch.Tensor:
        """All token vectors as one bfloat16 tensor (a view of the map for a mapped store: never write to it)."""
        return self._vectors

    @property
    def is_mapped(self) -> bool:
        """Whether the vectors are a memory map of a file."""
        return isinstance(self._bits, np.memmap)

    @property
    def dim(self) -> int:
        return int(self._vectors.shape[1])

    @property
    def bytes_per_token(self) -> float:
        return float(self.dim * 2)

    def token_range(self, t0: int, t1: int) -> torch.Tensor:
        return self._vectors[t0:t1]

    def take_tokens(self, token_index: np.ndarray) -> torch.Tensor:
        return self._vectors.index_select(0, torch.from_numpy(np.asarray(token_index, dtype=np.int64)))

    def gather(self, passages: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """The token vectors of ``passages`` (in that order) concatenated, and each one's token count.

        From a mapped store the rows are read with ``os.preadv`` from the same file, one read per run of
        consecutive passages: the bytes come from the page cache all processes share, as through the map,
        but they are not mapped into this process, so a long-running search process's RSS does not grow
        with every passage it ever reranked (through the map: +4.8 GiB over 200 x 512 random passages of the
        26M-token store; read: +0.1 GiB, and as fast, 8.4 against 9.5 ms for 512 passages)."""
        if self._file_start is None or not hasattr(os, "preadv"):
            return super().gather(passages)
        try:
            fd = os.open(self.path, os.O_RDONLY)  # type: ignore[arg-type]  # a mapped store has its path
        except OSError:  # the folder was removed or replaced: the map still holds the file
            return super().gather(passages)
        try:
            if _file_id(os.fstat(fd)) != self._file_id:  # another file now has that name
                return super().gather(passages)
            passages = np.asarray(passages, dtype=np.int64)
            starts, lengths = self.offsets[passages], self.doclens[passages]
            bits = self._bits
            row_bytes = int(bits.shape[1]) * bits.itemsize
            out = np.empty((int(lengths.sum()), bits.shape[1]), dtype=np.uint16)
            view = memoryview(out).cast("B")
            # runs of passages that follow each other in the file: one read each
            ends = starts + lengths
            run_start = np.flatnonzero(np.concatenate([[True], starts[1:] != ends[:-1]]))
            run_tokens = np.add.reduceat(lengths, run_start) if len(lengths) else lengths
            pos = 0
            for first, n_tok in zip(starts[run_start].tolist(), run_tokens.tolist()):
                want, at = n_tok * row_bytes, self._file_start + first * row_bytes
                done = 0
                while done < want:  # a read may return fewer bytes than asked
                    got = os.preadv(fd, [view[pos + done : pos + want]], at + done)
                    if got <= 0:
                        raise OSError(f"{self.path}: {want - done} bytes missing at offset {at + done}")
                    done += got
                pos += want
        finally:
            os.close(fd)
        return bf16_from_bits(out), lengths

    def extend(self, vectors: torch.Tensor, doclens: torch.Tensor) -> None:
        """Append passages (flat ``vectors`` and their ``doclens``) in place; a mapped store moves to RAM."""
        self.__init__(
            torch.cat([self._vectors, vectors.to(STORE_DTYPE)]),
            np.concatenate([self.doclens, np.asarray(doclens, dtype=np.int64)]),
        )
