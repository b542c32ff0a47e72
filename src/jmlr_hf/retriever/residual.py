"""Residual compression of ColBERT token vectors (ColBERTv2 / PLAID style) and the compressed token store.

A :class:`ResidualCodec` holds ``n_centroids`` unit-norm centroids (spherical k-means over a sample of
token vectors) and a scalar quantizer of the residuals. Each token vector ``v`` is stored as

- the id of its nearest centroid ``c`` (by inner product): ``uint16`` while ``n_centroids <= 65536``,
  else ``int32``;
- its residual ``r = v - c`` as a row of bytes: every dimension quantized to ``nbits`` (1, 2 or 4) bits,
  the bucket of the value among ``2**nbits - 1`` cutoffs, bit-packed with :func:`numpy.packbits`; then,
  for a ``scaled`` codec (the default), a float16 scale ``s``.

Two layouts (:meth:`ResidualCodec.fit`'s ``per_dim`` and ``scaled``):

- the default (``per_dim=True, scaled=True``): the buckets are those of the unit-norm residual
  ``r / |r|``, with cutoffs and weights of each dimension of its own (the ``i / 2**nbits`` quantiles and
  the bucket means of that dimension over the fitting sample; free per token); the row ends with
  ``s = <r, w> / <w, w>`` (``w`` the token's bucket weights: the least-squares scale), little-endian float16.
  Decompression is ``c + s * w``.
- ColBERTv2's (``per_dim=False, scaled=False``): buckets of the raw residual, cutoffs and weights pooled
  over all dimensions (``bucket_cutoffs`` / ``bucket_weights``); decompression ``c + w``.

Either way the result is L2-normalized (re-normalizing is better: recall@30 0.61 against 0.55 without,
below) and returned as bfloat16.

Bit layout (ColBERTv2's): dimension ``d`` owns the bits ``d * nbits .. d * nbits + nbits - 1`` of the
row, least significant bit of the bucket first; :func:`numpy.packbits` packs the row's bits big-endian,
8 to a byte: ``dim * nbits / 8`` bytes, then 2 bytes of scale when scaled (:meth:`ResidualCodec.row_bytes`).

Bytes per token (:meth:`ResidualCodec.bytes_per_token`): at dim 128 and nbits 2, 2 bytes of centroid id +
32 bytes of buckets + 2 bytes of scale = **36 B** (ColBERTv2's layout: 34 B), against 256 B for a bfloat16
vector. The codec itself (centroids as float32) is ``n_centroids * dim * 4`` bytes, shared by all tokens.

Why this default (measured 2026-12-02 on the first 10,000 real NGC passages, 1.46M tokens of the default
retriever, 30 MIRAGE MedQA questions; recall@30 of exact MaxSim over the decompressed vectors against exact
MaxSim over the bf16 vectors; k-means 4 iterations on 262,144 tokens, buckets fitted on 131,072 tokens):

=============================================  =======  ======  ==================  ================
setting                                        B/token  cosine  recall@30 full-len  recall@30 32-tok
=============================================  =======  ======  ==================  ================
1,024 centroids, ColBERTv2 layout              34       0.954   0.617               0.566
1,024, per-dim buckets                         34       0.955   0.613               0.554
1,024, per-dim, not re-normalized              34       0.955   0.546               0.501
1,024, pooled buckets + float16 scale          36       0.959   0.631               0.568
1,024, per-dim of unit residual + scale        36       0.965   0.643               0.571
4,096, per-dim of unit residual + scale        36       0.975   0.710               0.664
16,384, ColBERTv2 layout                       34       0.973   0.701               0.669
16,384, per-dim of unit residual + scale       36       0.981   0.733               0.711
16,384, ColBERTv2 layout, nbits 4              66       0.994   0.864               0.833
16,384, per-dim of unit residual + scale, 4b   68       0.997   0.900               0.880
16,384, default + 3rd bit on 32 dims (*)       40       0.984   0.759               0.739
=============================================  =======  ======  ==================  ================

Per-dimension buckets alone change little; with the unit-norm residual and a per-token scale they add
about 0.03 recall at 2 bytes; more centroids add the most (16,384 is ColBERTv2's count for 1.5M tokens).
(*) Spending the last 4 bytes of a 40-byte budget on a third bit for the 32 dimensions of largest
variance adds 0.02-0.03 more (measured outside the codec; it needs a mixed-width row layout, not built).
recall@30 against the bf16 exact top-30 stays far below 0.97 at <= 40 B (even 66-68 B give 0.86-0.90):
on this collection MaxSim scores crowd near the 30th place, and a per-token cosine of 0.98 moves that
boundary. (Full-length recall ranks each question's bf16 top 1,000 passages, 10% of the collection; over
the whole collection the default's is the same, 0.733.)

:class:`ResidualStore` is the compressed token store of a :class:`~jmlr_hf.DocumentIndex`: codes and
residual rows as numpy arrays (read-only memory maps of ``.npy`` files once saved), decompressing only
the tokens a search asks for.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .store import TokenStore, map_npy

__all__ = [
    "Bf16Bits",
    "ResidualCodec",
    "ResidualStore",
    "default_n_centroids",
    "pack_buckets",
    "unpack_buckets",
]

#: Tokens compressed / decompressed per block (a float32 block at dim 128 is 16 MiB).
BLOCK_TOKENS = 1 << 15
#: Above this many centroids, tokens are assigned through an IVF index over the centroids (64 centroids
#: a list, probing ``ASSIGN_NPROBE`` lists) instead of comparing each token with every centroid. On real
#: NGC vectors with 16,384 centroids (2-core CPU, under load): 34k tokens/s, the exact nearest centroid for
#: 97.6% of tokens and 99.8% of its similarity on average; exactly, 65,536 centroids cost about 5k tokens/s.
EXACT_ASSIGN_MAX_CENTROIDS = 4096
ASSIGN_NPROBE = 16
#: Sample tokens whose residuals set the bucket cutoffs and weights (all of a smaller sample).
BUCKET_SAMPLE_TOKENS = 1 << 17


def default_n_centroids(n_tokens: int) -> int:
    """ColBERTv2's centroid count for ``n_tokens`` token vectors: ``2**floor(log2(16 * sqrt(n_tokens)))``."""
    return int(2 ** math.floor(math.log2(16 * math.sqrt(max(n_tokens, 1)))))


