"""DocumentIndex: passages, their ColBERT token vectors, and exact or faiss-accelerated MaxSim search.

Token vectors of all passages are stored flat (``[n_tokens, dim]``, bfloat16) with each
passage's token count. Two backends search them:

- ``"exact"``: brute-force MaxSim over every passage, chunked so that the score matrix of one
  chunk is all that is ever materialised.
- ``"faiss"``: token-level candidate generation (an IVF index over token vectors, each query
  token fetches its nearest document tokens), then exact MaxSim rerank of the candidate passages.
  faiss-gpu is used when the package has GPU support and CUDA is available.

On disk (``save``/``load``): ``index_config.json``, ``passages.parquet`` (arrow),
``vectors.safetensors`` and, for faiss, ``faiss.index`` (faiss's own format). No pickle.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..data.corpus import CorpusSource, chunk_corpus, load_corpus, passage_text_for_encoding
from .modeling_jmlr_retriever import EncodedBatch, JMLRRetriever

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

Backend = Literal["auto", "exact", "faiss"]
INDEX_FORMAT_VERSION = 1
AUTO_FAISS_MIN_PASSAGES = 2048
_STORE_DTYPE = torch.bfloat16
# The files of a saved index (faiss.index for the faiss backend only), the config first.
_INDEX_FILES = ("index_config.json", "passages.parquet", "vectors.safetensors", "faiss.index")


class SearchHit(TypedDict):
    """One ranked result of :meth:`DocumentIndex.search`."""

    passage_id: str
    doc_id: str
    title: str
    text: str
    score: float


class StaleIndexError(ValueError):
    """The retriever's weights are not the ones the index vectors were computed with."""


# ---------------------------------------------------------------------- scoring on the flat store
# Similarity entries (query rows x tokens) scored in one block by _segment_maxsim: 2**22 float32
# entries are 16 MiB, so no temporary crosses glibc's 32 MiB mmap threshold (fresh mmapped memory
# page-faults on every call, which cost more than the arithmetic on a small VM).
_SEGMENT_BLOCK_ENTRIES = 1 << 22


