"""The ``"faiss"`` backend: token-level candidates from a faiss IVF index, then exact MaxSim rerank.

faiss-gpu is used when the package has GPU support and CUDA is available.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..store import TokenStore, map_npy, segment_maxsim
from .base import IndexBackend, read_index_file

__all__ = ["FaissBackend", "TokenPassages", "approximate_maxsim", "passage_means"]

logger = logging.getLogger(__name__)


class TokenPassages:
    """The passage of any token id of a store, from its passage ``offsets`` ``[n_passages + 1]``, without a
    per-token array (4 bytes a token in every process: 105 MB at 26M tokens).

    A table of the passage at every ``BLOCK``-th token (1/256 of that) gives each token a first guess,
    then each step moves the tokens still past their guess's end one passage on: as many steps as a
    block holds passage starts, vectorized over the hits, instead of a binary search a hit.
    """

    BLOCK = 256

    def __init__(self, offsets: np.ndarray) -> None:
        self.offsets = offsets
        starts = np.arange(0, int(offsets[-1]), self.BLOCK, dtype=np.int64)
        dtype = np.int32 if len(offsets) < 2**31 else np.int64
        self.block_first = (np.searchsorted(offsets, starts, side="right") - 1).astype(dtype)

    def __call__(self, token_ids: np.ndarray) -> np.ndarray:
        passage = self.block_first[token_ids // self.BLOCK]
        todo = np.flatnonzero(self.offsets[passage + 1] <= token_ids)
        while len(todo):
            passage[todo] += 1
            todo = todo[self.offsets[passage[todo] + 1] <= token_ids[todo]]
        return passage


def approximate_maxsim(
    q: torch.Tensor, rows: np.ndarray, columns: np.ndarray, sims: np.ndarray, means: np.ndarray
) -> np.ndarray:
    """``sum_r max(q_r . means_c, best hit of (r, c))`` for every candidate ``c`` of ``means`` ``[n_cands, dim]``.

    ``q`` ``[Lq, dim]`` are the query's vectors, ``means`` the mean token vector of each candidate
    passage: ``q_r . means_c`` is the mean of query token ``r``'s similarities to the passage's tokens, so
    never above their maximum, the term MaxSim sums. ``rows`` / ``columns`` / ``sims`` list the faiss hits
    (query token, candidate, similarity); a hit raises its pair's term above the mean (one ``[Lq, n_cands]``
    matrix, the hits' maxima scattered in).
    """
    means_t = torch.from_numpy(np.ascontiguousarray(means, dtype=np.float32))
    scores = q.float() @ means_t.T  # [Lq, n_cands]
    index = torch.from_numpy(rows.astype(np.int64) * len(means) + columns)
    scores.view(-1).scatter_reduce_(0, index, torch.from_numpy(np.asarray(sims, dtype=np.float32)), "amax")
    return scores.sum(0).numpy()


def passage_means(store: TokenStore, start: int = 0, block_tokens: int = 1 << 15) -> np.ndarray:
    """The mean token vector of every passage of ``store`` from ``start`` on -> ``[n, dim]`` float32."""
    out = np.empty((store.num_passages - start, store.dim), dtype=np.float32)
    for p0, p1 in store.chunks(block_tokens, start):
        vectors = store.passage_slice(p0, p1).float().numpy()
        out[p0 - start : p1 - start] = _means(vectors, store.doclens[p0:p1])
    return out


def _means(vectors: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return np.add.reduceat(vectors, starts, axis=0) / lengths[:, None]


class FaissBackend(IndexBackend):
    """IVF over token vectors for candidates, then exact MaxSim rerank.

    Every query token fetches its ``tokens_per_query_token`` nearest document tokens (``nprobe``
    of ``nlist`` lists; 4-bit PQ fast-scan codes on CPU, 8-bit scalar quantization when the index
    goes to a GPU). The passages of those tokens are the candidates; beyond ``max_rerank`` of them
    only the best by an approximate MaxSim (:func:`approximate_maxsim`: per query token the best
    retrieved similarity, else its similarity to the passage's mean token vector) are kept, and
    these are scored exactly on the stored bf16 vectors. Defaults tuned on 10,000 NGC passages
    with MedQA questions on a 2-core CPU (docs/benchmarks.md): recall@30 about 0.995 against
    the exact backend. A store of tens of millions of tokens needs more hits and more reranked: at 26M
    tokens, ``nprobe=16, tokens_per_query_token=2048, max_rerank=1280`` gave recall@30 0.986 for 32-token
    queries at 49 ms p50 (the defaults: 0.918 at 31 ms). Attributes set on a loaded backend take effect
    at the next search. Short queries (mostly [MASK] expansion tokens) make the approximate score
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
    files = ("faiss.index", "passage_means.npy")
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
        #: Mean token vector of every passage ``[n_passages, dim]`` float32 (memory-mapped once saved).
        self.passage_means: np.ndarray | None = None

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

    def build(self, store: TokenStore) -> None:
        faiss = self._faiss()
        n_tokens, dim = store.num_tokens, store.dim
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
        # the training sample only is converted to float32, never the whole store
        vectors = store.token_range(0, n_tokens) if sample is None else store.take_tokens(np.sort(sample))
        index.cp.niter = 10
        index.train(np.ascontiguousarray(vectors.float().numpy()))
        del vectors
        self.index = index
        self.add(store, 0)

    def add(self, store: TokenStore, first_new: int) -> None:
        means = np.empty((store.num_passages - first_new, store.dim), dtype=np.float32)
        for p0, p1 in store.chunks(1 << 15, first_new):  # about 16 MiB of float32 per call
            vectors = store.passage_slice(p0, p1).float().numpy()
            self.index.add(np.ascontiguousarray(vectors))
            means[p0 - first_new : p1 - first_new] = _means(vectors, store.doclens[p0:p1])
        if first_new == 0:
            self.passage_means = means
        elif self.passage_means is not None and len(self.passage_means) == first_new:
            self.passage_means = np.concatenate([np.asarray(self.passage_means), means])
        else:  # loaded without them: all computed when first searched
            self.passage_means = None
        self.index.nprobe = self.nprobe
        self._gpu_index = None  # a GPU copy made before no longer holds every vector

    def hits_per_token(self, n_tokens: int) -> int:
        """Nearest document tokens fetched for each of a query's ``n_tokens`` vectors."""
        tpq = self.tokens_per_query_token
        if n_tokens <= self.HIT_BUDGET_TOKENS:
            return tpq
        return max(min(self.min_tokens_per_query_token, tpq), tpq * self.HIT_BUDGET_TOKENS // n_tokens)

    def search(self, store: TokenStore, q: torch.Tensor, qmask: torch.Tensor, k: int):
        index = self._search_index()
        if getattr(index, "nprobe", self.nprobe) != self.nprobe:  # set on a loaded index: takes effect now
            index.nprobe = self.nprobe
        all_scores, all_ids = [], []
        for i in range(q.shape[0]):
            # the query's own vectors only: its padding is neither searched nor reranked
            valid = qmask[i].bool()
            rows = q[i][valid] if valid.any() else q[i][:1]
            rows_mask = torch.full((1, len(rows)), bool(valid.any()))
            tpq = self.hits_per_token(len(rows))
            sims, token_ids = index.search(np.ascontiguousarray(rows.float().numpy()), tpq)
            cands = self._candidates(store, rows, sims, token_ids, k)
            scores = self._rerank(store, rows[None], rows_mask, cands)
            top = scores.topk(k)
            all_scores.append(top.values)
            all_ids.append(torch.from_numpy(cands)[top.indices])
        return torch.return_types.topk((torch.stack(all_scores), torch.stack(all_ids)))

    def _candidates(
        self, store: TokenStore, q: torch.Tensor, sims: np.ndarray, token_ids: np.ndarray, k: int
    ) -> np.ndarray:
        """Sorted passage indices to rerank for one query ``q`` ``[Lq, dim]``, from its token hits ``[Lq, tpq]``.

        Every passage with a retrieved token is a candidate. When there are more than
        ``max_rerank`` of them, they are ranked by the approximate MaxSim of
        :meth:`approximate_scores` and the best ``max_rerank`` are kept.
        """
        limit = max(self.max_rerank, k)
        n_passages = store.num_passages
        hit, passages, cands = self._hit_passages(store, token_ids)
        if len(cands) > limit:
            score = self._approximate(store, q, sims, hit, passages, cands)
            cands = np.sort(cands[np.argpartition(-score, limit - 1)[:limit]])
        if len(cands) < k:  # too few candidates: top up with the first passages not yet in the list
            extra = np.setdiff1d(np.arange(min(n_passages, k + len(cands))), cands)[: k - len(cands)]
            cands = np.concatenate([cands, extra])
        return cands

    def approximate_scores(
        self, store: TokenStore, q: torch.Tensor, sims: np.ndarray, token_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every passage holding a retrieved token of one query ``q`` ``[Lq, dim]`` (sorted) and its
        approximate MaxSim (:func:`approximate_maxsim`), from the query's faiss hits (``sims`` /
        ``token_ids`` ``[Lq, tpq]``, -1 for no hit): what prunes the candidates beyond ``max_rerank``."""
        hit, passages, cands = self._hit_passages(store, token_ids)
        return cands, self._approximate(store, q, sims, hit, passages, cands)

    def _hit_passages(
        self, store: TokenStore, token_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Which hits are real (faiss pads a row that found fewer with -1), the passage of each real hit, and
        the passages they reach, sorted."""
        hit = token_ids >= 0
        passages = self._token_passages(store)(token_ids[hit])
        if store.num_passages <= self._DENSE_CANDIDATES_MAX:  # per-passage arrays: no sort needed
            present = np.zeros(store.num_passages, dtype=bool)
            present[passages] = True
            return hit, passages, np.flatnonzero(present)
        return hit, passages, np.unique(passages)

    def _approximate(
        self,
        store: TokenStore,
        q: torch.Tensor,
        sims: np.ndarray,
        hit: np.ndarray,
        passages: np.ndarray,
        cands: np.ndarray,
    ) -> np.ndarray:
        if store.num_passages <= self._DENSE_CANDIDATES_MAX:
            position = np.empty(store.num_passages, dtype=np.int64)
            position[cands] = np.arange(len(cands))
            columns = position[passages]
        else:
            columns = np.searchsorted(cands, passages)
        means = self._passage_means(store)[cands]
        return approximate_maxsim(q, np.nonzero(hit)[0], columns, sims[hit], means)

    def _passage_means(self, store: TokenStore) -> np.ndarray:
        """:attr:`passage_means`, computed from ``store`` for an index saved without them (before 2026-12)."""
        if self.passage_means is None or len(self.passage_means) != store.num_passages:
            logger.info(
                "Computing the mean token vector of %d passages (saved index without them)",
                store.num_passages,
            )
            self.passage_means = passage_means(store)
        return self.passage_means

    # Up to this many passages, candidate bookkeeping uses arrays over all passages (a few MB a query)
    # instead of sorting the hits (np.unique): at 178k passages and 131k hits, 15 ms against 33 ms.
    _DENSE_CANDIDATES_MAX = 1 << 21

    def _token_passages(self, store: TokenStore) -> TokenPassages:
        """The token -> passage lookup of ``store`` (made again when its layout changes)."""
        lookup = getattr(self, "_lookup", None)
        if lookup is None or lookup.offsets is not store.offsets:
            self._lookup = lookup = TokenPassages(store.offsets)
        return lookup

    # Candidate vectors are gathered and scored in blocks of at most this many tokens (24 MiB of
    # bf16 vectors at dim 128, so max_rerank=512 passages of up to 180 tokens are one block): every
    # temporary stays below glibc's 32 MiB mmap threshold, above which each call would page-fault
    # fresh memory.
    _RERANK_BLOCK_TOKENS = 96 * 1024

    def _rerank(self, store: TokenStore, q: torch.Tensor, qmask: torch.Tensor, cands: np.ndarray):
        """Exact MaxSim of one query ``[1, Lq, dim]`` against the candidate passages -> ``[n_cands]``."""
        lengths = store.doclens[cands]
        cum = np.zeros(len(cands) + 1, dtype=np.int64)
        np.cumsum(lengths, out=cum[1:])
        scores = torch.empty(len(cands), dtype=torch.float32)
        p0 = 0
        while p0 < len(cands):
            p1 = int(np.searchsorted(cum, cum[p0] + self._RERANK_BLOCK_TOKENS, side="right")) - 1
            p1 = min(max(p1, p0 + 1), len(cands))
            block, block_lengths = store.gather(cands[p0:p1])
            scores[p0:p1] = segment_maxsim(q, qmask, block, block_lengths)[0]
            p0 = p1
        return scores

    def save(self, folder: Path) -> dict[str, Any]:
        self._faiss().write_index(self.index, str(folder / "faiss.index"))
        params: dict[str, Any] = {}
        if self.passage_means is not None:  # through a new file: a map of the old one stays valid
            tmp = folder / "passage_means.tmp.npy"
            np.save(tmp, np.asarray(self.passage_means), allow_pickle=False)
            tmp.replace(folder / "passage_means.npy")
            params["passage_means"] = True
        return {
            **params,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "tokens_per_query_token": self.tokens_per_query_token,
            "max_rerank": self.max_rerank,
            "min_tokens_per_query_token": self.min_tokens_per_query_token,
        }

    @classmethod
    def load(cls, folder: Path, params: dict[str, Any]) -> FaissBackend:
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
        backend.index = read_index_file(folder / "faiss.index", cls._faiss().read_index)
        backend.index.nprobe = backend.nprobe
        if params.get("passage_means"):
            backend.passage_means = read_index_file(folder / "passage_means.npy", map_npy)
        return backend

    @classmethod
    def needed_files(cls, params: dict[str, Any]) -> tuple[str, ...]:
        """``faiss.index``, and ``passage_means.npy`` for an index saved since 2026-12 (older ones compute
        the means when first searched)."""
        return cls.files if params.get("passage_means") else cls.files[:1]