def _as_numpy_f32(vectors: torch.Tensor | np.ndarray) -> np.ndarray:
    """A float32 C-contiguous numpy copy/view of ``vectors`` (a bf16 tensor goes through float32)."""
    if isinstance(vectors, torch.Tensor):
        return np.ascontiguousarray(vectors.detach().cpu().float().numpy())
    return np.ascontiguousarray(vectors, dtype=np.float32)


def pack_buckets(buckets: np.ndarray, nbits: int) -> np.ndarray:
    """Bucket indices ``[n, dim]`` (each ``< 2**nbits``) -> packed bits ``[n, dim * nbits / 8]`` uint8."""
    n, dim = buckets.shape
    shifts = np.arange(nbits, dtype=np.uint8)
    bits = (buckets.astype(np.uint8)[:, :, None] >> shifts) & 1  # [n, dim, nbits], LSB first
    return np.packbits(bits.reshape(n, dim * nbits), axis=1)


def unpack_buckets(packed: np.ndarray, nbits: int) -> np.ndarray:
    """Inverse of :func:`pack_buckets`: ``[n, dim * nbits / 8]`` uint8 -> bucket indices ``[n, dim]`` uint8."""
    n = packed.shape[0]
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=1).reshape(n, -1, nbits)
    return (bits << np.arange(nbits, dtype=np.uint8)).sum(axis=2, dtype=np.uint8)


