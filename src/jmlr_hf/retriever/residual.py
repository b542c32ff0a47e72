"""Residual compression of ColBERT token vectors (ColBERTv2 / PLAID style) and the compressed token store.

A :class:`ResidualCodec` holds ``n_centroids`` unit-norm centroids (spherical k-means over a sample of
token vectors) and a scalar quantizer of the residuals. Each token vector ``v`` is stored as

- the id of its nearest centroid ``c`` (by inner product): ``uint16`` while ``n_centroids <= 65536``,
  else ``int32``;
- its residual ``v - c``, every dimension quantized to ``nbits`` (1, 2 or 4) bits: the bucket of the
  value among ``2**nbits - 1`` cutoffs (quantiles of the residual values of the fitting sample, all
  dimensions pooled, as ColBERTv2's ``bucket_cutoffs``), bit-packed with :func:`numpy.packbits`.

Decompression is ``c + bucket_weights[bucket]`` per dimension, L2-normalized, as bfloat16; a bucket's
weight is the mean of the sample residual values that fall in it.

Bit layout (ColBERTv2's): dimension ``d`` owns the bits ``d * nbits .. d * nbits + nbits - 1`` of the
row, least significant bit of the bucket first; :func:`numpy.packbits` packs the row's bits big-endian,
8 to a byte. A row is ``dim * nbits / 8`` bytes.

Bytes per token (:meth:`ResidualCodec.bytes_per_token`): at dim 128 and nbits 2, 2 bytes of centroid id +
32 bytes of residual = **34 B**, against 256 B for a bfloat16 vector (nbits 1: 18 B, nbits 4: 66 B). The
codec itself (centroids as float32) is ``n_centroids * dim * 4`` bytes, shared by all tokens.

:class:`ResidualStore` is the compressed token store of a :class:`~jmlr_hf.DocumentIndex`: codes and
packed residuals as numpy arrays (read-only memory maps of ``.npy`` files once saved), decompressing only
the tokens a search asks for.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .store import TokenStore, map_npy

__all__ = ["ResidualCodec", "ResidualStore", "default_n_centroids", "pack_buckets", "unpack_buckets"]

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
    """Centroids + quantized residuals (ColBERTv2): see the module docstring for the layout.

    Example:
        >>> import torch
        >>> x = torch.nn.functional.normalize(torch.randn(2000, 64), dim=-1)
        >>> codec = ResidualCodec.fit(x, n_centroids=16, nbits=2)
        >>> codes, packed = codec.compress(x)
        >>> codes.dtype, packed.shape, codec.bytes_per_token(64)
        (dtype('uint16'), (2000, 16), 18)
        >>> codec.decompress(codes, packed).dtype
        torch.bfloat16
    """

    def __init__(
        self,
        centroids: torch.Tensor | np.ndarray,
        bucket_cutoffs: torch.Tensor | np.ndarray,
        bucket_weights: torch.Tensor | np.ndarray,
        nbits: int,
    ) -> None:
        if nbits not in (1, 2, 4):
            raise ValueError(f"nbits must be 1, 2 or 4, got {nbits}")
        self.centroids = _as_numpy_f32(centroids)
        self.bucket_cutoffs = _as_numpy_f32(bucket_cutoffs).reshape(-1)
        self.bucket_weights = _as_numpy_f32(bucket_weights).reshape(-1)
        self.nbits = int(nbits)
        if len(self.bucket_cutoffs) != 2**nbits - 1 or len(self.bucket_weights) != 2**nbits:
            raise ValueError(
                f"nbits={nbits} needs {2**nbits - 1} bucket cutoffs and {2**nbits} weights, got "
                f"{len(self.bucket_cutoffs)} and {len(self.bucket_weights)}"
            )
        if (self.dim * nbits) % 8:
            raise ValueError(f"dim * nbits must be a multiple of 8 (dim {self.dim}, nbits {nbits})")
        # byte value -> the weights of the 8 / nbits dimensions it holds, for decompression by lookup
        per_byte = 8 // nbits
        byte_bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).reshape(
            256, per_byte, nbits
        )
        byte_buckets = (byte_bits << np.arange(nbits, dtype=np.uint8)).sum(axis=2)
        self._byte_weights = self.bucket_weights[byte_buckets]  # [256, per_byte] float32
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

    def bytes_per_token(self, dim: int | None = None) -> int:
        """Stored bytes of one token vector of ``dim`` dimensions (default: the codec's): centroid id + residual."""
        dim = self.dim if dim is None else dim
        return self.code_dtype.itemsize + dim * self.nbits // 8

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
        codec.bucket_cutoffs, codec.bucket_weights = cls._buckets(residuals, nbits)
        return cls(codec.centroids, codec.bucket_cutoffs, codec.bucket_weights, nbits)

    @staticmethod
    def _buckets(residuals: np.ndarray, nbits: int) -> tuple[np.ndarray, np.ndarray]:
        """Cutoffs (the ``i / 2**nbits`` quantiles of all residual values) and weights (each bucket's mean)."""
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

    def quantize(self, residuals: np.ndarray) -> np.ndarray:
        """Residuals ``[n, dim]`` float32 -> packed buckets ``[n, dim * nbits / 8]`` uint8."""
        buckets = np.searchsorted(self.bucket_cutoffs, residuals, side="left").astype(np.uint8)
        return pack_buckets(buckets, self.nbits)

    def compress(
        self, vectors: torch.Tensor | np.ndarray, block_tokens: int = BLOCK_TOKENS
    ) -> tuple[np.ndarray, np.ndarray]:
        """``vectors`` ``[n, dim]`` (tensor, array or read-only memory map; any float dtype) -> ``(codes [n],
        packed residuals [n, dim * nbits / 8] uint8)``, in blocks of ``block_tokens`` (bounded memory)."""
        n = int(vectors.shape[0])
        codes = np.empty(n, dtype=self.code_dtype)
        packed = np.empty((n, self.dim * self.nbits // 8), dtype=np.uint8)
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
        """``(codes [n], packed [n, dim * nbits / 8])`` -> L2-normalized token vectors ``[n, dim]`` bfloat16."""
        codes = codes.numpy() if isinstance(codes, torch.Tensor) else codes
        packed = packed.numpy() if isinstance(packed, torch.Tensor) else packed
        n = len(codes)
        out = torch.empty((n, self.dim), dtype=torch.bfloat16)
        for a in range(0, n, block_tokens):
            b = min(a + block_tokens, n)
            x = self.centroids[np.asarray(codes[a:b], dtype=np.int64)]
            x += self._byte_weights[np.asarray(packed[a:b])].reshape(b - a, self.dim)
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
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> ResidualCodec:
        """The codec of :meth:`state_dict`."""
        return cls(
            state["centroids"], state["bucket_cutoffs"], state["bucket_weights"], int(state["nbits"][0])
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
        if residuals.ndim != 2 or residuals.shape[1] != codec.dim * codec.nbits // 8:
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
    ) -> ResidualStore:
        """Compress flat ``vectors`` ``[n_tokens, dim]`` of passages with ``doclens`` tokens each.

        ``codec``: fitted codec; default one fitted on ``sample_tokens`` random tokens (``n_centroids``
        default ColBERTv2's for the whole collection). ``folder``: write the ``.npy`` files there while
        compressing (bounded memory) and return the store memory-mapped from them.
        """
        n_tokens = int(vectors.shape[0])
        doclens = doclens.numpy() if isinstance(doclens, torch.Tensor) else np.asarray(doclens)
        if codec is None:
            rng = np.random.default_rng(seed)
            rows = np.sort(rng.choice(n_tokens, size=min(sample_tokens, n_tokens), replace=False))
            sample = vectors[torch.from_numpy(rows)] if isinstance(vectors, torch.Tensor) else vectors[rows]
            if n_centroids is None:
                n_centroids = min(default_n_centroids(n_tokens), len(rows))
            codec = ResidualCodec.fit(sample, n_centroids=n_centroids, nbits=nbits, seed=seed)
        if folder is None:
            codes, packed = codec.compress(vectors)
            return cls(codec, codes, packed, doclens)
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        open_memmap = np.lib.format.open_memmap
        width = codec.dim * codec.nbits // 8
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

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> dict[str, Any]:
        """Write ``codes.npy``, ``residuals.npy``, ``doclens.npy`` and ``codec.safetensors`` into ``folder``
        (arrays already memory-mapped from those files stay); returns the parameters for :meth:`load`."""
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        for name, array in (("codes.npy", self.codes), ("residuals.npy", self.residuals)):
            target = root / name
            if (
                isinstance(array, np.memmap)
                and array.filename
                and Path(array.filename).resolve() == target.resolve()
            ):
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