def _segment_maxsim(
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


def _approximate_maxsim(
    rows: np.ndarray, columns: np.ndarray, sims: np.ndarray, fill: np.ndarray, width: int
) -> np.ndarray:
    """``sum_r max(fill[r], best hit of (r, c))`` for every column ``c < width``, in O(hits).

    ``rows`` / ``columns`` / ``sims`` list the hits (query token, candidate, similarity), each row's hits
    best first (faiss returns them sorted), so the first hit of a (row, column) pair is its best. The
    sum is ``fill``'s total plus, per pair, how much its best hit exceeds the row's fill: no
    ``[query tokens, candidates]`` matrix, whose size grows with the query length.
    """
    key = rows.astype(np.int64) * width + columns
    _, first = np.unique(key, return_index=True)  # first occurrence = best hit of the pair
    gain = np.maximum(sims[first] - fill[rows[first]], 0.0)
    return float(fill.sum()) + np.bincount(columns[first], weights=gain, minlength=width)


class _ExactBackend:
    """Chunked brute-force MaxSim over every passage."""

    name = "exact"

    def __init__(self, chunk_tokens: int = 262_144) -> None:
        self.chunk_tokens = chunk_tokens

    def build(self, store: _VectorStore) -> None:  # nothing to build
        return None

    def add(self, store: _VectorStore, first_new: int) -> None:
        return None

    def search(self, store: _VectorStore, q: torch.Tensor, qmask: torch.Tensor, k: int):
        scores = []
        for p0, p1 in store.chunks(self.chunk_tokens):
            scores.append(_segment_maxsim(q, qmask, store.passage_slice(p0, p1), store.doclens[p0:p1]))
        return torch.cat(scores, dim=1).topk(k, dim=1)

    def save(self, folder: Path) -> dict[str, Any]:
        return {"chunk_tokens": self.chunk_tokens}

    @classmethod
    def load(cls, folder: Path, params: dict[str, Any]) -> _ExactBackend:
        return cls(chunk_tokens=int(params.get("chunk_tokens", 262_144)))


class _FaissBackend:
    """IVF over token vectors for candidates, then exact MaxSim rerank.

    Every query token fetches its ``tokens_per_query_token`` nearest document tokens (``nprobe``
    of ``nlist`` lists; 4-bit PQ fast-scan codes on CPU, 8-bit scalar quantization when the index
    goes to a GPU). The passages of those tokens are the candidates; beyond ``max_rerank`` of them
    only the best by an approximate MaxSim built from the retrieved similarities are kept, and
    these are scored exactly on the stored bf16 vectors. Defaults tuned on 10,000 NGC passages
    with MedQA questions on a 2-core CPU (docs/benchmarks.md): recall@30 about 0.995 against
    the exact backend. Short queries (mostly [MASK] expansion tokens) make the approximate score
    less reliable; raise ``max_rerank`` for them.

    A query longer than 32 tokens (a whole MedQA vignette is about 170) shares the token hits of a
    32-token query, ``32 * tokens_per_query_token``, among its tokens, but each token still fetches
    at least ``min_tokens_per_query_token``: its many tokens find the same passages with fewer hits
    each, and the search cost grows far less than its length (docs/benchmarks.md, "Full-length
    questions"). Each query is searched alone, without its padding, so its results never depend on
    the other queries of the batch.
    """

    #: Queries up to this many tokens get ``tokens_per_query_token`` hits per token.
    HIT_BUDGET_TOKENS = 32

    name = "faiss"
    # Candidate passages reranked exactly per query (pruned by an approximate score beyond that).

    def __init__(
        self,
        nlist: int | None = None,
        nprobe: int = 32,
        tokens_per_query_token: int = 512,
        use_gpu: bool | None = None,
        max_rerank: int = 512,
        min_tokens_per_query_token: int = 128,
    ) -> None:
        self.max_rerank = max_rerank
        self.min_tokens_per_query_token = min_tokens_per_query_token
        self.nlist = nlist
        self.nprobe = nprobe
        self.tokens_per_query_token = tokens_per_query_token
        self.use_gpu = use_gpu
        self.index: Any = None

    @staticmethod
    def _faiss():
        try:
            import faiss
        except ImportError as err:  # pragma: no cover - faiss-cpu is a dependency
            raise ImportError("The faiss backend needs faiss: pip install faiss-cpu (or faiss-gpu)") from err
        return faiss

    def _search_index(self) -> Any:
        """The index searched: the CPU index, or its GPU copy (made once) when faiss has GPU support and
        CUDA is available (``use_gpu=None``, the default) or ``use_gpu=True``."""
        if not self._wants_gpu():
            return self.index
        if getattr(self, "_gpu_index", None) is None or self._gpu_source is not self.index:
            self._gpu_index, self._gpu_source = self._maybe_gpu(self.index), self.index
        return self._gpu_index

    def _maybe_gpu(self, index: Any) -> Any:
        faiss = self._faiss()
        if self._wants_gpu():
            logger.info("Moving the faiss index to the GPU")
            self._gpu_res = faiss.StandardGpuResources()
            try:  # this process's GPU (each process of a multi-GPU run has its own current device)
                return faiss.index_cpu_to_gpu(self._gpu_res, torch.cuda.current_device(), index)
            except RuntimeError as err:  # e.g. a fast-scan index built on a CPU-only machine
                logger.warning("Searching the faiss index on the CPU: it cannot move to the GPU (%s)", err)
        return index

    def _wants_gpu(self) -> bool:
        faiss = self._faiss()
        want = self.use_gpu if self.use_gpu is not None else torch.cuda.is_available()
        return bool(want and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0)

    def build(self, store: _VectorStore) -> None:
        faiss = self._faiss()
        n_tokens, dim = store.vectors.shape
        nlist = self.nlist or int(2 ** round(math.log2(max(64.0, 2 * math.sqrt(n_tokens)))))
        nlist = max(1, min(nlist, n_tokens // 39 or 1))
        self.nlist = nlist
        quantizer = faiss.IndexFlatIP(dim)
        if dim % 4 == 0 and not self._wants_gpu():
            # 4-bit PQ with SIMD "fast scan" (2 dimensions per sub-quantizer): scanning the probed
            # lists costs about half of what 8-bit scalar quantization does, and the approximate
            # similarities only pick candidates, which are scored exactly afterwards.
            index = faiss.IndexIVFPQFastScan(quantizer, dim, nlist, dim // 2, 4, faiss.METRIC_INNER_PRODUCT)
        else:  # faiss-gpu has no fast-scan IVF; 8-bit scalar quantization runs on both
            index = faiss.IndexIVFScalarQuantizer(
                quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
            )
        rng = np.random.default_rng(0)
        sample_size = min(n_tokens, 40 * nlist)  # faiss wants >= 39 training points per centroid
        sample = rng.choice(n_tokens, size=sample_size, replace=False) if sample_size < n_tokens else None
        vectors = store.vectors if sample is None else store.vectors[torch.from_numpy(np.sort(sample))]
        index.cp.niter = 10
        index.train(np.ascontiguousarray(vectors.float().numpy()))
        self.index = index
        self.add(store, 0)

    def add(self, store: _VectorStore, first_new: int) -> None:
        start = int(store.offsets[first_new])
        block = 1 << 15  # 16 MiB of float32 per call
        for a in range(start, store.vectors.shape[0], block):
            self.index.add(np.ascontiguousarray(store.vectors[a : a + block].float().numpy()))
        self.index.nprobe = self.nprobe
        self._gpu_index = None  # a GPU copy made before no longer holds every vector

    def hits_per_token(self, n_tokens: int) -> int:
        """Nearest document tokens fetched for each of a query's ``n_tokens`` vectors."""
        tpq = self.tokens_per_query_token
        if n_tokens <= self.HIT_BUDGET_TOKENS:
            return tpq
        return max(min(self.min_tokens_per_query_token, tpq), tpq * self.HIT_BUDGET_TOKENS // n_tokens)

    def search(self, store: _VectorStore, q: torch.Tensor, qmask: torch.Tensor, k: int):
        all_scores, all_ids = [], []
        for i in range(q.shape[0]):
            rows = q[i][qmask[i].bool()] if qmask[i].any() else q[i][:1]
            tpq = self.hits_per_token(len(rows))
            sims, token_ids = self._search_index().search(np.ascontiguousarray(rows.float().numpy()), tpq)
            cands = self._candidates(store, sims, token_ids, np.ones(len(rows), dtype=bool), k)
            scores = self._rerank(store, q[i : i + 1], qmask[i : i + 1], cands)
            top = scores.topk(k)
            all_scores.append(top.values)
            all_ids.append(torch.from_numpy(cands)[top.indices])
        return torch.return_types.topk((torch.stack(all_scores), torch.stack(all_ids)))

    def _candidates(
        self, store: _VectorStore, sims: np.ndarray, token_ids: np.ndarray, valid_rows: np.ndarray, k: int
    ) -> np.ndarray:
        """Sorted passage indices to rerank for one query, from its token hits ``[Lq, tpq]``.

        Every passage with a retrieved token is a candidate. When there are more than
        ``max_rerank`` of them, they are ranked by an approximate MaxSim (per query token the
        best retrieved similarity of the passage's tokens; for a query token that retrieved none
        of them, half the smallest similarity that token retrieved) and the best ``max_rerank``
        are kept.
        """
        hit = (token_ids >= 0) & valid_rows[:, None]
        rows = np.nonzero(hit)[0]
        passages = self._token_passages(store)[token_ids[hit]]
        limit = max(self.max_rerank, k)
        n_passages = store.num_passages
        if n_passages <= self._DENSE_CANDIDATES_MAX:  # per-passage arrays: no sort needed
            present = np.zeros(n_passages, dtype=bool)
            present[passages] = True
            cands = np.flatnonzero(present)
            inverse, width = passages, n_passages
        else:
            cands, inverse = np.unique(passages, return_inverse=True)
            width = len(cands)
        if len(cands) > limit:
            n_hits = hit.sum(1)
            last = sims[np.arange(len(sims)), np.maximum(n_hits - 1, 0)]
            fill = np.where(n_hits > 0, 0.5 * last, 0.0).astype(np.float32)
            score = _approximate_maxsim(rows, inverse, sims[hit], fill, width)
            if width == n_passages:
                score = score[cands]
            cands = np.sort(cands[np.argpartition(-score, limit - 1)[:limit]])
        if len(cands) < k:  # too few candidates: top up with the first passages not yet in the list
            extra = np.setdiff1d(np.arange(min(n_passages, k + len(cands))), cands)[: k - len(cands)]
            cands = np.concatenate([cands, extra])
        return cands

    # Up to this many passages, candidate bookkeeping uses arrays over all passages instead of
    # sorting the hits (np.unique).
    _DENSE_CANDIDATES_MAX = 1 << 17

    def _token_passages(self, store: _VectorStore) -> np.ndarray:
        """The passage of every token of ``store`` (cached per store layout)."""
        if getattr(self, "_token_passage_offsets", None) is not store.offsets:
            dtype = np.int32 if store.num_passages < 2**31 else np.int64
            self._token_passage = np.repeat(np.arange(store.num_passages, dtype=dtype), store.doclens)
            self._token_passage_offsets = store.offsets
        return self._token_passage

    # Candidate vectors are gathered and scored in blocks of at most this many tokens (24 MiB of
    # bf16 vectors at dim 128, so max_rerank=512 passages of up to 180 tokens are one block): every
    # temporary stays below glibc's 32 MiB mmap threshold, above which each call would page-fault
    # fresh memory.
    _RERANK_BLOCK_TOKENS = 96 * 1024

    def _rerank(self, store: _VectorStore, q: torch.Tensor, qmask: torch.Tensor, cands: np.ndarray):
        """Exact MaxSim of one query ``[1, Lq, dim]`` against the candidate passages -> ``[n_cands]``."""
        lengths = store.doclens[cands]
        starts = store.offsets[cands]
        cum = np.zeros(len(cands) + 1, dtype=np.int64)
        np.cumsum(lengths, out=cum[1:])
        scores = torch.empty(len(cands), dtype=torch.float32)
        p0 = 0
        while p0 < len(cands):
            p1 = int(np.searchsorted(cum, cum[p0] + self._RERANK_BLOCK_TOKENS, side="right")) - 1
            p1 = min(max(p1, p0 + 1), len(cands))
            n_tok = int(cum[p1] - cum[p0])
            token_index = np.repeat(starts[p0:p1] - cum[p0:p1] + cum[p0], lengths[p0:p1]) + np.arange(n_tok)
            block = store.vectors.index_select(0, torch.from_numpy(token_index))
            scores[p0:p1] = _segment_maxsim(q, qmask, block, lengths[p0:p1])[0]
            p0 = p1
        return scores

    def save(self, folder: Path) -> dict[str, Any]:
        self._faiss().write_index(self.index, str(folder / "faiss.index"))
        return {
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "tokens_per_query_token": self.tokens_per_query_token,
            "max_rerank": self.max_rerank,
            "min_tokens_per_query_token": self.min_tokens_per_query_token,
        }

    @classmethod
    def load(cls, folder: Path, params: dict[str, Any]) -> _FaissBackend:
        backend = cls(
            nlist=params.get("nlist"),
            nprobe=int(params.get("nprobe", 8)),
            tokens_per_query_token=int(params.get("tokens_per_query_token", 64)),
        )
        backend.min_tokens_per_query_token = int(params.get("min_tokens_per_query_token", 128))
        if "max_rerank" in params:
            backend.max_rerank = int(params["max_rerank"])
        else:  # saved before candidates were pruned: rerank every candidate, as that version did
            backend.max_rerank = 1 << 62
        backend.index = _read_index_file(folder / "faiss.index", cls._faiss().read_index)
        backend.index.nprobe = backend.nprobe
        return backend


class _VectorStore:
    """Flat token vectors ``[n_tokens, dim]`` plus per-passage token counts."""

    def __init__(self, vectors: torch.Tensor, doclens: torch.Tensor) -> None:
        self.vectors = vectors.to(_STORE_DTYPE).contiguous()
        self.doclens = doclens.to(torch.int64).numpy()
        self.offsets = np.zeros(len(self.doclens) + 1, dtype=np.int64)
        np.cumsum(self.doclens, out=self.offsets[1:])

    @property
    def num_passages(self) -> int:
        return len(self.doclens)

    def passage_slice(self, p0: int, p1: int) -> torch.Tensor:
        return self.vectors[int(self.offsets[p0]) : int(self.offsets[p1])]

    def chunks(self, max_tokens: int):
        p0 = 0
        while p0 < self.num_passages:
            p1 = int(np.searchsorted(self.offsets, self.offsets[p0] + max_tokens, side="right")) - 1
            p1 = min(max(p1, p0 + 1), self.num_passages)
            yield p0, p1
            p0 = p1

    def gather(self, passages: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        starts, lengths = self.offsets[passages], self.doclens[passages]
        token_index = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        return self.vectors[torch.from_numpy(token_index)], lengths

    def extend(self, vectors: torch.Tensor, doclens: torch.Tensor) -> None:
        self.__init__(
            torch.cat([self.vectors, vectors.to(_STORE_DTYPE)]),
            torch.cat([torch.from_numpy(self.doclens), doclens]),
        )


_BACKENDS = {"exact": _ExactBackend, "faiss": _FaissBackend}


class DocumentIndex:
    """A searchable collection of passages encoded by a :class:`JMLRRetriever`.

    Build with :meth:`build`, query with :meth:`search`; :meth:`refresh` re-encodes every passage
    with the retriever's current weights (the trainer calls it every ``index_refresh_steps``).

    Example:
        >>> index = DocumentIndex.build(["Aspirin is ...", "Metformin is ..."], retriever)  # doctest: +SKIP
        >>> index.search(["first-line drug for type 2 diabetes"], k=1)[0][0]["doc_id"]  # doctest: +SKIP
        'doc-1'
    """

    def __init__(
        self,
        passages: dict[str, list[str]],
        store: _VectorStore,
        retriever: JMLRRetriever,
        backend: _ExactBackend | _FaissBackend,
        fingerprint: str,
        chunk_tokens: int,
        chunk_overlap: int,
        batch_size: int = 32,
    ) -> None:
        self.passages = passages
        self.store = store
        self.retriever = retriever
        self.backend = backend
        self.fingerprint = fingerprint
        self.chunk_tokens = chunk_tokens
        self.chunk_overlap = chunk_overlap
        self.batch_size = batch_size
        self.last_refresh_seconds: float | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        corpus: CorpusSource,
        retriever: JMLRRetriever,
        backend: Backend = "auto",
        chunk_tokens: int = 150,
        chunk_overlap: int = 32,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        **backend_kwargs: Any,
    ) -> DocumentIndex:
        """Chunk a corpus into passages, encode them and build the search backend.

        Args:
            corpus: list of strings, ``datasets.Dataset``, list of dicts, or a JSONL/JSON/Parquet
                path with ``{id, title, text}`` rows.
            retriever: the :class:`JMLRRetriever` that encodes passages (and later queries).
            backend: ``"exact"``, ``"faiss"`` or ``"auto"`` (faiss from 2,048 passages on).
            chunk_tokens / chunk_overlap: passage window and overlap, in retriever tokens.
            batch_size: encoding batch size.
            show_progress_bar: tqdm while encoding (default: for long corpora).
            **backend_kwargs: faiss options ``nlist``, ``nprobe``, ``tokens_per_query_token``, ``use_gpu``,
                ``max_rerank`` (candidates kept for the exact rerank; raise it for very short queries),
                ``min_tokens_per_query_token`` (hits per token of a long query, see ``_FaissBackend``).
        """
        docs = load_corpus(corpus)
        passages = chunk_corpus(docs, retriever._require_tokenizer(), chunk_tokens, chunk_overlap)
        n = len(passages["passage_id"])
        if backend == "auto":
            backend = "faiss" if n >= AUTO_FAISS_MIN_PASSAGES else "exact"
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be 'auto', 'exact' or 'faiss', got {backend!r}")
        engine = _BACKENDS[backend](**backend_kwargs)
        index = cls(passages, None, retriever, engine, "", chunk_tokens, chunk_overlap, batch_size)  # type: ignore[arg-type]
        index._encode_all(show_progress_bar)
        return index

    def _encode_texts(self, titles: Sequence[str], texts: Sequence[str], show_progress_bar: bool | None):
        strings = [passage_text_for_encoding(t, x) for t, x in zip(titles, texts)]
        return self.retriever.encode_documents_flat(
            strings, batch_size=self.batch_size, show_progress_bar=show_progress_bar, dtype=_STORE_DTYPE
        )

    def _encode_all(self, show_progress_bar: bool | None) -> None:
        t0 = time.perf_counter()
        vectors, doclens = self._encode_texts(
            self.passages["title"], self.passages["text"], show_progress_bar
        )
        t1 = time.perf_counter()
        self.store = _VectorStore(vectors, doclens)
        self.backend.build(self.store)
        self.fingerprint = self.retriever.weights_fingerprint()
        self.last_refresh_seconds = time.perf_counter() - t0
        logger.info(
            "Indexed %d passages (%d token vectors): encoding %.1fs, %s backend %.1fs",
            self.num_passages,
            self.store.vectors.shape[0],
            t1 - t0,
            self.backend.name,
            time.perf_counter() - t1,
        )

    def refresh(self, retriever: JMLRRetriever | None = None, show_progress_bar: bool | None = None) -> float:
        """Re-encode every passage with ``retriever`` (default: the index's own) and rebuild the
        backend. Returns the seconds it took."""
        if retriever is not None:
            self.retriever = retriever
        self._encode_all(show_progress_bar)
        return self.last_refresh_seconds or 0.0

    def add(self, docs: CorpusSource, show_progress_bar: bool | None = None) -> int:
        """Chunk, encode and append new documents; returns the number of passages added."""
        new_docs = load_corpus(docs)
        existing = set(self.passages["doc_id"])
        clash = [d for d in new_docs["id"] if d in existing]
        if clash:
            raise ValueError(f"Documents already in the index: {clash[:5]} ({len(clash)} in all)")
        if self.is_stale:
            raise StaleIndexError("The index is stale (the retriever changed); call refresh() before add()")
        new = chunk_corpus(
            new_docs, self.retriever._require_tokenizer(), self.chunk_tokens, self.chunk_overlap
        )
        vectors, doclens = self._encode_texts(new["title"], new["text"], show_progress_bar)
        first_new = self.num_passages
        for key in self.passages:
            self.passages[key].extend(new[key])
        self.store.extend(vectors, doclens)
        self.backend.add(self.store, first_new)
        return len(new["passage_id"])

    # ------------------------------------------------------------------ queries
    @property
    def num_passages(self) -> int:
        return len(self.passages["passage_id"])

    def __len__(self) -> int:
        return self.num_passages

    @property
    def is_stale(self) -> bool:
        """True when the retriever's weights differ from those the vectors were computed with."""
        return self.retriever.weights_fingerprint() != self.fingerprint

    def search_encoded(self, queries: EncodedBatch, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Search with already-encoded queries: ``(scores [nq, k], passage indices [nq, k])``."""
        self._check_k(k)
        q, qmask = queries[0].detach().cpu().float(), queries[1].detach().cpu().bool()
        top = self.backend.search(self.store, q, qmask, k)
        return top.values, top.indices

    def search(
        self, queries: str | Sequence[str], k: int = 10, batch_size: int = 64
    ) -> list[list[SearchHit]]:
        """Ranked hits (best first) for each query: ``passage_id``, ``doc_id``, ``title``, ``text``, ``score``."""
        if isinstance(queries, str):
            queries = [queries]
        self._check_k(k)
        for i, text in enumerate(queries):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"query {i} is empty or not a string: {text!r:.60}")
        results: list[list[SearchHit]] = []
        for start in range(0, len(queries), batch_size):
            encoded = self.retriever.encode_queries(
                queries[start : start + batch_size], show_progress_bar=False
            )
            scores, indices = self.search_encoded(encoded, k)
            for row_scores, row_ids in zip(scores.tolist(), indices.tolist()):
                results.append([self.hit(i, s) for i, s in zip(row_ids, row_scores)])
        return results

    def hit(self, passage_index: int, score: float) -> SearchHit:
        """The :class:`SearchHit` of the passage at ``passage_index``."""
        p = self.passages
        return SearchHit(
            passage_id=p["passage_id"][passage_index],
            doc_id=p["doc_id"][passage_index],
            title=p["title"][passage_index],
            text=p["text"][passage_index],
            score=float(score),
        )

    def _check_k(self, k: int) -> None:
        if not isinstance(k, int) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if k > self.num_passages:
            raise ValueError(
                f"k={k} is larger than the number of passages in the index ({self.num_passages})"
            )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the index to a folder (json + parquet + safetensors [+ faiss.index]).

        Files already there are unlinked first, never rewritten in place: a file hard-linked into another
        folder (checkpoints share an unchanged index that way) keeps its content there. ``index_config.json``
        is removed first and written last, so an interrupted save never looks like a saved index.
        """
        from safetensors.torch import save_file

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        for name in _INDEX_FILES:  # index_config.json first
            (folder / name).unlink(missing_ok=True)
        pq.write_table(pa.table(self.passages), str(folder / "passages.parquet"))
        save_file(
            {"vectors": self.store.vectors, "doclens": torch.from_numpy(self.store.doclens)},
            str(folder / "vectors.safetensors"),
        )
        config = {
            "format_version": INDEX_FORMAT_VERSION,
            "backend": self.backend.name,
            "backend_params": self.backend.save(folder),
            "retriever_fingerprint": self.fingerprint,
            "dim": int(self.store.vectors.shape[1]),
            "num_passages": self.num_passages,
            "chunk_tokens": self.chunk_tokens,
            "chunk_overlap": self.chunk_overlap,
            "batch_size": self.batch_size,
        }
        (folder / "index_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        retriever: JMLRRetriever,
        allow_stale: bool = False,
        expected_fingerprint: str | None = None,
    ) -> DocumentIndex:
        """Load a saved index for ``retriever``.

        Raises :class:`StaleIndexError` when the retriever's weights are not the ones that encoded
        the vectors; with ``allow_stale=True`` it only warns (call :meth:`refresh` to re-encode).
        ``expected_fingerprint``: the fingerprint the caller knows the vectors were encoded with (a
        checkpoint's index comes from the last refresh, older than the checkpoint's retriever): such a
        stale index loads with an info line. A missing, truncated or corrupt file raises
        :class:`IndexFileError` naming it.
        """
        from safetensors.torch import load_file

        folder = Path(path)
        config_file = folder / "index_config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{folder} is not a saved DocumentIndex (no index_config.json)")
        config = _read_index_file(config_file, lambda f: json.loads(Path(f).read_text(encoding="utf-8")))
        if config.get("format_version") != INDEX_FORMAT_VERSION:
            raise ValueError(
                f"{config_file}: unsupported index format version {config.get('format_version')}"
            )
        if config["dim"] != retriever.config.dim:
            raise ValueError(
                f"{folder}: index vectors have dim {config['dim']}, the retriever {retriever.config.dim}"
            )
        passages = _read_index_file(folder / "passages.parquet", lambda f: pq.read_table(f).to_pydict())
        tensors = _read_index_file(folder / "vectors.safetensors", load_file)
        store = _VectorStore(tensors["vectors"], tensors["doclens"])
        if store.num_passages != len(passages["passage_id"]):
            raise ValueError(
                f"{folder}: {store.num_passages} vector blocks for {len(passages['passage_id'])} passages"
            )
        backend = _BACKENDS[config["backend"]].load(folder, config.get("backend_params", {}))
        index = cls(
            passages,
            store,
            retriever,
            backend,
            config["retriever_fingerprint"],
            config["chunk_tokens"],
            config["chunk_overlap"],
            config.get("batch_size", 32),
        )
        index._check_fingerprint(folder, allow_stale, expected_fingerprint)
        return index

    def _check_fingerprint(self, folder: Path, allow_stale: bool, expected: str | None) -> None:
        """After :meth:`load`: accept, log, warn about or refuse vectors from other retriever weights."""
        if not self.is_stale:
            return
        if expected is not None and self.fingerprint == expected:
            logger.info(
                "%s: vectors encoded by the retriever weights of the last refresh (fingerprint %s), as "
                "expected; index.refresh() re-encodes them with the current weights",
                folder,
                expected[:12],
            )
            return
        message = (
            f"{folder}: the retriever's weights differ from the ones that encoded this index "
            "(fingerprint mismatch"
            + (f": expected {expected[:12]}, the index has {self.fingerprint[:12]})" if expected else ")")
        )
        if not allow_stale:
            raise StaleIndexError(message + "; pass allow_stale=True and call index.refresh(retriever)")
        logger.warning("%s; search uses stale vectors until index.refresh() is called", message)


class IndexFileError(ValueError):
    """A file of a saved index is missing, truncated or corrupt."""


def _read_index_file(path: Path, reader: Callable[[str], _T]) -> _T:
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


__all__ = ["DocumentIndex", "IndexFileError", "SearchHit", "StaleIndexError"]