class ResidualCodec:
    """Centroids + quantized residuals (ColBERTv2-style): see the module docstring for the two layouts.

    Example:
        >>> import torch
        >>> x = torch.nn.functional.normalize(torch.randn(2000, 64), dim=-1)
        >>> codec = ResidualCodec.fit(x, n_centroids=16, nbits=2)
        >>> codes, packed = codec.compress(x)
        >>> codes.dtype, packed.shape, codec.bytes_per_token(64)  # 2 + 64 * 2 / 8 + 2 (float16 scale)
        (dtype('uint16'), (2000, 18), 20)
        >>> codec.decompress(codes, packed).dtype
        torch.bfloat16
    """

    def __init__(
        self,
        centroids: torch.Tensor | np.ndarray,
        bucket_cutoffs: torch.Tensor | np.ndarray,
        bucket_weights: torch.Tensor | np.ndarray,
        nbits: int,
        scaled: bool = False,
    ) -> None:
        if nbits not in (1, 2, 4):
            raise ValueError(f"nbits must be 1, 2 or 4, got {nbits}")
        self.centroids = _as_numpy_f32(centroids)
        self.nbits = int(nbits)
        self.scaled = bool(scaled)
        options = 2**nbits
        cutoffs, weights = _as_numpy_f32(bucket_cutoffs), _as_numpy_f32(bucket_weights)
        if cutoffs.ndim == 2:  # per dimension: [dim, options - 1] and [dim, options]
            ok = cutoffs.shape == (self.dim, options - 1) and weights.shape == (self.dim, options)
        else:  # shared by all dimensions (ColBERTv2)
            cutoffs, weights = cutoffs.reshape(-1), weights.reshape(-1)
            ok = len(cutoffs) == options - 1 and len(weights) == options
        if not ok:
            raise ValueError(
                f"nbits={nbits} needs {options - 1} bucket cutoffs and {options} weights (per dimension "
                f"of {self.dim}, or shared), got shapes {cutoffs.shape} and {weights.shape}"
            )
        self.bucket_cutoffs, self.bucket_weights = cutoffs, weights
        if (self.dim * nbits) % 8:
            raise ValueError(f"dim * nbits must be a multiple of 8 (dim {self.dim}, nbits {nbits})")
        # (byte position, byte value) -> the weights of the 8 / nbits dimensions it holds, for
        # decompression by lookup: row ``256 * j + value`` of ``[n_bytes * 256, per_byte]`` float32
        per_byte = 8 // nbits
        byte_bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).reshape(
            256, per_byte, nbits
        )
        byte_buckets = (byte_bits << np.arange(nbits, dtype=np.uint8)).sum(axis=2)  # [256, per_byte]
        dim_weights = self.per_dim_weights  # [dim, options]
        n_bytes = self.dim // per_byte
        dims = np.arange(self.dim).reshape(n_bytes, 1, per_byte)
        self._byte_weights = np.ascontiguousarray(
            dim_weights[dims, byte_buckets[None]].reshape(n_bytes * 256, per_byte), dtype=np.float32
        )
        self._byte_base = (256 * np.arange(n_bytes, dtype=np.int64))[None]
        self._assigner: Any = None

    # ------------------------------------------------------------------ properties
    @property
    def n_centroids(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def code_dtype(self) -> np.dtype:
        """``uint16`` while the centroid ids fit, else ``int32``."""
        return np.dtype(np.uint16) if self.n_centroids <= 1 << 16 else np.dtype(np.int32)

    @property
    def per_dim(self) -> bool:
        """Whether every dimension has its own bucket cutoffs and weights."""
        return self.bucket_cutoffs.ndim == 2

    @property
    def per_dim_weights(self) -> np.ndarray:
        """Bucket weights ``[dim, 2**nbits]`` (shared weights repeated for every dimension)."""
        if self.per_dim:
            return self.bucket_weights
        return np.broadcast_to(self.bucket_weights, (self.dim, len(self.bucket_weights)))

    def row_bytes(self, dim: int | None = None) -> int:
        """Bytes of one token's residual row: packed buckets (+ 2 for the float16 scale when :attr:`scaled`)."""
        dim = self.dim if dim is None else dim
        return dim * self.nbits // 8 + (2 if self.scaled else 0)

    def bytes_per_token(self, dim: int | None = None) -> int:
        """Stored bytes of one token vector of ``dim`` dimensions (default: the codec's): centroid id + residual row."""
        return self.code_dtype.itemsize + self.row_bytes(dim)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        sample: torch.Tensor | np.ndarray,
        n_centroids: int | None = None,
        nbits: int = 2,
        seed: int = 0,
        niter: int = 20,
        n_tokens: int | None = None,
        per_dim: bool = True,
        scaled: bool = True,
    ) -> ResidualCodec:
        """Fit centroids and residual buckets on ``sample`` ``[n, dim]`` (unit-norm token vectors).

        Args:
            sample: token vectors to fit on (a sample of the collection; any float dtype).
            n_centroids: k-means centroids; default ColBERTv2's :func:`default_n_centroids` of
                ``n_tokens``, capped at ``len(sample)``.
            nbits: bits per residual dimension (1, 2 or 4).
            seed: k-means seed (faiss).
            niter: k-means iterations.
            n_tokens: tokens of the whole collection, for the default ``n_centroids`` (default ``len(sample)``).
            per_dim: bucket cutoffs and weights of each dimension (default); ``False``: ColBERTv2's, all
                dimensions pooled.
            scaled: buckets of the unit-norm residual and a float16 scale per token (default; 2 bytes a
                token more); ``False``: ColBERTv2's buckets of the raw residual.
        """
        import faiss

        x = _as_numpy_f32(sample)
        n, dim = x.shape
        if n_centroids is None:
            n_centroids = min(default_n_centroids(n_tokens or n), n)
        if not 1 <= n_centroids <= n:
            raise ValueError(
                f"n_centroids must be in [1, {n}] for a sample of {n} vectors, got {n_centroids}"
            )
        kmeans = faiss.Kmeans(
            dim,
            int(n_centroids),
            niter=niter,
            spherical=True,
            seed=seed,
            max_points_per_centroid=max(256, -(-n // n_centroids)),  # use the whole sample
            verbose=False,
        )
        kmeans.train(x)
        centroids = kmeans.centroids / np.linalg.norm(kmeans.centroids, axis=1, keepdims=True).clip(1e-12)
        codec = cls(centroids, np.zeros(2**nbits - 1), np.zeros(2**nbits), nbits)
        if n > BUCKET_SAMPLE_TOKENS:  # quantiles and means of 16M residual values are plenty
            x = x[np.sort(np.random.default_rng(seed).choice(n, BUCKET_SAMPLE_TOKENS, replace=False))]
        residuals = x - codec.centroids[codec.assign(x)]
        if scaled:
            residuals = residuals / np.linalg.norm(residuals, axis=1, keepdims=True).clip(1e-12)
        if per_dim:
            cutoffs, weights = zip(*(cls._buckets(residuals[:, d], nbits) for d in range(dim)))
            return cls(codec.centroids, np.stack(cutoffs), np.stack(weights), nbits, scaled)
        return cls(codec.centroids, *cls._buckets(residuals, nbits), nbits, scaled)

    @staticmethod
    def _buckets(residuals: np.ndarray, nbits: int) -> tuple[np.ndarray, np.ndarray]:
        """Cutoffs (the ``i / 2**nbits`` quantiles of all the values) and weights (each bucket's mean)."""
        values = residuals.reshape(-1).astype(np.float32)
        options = 2**nbits
        cutoffs = np.quantile(values, np.arange(1, options) / options).astype(np.float32)
        buckets = np.searchsorted(cutoffs, values, side="left")
        counts = np.bincount(buckets, minlength=options)
        sums = np.bincount(buckets, weights=values, minlength=options)
        # an empty bucket (degenerate sample) gets its cutoffs' midpoint
        edges = np.concatenate([[values.min()], cutoffs, [values.max()]])
        mids = (edges[:-1] + edges[1:]) / 2
        weights = np.where(counts > 0, sums / np.maximum(counts, 1), mids).astype(np.float32)
        return cutoffs, weights

    # ------------------------------------------------------------------ compression
    def _assign_index(self) -> Any:
        """The faiss index that finds a token's centroid (built once): exact inner product up to
        :data:`EXACT_ASSIGN_MAX_CENTROIDS`, an IVF over the centroids beyond."""
        if self._assigner is None:
            import faiss

            if self.n_centroids <= EXACT_ASSIGN_MAX_CENTROIDS:
                index = faiss.IndexFlatIP(self.dim)
            else:
                nlist = 2 ** int(math.log2(self.n_centroids // 64))  # 64 centroids a list
                index = faiss.IndexIVFFlat(
                    faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT
                )
                index.cp.seed = 0
                index.train(self.centroids)
                index.nprobe = ASSIGN_NPROBE
            index.add(self.centroids)
            self._assigner = index
        return self._assigner

    def assign(self, vectors: torch.Tensor | np.ndarray) -> np.ndarray:
        """The nearest centroid (inner product) of each vector ``[n, dim]`` -> ``[n]`` in :attr:`code_dtype`."""
        x = _as_numpy_f32(vectors)
        _, ids = self._assign_index().search(x, 1)
        ids = ids[:, 0]
        if (ids < 0).any():  # an IVF probe that found nothing (never with real data): exact fallback
            miss = np.flatnonzero(ids < 0)
            ids[miss] = (x[miss] @ self.centroids.T).argmax(1)
        return ids.astype(self.code_dtype)

    def buckets(self, values: np.ndarray) -> np.ndarray:
        """The bucket of every value ``[n, dim]`` (how many cutoffs of its dimension lie below it) -> uint8."""
        if not self.per_dim:
            return np.searchsorted(self.bucket_cutoffs, values, side="left").astype(np.uint8)
        return (values[:, :, None] > self.bucket_cutoffs[None]).sum(axis=2, dtype=np.uint8)

    def quantize(self, residuals: np.ndarray) -> np.ndarray:
        """Residuals ``[n, dim]`` float32 -> rows ``[n, row_bytes]`` uint8: packed buckets, then (when
        :attr:`scaled`) the little-endian float16 scale."""
        if not self.scaled:
            return pack_buckets(self.buckets(residuals), self.nbits)
        norms = np.linalg.norm(residuals, axis=1, keepdims=True).clip(1e-12)
        buckets = self.buckets(residuals / norms)
        weights = self.per_dim_weights[np.arange(self.dim)[None], buckets]  # [n, dim]
        # least-squares scale of the bucket weights onto the residual (not its norm: the weights are
        # bucket means, shorter than the unit-norm residual they stand for)
        scale = (residuals * weights).sum(1) / np.maximum((weights * weights).sum(1), 1e-12)
        scale16 = scale.astype("<f2").view(np.uint8).reshape(-1, 2)
        return np.concatenate([pack_buckets(buckets, self.nbits), scale16], axis=1)

    def compress(
        self, vectors: torch.Tensor | np.ndarray, block_tokens: int = BLOCK_TOKENS
    ) -> tuple[np.ndarray, np.ndarray]:
        """``vectors`` ``[n, dim]`` (tensor, array or read-only memory map; any float dtype) -> ``(codes [n],
        residual rows [n, row_bytes] uint8)``, in blocks of ``block_tokens`` (bounded memory)."""
        n = int(vectors.shape[0])
        codes = np.empty(n, dtype=self.code_dtype)
        packed = np.empty((n, self.row_bytes()), dtype=np.uint8)
        self.compress_into(vectors, codes, packed, block_tokens)
        return codes, packed

    def compress_into(
        self,
        vectors: torch.Tensor | np.ndarray,
        codes: np.ndarray,
        packed: np.ndarray,
        block_tokens: int = BLOCK_TOKENS,
    ) -> None:
        """:meth:`compress` into preallocated ``codes`` / ``packed`` (e.g. ``.npy`` memory maps opened for writing)."""
        for a in range(0, int(vectors.shape[0]), block_tokens):
            x = _as_numpy_f32(vectors[a : a + block_tokens])
            ids = self.assign(x)
            codes[a : a + len(x)] = ids
            packed[a : a + len(x)] = self.quantize(x - self.centroids[ids])

    def decompress(
        self,
        codes: np.ndarray | torch.Tensor,
        packed: np.ndarray | torch.Tensor,
        block_tokens: int = BLOCK_TOKENS,
    ) -> torch.Tensor:
        """``(codes [n], residual rows [n, row_bytes])`` -> L2-normalized token vectors ``[n, dim]`` bfloat16."""
        codes = codes.numpy() if isinstance(codes, torch.Tensor) else codes
        packed = packed.numpy() if isinstance(packed, torch.Tensor) else packed
        n = len(codes)
        out = torch.empty((n, self.dim), dtype=torch.bfloat16)
        for a in range(0, n, block_tokens):
            b = min(a + block_tokens, n)
            rows = np.asarray(packed[a:b])
            n_bytes = self.dim * self.nbits // 8
            x = self._byte_weights[rows[:, :n_bytes] + self._byte_base].reshape(b - a, self.dim)
            if self.scaled:
                x *= np.ascontiguousarray(rows[:, n_bytes:]).view("<f2").astype(np.float32)
            x += self.centroids[np.asarray(codes[a:b], dtype=np.int64)]
            t = torch.from_numpy(x)
            out[a:b] = torch.nn.functional.normalize(t, dim=1)
        return out

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors (for safetensors): centroids, bucket cutoffs and weights, nbits."""
        return {
            "centroids": torch.from_numpy(self.centroids.copy()),
            "bucket_cutoffs": torch.from_numpy(self.bucket_cutoffs.copy()),
            "bucket_weights": torch.from_numpy(self.bucket_weights.copy()),
            "nbits": torch.tensor([self.nbits], dtype=torch.int64),
            "scaled": torch.tensor([int(self.scaled)], dtype=torch.int64),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> ResidualCodec:
        """The codec of :meth:`state_dict`."""
        scaled = bool(int(state["scaled"][0])) if "scaled" in state else False
        return cls(
            state["centroids"],
            state["bucket_cutoffs"],
            state["bucket_weights"],
            int(state["nbits"][0]),
            scaled,
        )

    def save(self, path: str | Path) -> None:
        """Write :meth:`state_dict` to a safetensors file."""
        from safetensors.torch import save_file

        save_file(self.state_dict(), str(path))

    @classmethod
    def load(cls, path: str | Path) -> ResidualCodec:
        """The codec saved by :meth:`save`."""
        from safetensors.torch import load_file

        return cls.from_state_dict(load_file(str(path)))


class Bf16Bits:
    """A uint16 array of bfloat16 bits (e.g. a memory-mapped ``vectors.npy``) read as bfloat16 tensors, slice
    by slice (what :meth:`ResidualCodec.compress` and :meth:`ResidualStore.from_vectors` index)."""

    def __init__(self, bits: np.ndarray) -> None:
        self.bits, self.shape = bits, bits.shape

    def __len__(self) -> int:
        return len(self.bits)

    def __getitem__(self, key: Any) -> torch.Tensor:
        from .store import bf16_from_bits

        return bf16_from_bits(np.ascontiguousarray(self.bits[key]))


class ResidualStore(TokenStore):
    """The compressed token store: per token a centroid id and packed residual (see the module docstring).

    ``codes`` / ``residuals`` may be read-only memory maps (:meth:`load`); :meth:`token_range` and
    :meth:`take_tokens` decompress only the tokens asked for, as bfloat16.
    """

    FILES = ("codes.npy", "residuals.npy", "doclens.npy", "codec.safetensors")

    def __init__(
        self, codec: ResidualCodec, codes: np.ndarray, residuals: np.ndarray, doclens: np.ndarray
    ) -> None:
        super().__init__(doclens)
        self.codec = codec
        self.codes = codes
        self.residuals = residuals
        if self.offsets[-1] != len(codes) or len(codes) != len(residuals):
            raise ValueError(
                f"{len(codes)} codes and {len(residuals)} residual rows for doclens totalling {self.offsets[-1]}"
            )
        if residuals.ndim != 2 or residuals.shape[1] != codec.row_bytes():
            raise ValueError(f"residual rows of {residuals.shape[1:]} bytes do not fit the codec")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_vectors(
        cls,
        vectors: torch.Tensor | np.ndarray,
        doclens: torch.Tensor | np.ndarray,
        codec: ResidualCodec | None = None,
        folder: str | Path | None = None,
        n_centroids: int | None = None,
        nbits: int = 2,
        sample_tokens: int = 1 << 18,
        seed: int = 0,
        niter: int = 4,
        per_dim: bool = True,
        scaled: bool = True,
    ) -> ResidualStore:
        """Compress flat ``vectors`` ``[n_tokens, dim]`` of passages with ``doclens`` tokens each.

        ``codec``: fitted codec; default one fitted on ``sample_tokens`` random tokens (``n_centroids``
        default ColBERTv2's for the whole collection). ``folder``: write the ``.npy`` files there while
        compressing (bounded memory) and return the store memory-mapped from them. ``vectors``: a tensor, a
        float array or a :class:`Bf16Bits` view of bfloat16 bits. ``nbits``, ``seed``, ``niter``, ``per_dim``,
        ``scaled``: as in :meth:`ResidualCodec.fit` (``niter`` 4 k-means iterations, ColBERTv2's ``kmeans_niters``:
        what the measurements of the module docstring used; a 16,384-centroid fit on 262,144 tokens is minutes).
        """
        n_tokens = int(vectors.shape[0])
        doclens = doclens.numpy() if isinstance(doclens, torch.Tensor) else np.asarray(doclens)
        if codec is None:
            rng = np.random.default_rng(seed)
            rows = np.sort(rng.choice(n_tokens, size=min(sample_tokens, n_tokens), replace=False))
            sample = vectors[torch.from_numpy(rows)] if isinstance(vectors, torch.Tensor) else vectors[rows]
            if n_centroids is None:
                n_centroids = min(default_n_centroids(n_tokens), len(rows))
            codec = ResidualCodec.fit(
                sample,
                n_centroids=n_centroids,
                nbits=nbits,
                seed=seed,
                niter=niter,
                per_dim=per_dim,
                scaled=scaled,
            )
        if folder is None:
            codes, packed = codec.compress(vectors)
            return cls(codec, codes, packed, doclens)
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        for name in cls.FILES:  # unlinked, never rewritten in place (a hard link elsewhere keeps its content)
            (root / name).unlink(missing_ok=True)
        open_memmap = np.lib.format.open_memmap
        width = codec.row_bytes()
        codes = open_memmap(root / "codes.npy", mode="w+", dtype=codec.code_dtype, shape=(n_tokens,))
        packed = open_memmap(root / "residuals.npy", mode="w+", dtype=np.uint8, shape=(n_tokens, width))
        codec.compress_into(vectors, codes, packed)
        codes.flush()
        packed.flush()
        del codes, packed
        np.save(root / "doclens.npy", doclens.astype(np.int64))
        codec.save(root / "codec.safetensors")
        return cls.load(root)

    # ------------------------------------------------------------------ the TokenStore interface
    @property
    def dim(self) -> int:
        return self.codec.dim

    @property
    def bytes_per_token(self) -> float:
        """Centroid id + packed residual (the codec's centroids, shared by all tokens, not included)."""
        return float(self.codec.bytes_per_token())

    def token_range(self, t0: int, t1: int) -> torch.Tensor:
        """Decompressed tokens ``t0:t1`` -> ``[t1 - t0, dim]`` bfloat16."""
        return self.codec.decompress(self.codes[t0:t1], self.residuals[t0:t1])

    def take_tokens(self, token_index: np.ndarray) -> torch.Tensor:
        """Decompressed tokens at ``token_index`` (in that order) -> ``[len(token_index), dim]`` bfloat16."""
        token_index = np.asarray(token_index, dtype=np.int64)
        return self.codec.decompress(self.codes[token_index], self.residuals[token_index])

    def extend(self, codes: np.ndarray, residuals: np.ndarray, doclens: np.ndarray | torch.Tensor) -> None:
        """Append passages already compressed with this store's codec (``codes``, ``residuals`` rows and
        their ``doclens``) in place; a mapped store moves to RAM."""
        doclens = doclens.numpy() if isinstance(doclens, torch.Tensor) else np.asarray(doclens)
        self.__init__(  # type: ignore[misc]
            self.codec,
            np.concatenate([np.asarray(self.codes), np.asarray(codes, dtype=self.codes.dtype)]),
            np.concatenate([np.asarray(self.residuals), np.asarray(residuals, dtype=np.uint8)]),
            np.concatenate([self.doclens, doclens.astype(np.int64)]),
        )

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> dict[str, Any]:
        """Write ``codes.npy``, ``residuals.npy``, ``doclens.npy`` and ``codec.safetensors`` into ``folder``
        (arrays already memory-mapped from those files stay); returns the parameters for :meth:`load`."""
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        for name, array in (("codes.npy", self.codes), ("residuals.npy", self.residuals)):
            target = root / name
            filename = getattr(array, "filename", None)
            if isinstance(array, np.memmap) and filename and target.exists() and target.samefile(filename):
                continue
            tmp = target.with_suffix(".tmp.npy")
            np.save(tmp, np.asarray(array))
            tmp.replace(target)
        np.save(root / "doclens.npy", self.doclens)
        self.codec.save(root / "codec.safetensors")
        return self.params()

    def params(self) -> dict[str, Any]:
        """The store's parameters (for ``index_config.json``)."""
        return {
            "kind": "residual",
            "nbits": self.codec.nbits,
            "n_centroids": self.codec.n_centroids,
            "per_dim": self.codec.per_dim,
            "scaled": self.codec.scaled,
            "bytes_per_token": self.bytes_per_token,
            "dim": self.dim,
            "num_tokens": self.num_tokens,
            "num_passages": self.num_passages,
        }

    @classmethod
    def load(
        cls, folder: str | Path, params: dict[str, Any] | None = None, mmap: bool = True
    ) -> ResidualStore:
        """The store saved in ``folder``; ``codes`` / ``residuals`` memory-mapped read-only unless ``mmap=False``.

        ``params`` (from :meth:`save`) are checked against the files when given."""
        root = Path(folder)
        codec = ResidualCodec.load(root / "codec.safetensors")
        read = map_npy if mmap else (lambda path: np.load(path, allow_pickle=False))
        store = cls(
            codec,
            read(root / "codes.npy"),
            read(root / "residuals.npy"),
            np.load(root / "doclens.npy", allow_pickle=False),
        )
        for key in ("nbits", "n_centroids", "dim", "num_tokens", "num_passages"):
            if params and key in params:
                have = getattr(codec, key) if key in ("nbits", "n_centroids") else getattr(store, key)
                if int(params[key]) != int(have):
                    raise ValueError(
                        f"{root}: {key} is {have} in the files, {params[key]} in the index config"
                    )
        return store
