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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..data.corpus import CorpusSource, chunk_corpus, load_corpus, passage_text_for_encoding
from .modeling_jmlr_retriever import EncodedBatch, JMLRRetriever

logger = logging.getLogger(__name__)

Backend = Literal["auto", "exact", "faiss"]
INDEX_FORMAT_VERSION = 1
AUTO_FAISS_MIN_PASSAGES = 2048
_STORE_DTYPE = torch.bfloat16


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
def _segment_maxsim(
    q: torch.Tensor, qmask: torch.Tensor, vectors: torch.Tensor, lengths: np.ndarray
) -> torch.Tensor:
    """MaxSim of queries ``[nq, Lq, dim]`` against consecutive passages stored flat in ``vectors``
    (``lengths`` tokens each, all > 0) -> ``[nq, n_passages]`` float32."""
    nq, lq, dim = q.shape
    sim = (q.reshape(nq * lq, dim).to(vectors.dtype) @ vectors.T).float().numpy()
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    best = np.maximum.reduceat(sim, starts, axis=1).reshape(nq, lq, -1)
    return (torch.from_numpy(best) * qmask[:, :, None].float()).sum(1)


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
    """IVF over token vectors for candidates, then exact MaxSim rerank."""

    name = "faiss"

    def __init__(
        self,
        nlist: int | None = None,
        nprobe: int = 8,
        tokens_per_query_token: int = 64,
        use_gpu: bool | None = None,
    ) -> None:
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

    def _maybe_gpu(self, index: Any) -> Any:
        faiss = self._faiss()
        want = self.use_gpu if self.use_gpu is not None else torch.cuda.is_available()
        if want and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
            logger.info("Moving the faiss index to the GPU")
            self._gpu_res = faiss.StandardGpuResources()
            return faiss.index_cpu_to_gpu(self._gpu_res, 0, index)
        return index

    def build(self, store: _VectorStore) -> None:
        faiss = self._faiss()
        n_tokens, dim = store.vectors.shape
        nlist = self.nlist or int(2 ** round(math.log2(max(64.0, 2 * math.sqrt(n_tokens)))))
        nlist = max(1, min(nlist, n_tokens // 39 or 1))
        self.nlist = nlist
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        rng = np.random.default_rng(0)
        sample_size = min(n_tokens, 64 * nlist)
        sample = rng.choice(n_tokens, size=sample_size, replace=False) if sample_size < n_tokens else None
        vectors = store.vectors if sample is None else store.vectors[torch.from_numpy(np.sort(sample))]
        index.cp.niter = 10
        index.train(np.ascontiguousarray(vectors.float().numpy()))
        self.index = index
        self.add(store, 0)

    def add(self, store: _VectorStore, first_new: int) -> None:
        start = int(store.offsets[first_new])
        block = 1 << 18
        for a in range(start, store.vectors.shape[0], block):
            self.index.add(np.ascontiguousarray(store.vectors[a : a + block].float().numpy()))
        self.index.nprobe = self.nprobe

    def search(self, store: _VectorStore, q: torch.Tensor, qmask: torch.Tensor, k: int):
        nq, lq, dim = q.shape
        search_index = self._maybe_gpu(self.index) if self.use_gpu else self.index
        _, token_ids = search_index.search(
            np.ascontiguousarray(q.reshape(nq * lq, dim).float().numpy()), self.tokens_per_query_token
        )
        token_ids = token_ids.reshape(nq, -1)
        all_scores, all_ids = [], []
        for i in range(nq):
            toks = token_ids[i][
                (token_ids[i] >= 0) & qmask[i].repeat_interleave(self.tokens_per_query_token).numpy()
            ]
            cands = np.unique(np.searchsorted(store.offsets, toks, side="right") - 1)
            if len(cands) < k:  # too few candidates: top up with the first passages not yet in the list
                extra = np.setdiff1d(np.arange(min(store.num_passages, k + len(cands))), cands)[
                    : k - len(cands)
                ]
                cands = np.concatenate([cands, extra])
            scores = _segment_maxsim(q[i : i + 1], qmask[i : i + 1], *store.gather(cands))[0]
            top = scores.topk(k)
            all_scores.append(top.values)
            all_ids.append(torch.from_numpy(cands)[top.indices])
        return torch.return_types.topk((torch.stack(all_scores), torch.stack(all_ids)))

    def save(self, folder: Path) -> dict[str, Any]:
        self._faiss().write_index(self.index, str(folder / "faiss.index"))
        return {
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "tokens_per_query_token": self.tokens_per_query_token,
        }

    @classmethod
    def load(cls, folder: Path, params: dict[str, Any]) -> _FaissBackend:
        backend = cls(
            nlist=params.get("nlist"),
            nprobe=int(params.get("nprobe", 8)),
            tokens_per_query_token=int(params.get("tokens_per_query_token", 64)),
        )
        backend.index = cls._faiss().read_index(str(folder / "faiss.index"))
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
            **backend_kwargs: faiss options ``nlist``, ``nprobe``, ``tokens_per_query_token``, ``use_gpu``.
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
        """Write the index to a folder (json + parquet + safetensors [+ faiss.index])."""
        from safetensors.torch import save_file

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
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
        cls, path: str | os.PathLike, retriever: JMLRRetriever, allow_stale: bool = False
    ) -> DocumentIndex:
        """Load a saved index for ``retriever``.

        Raises :class:`StaleIndexError` when the retriever's weights are not the ones that encoded
        the vectors; with ``allow_stale=True`` it only warns (call :meth:`refresh` to re-encode).
        """
        from safetensors.torch import load_file

        folder = Path(path)
        config_file = folder / "index_config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{folder} is not a saved DocumentIndex (no index_config.json)")
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if config.get("format_version") != INDEX_FORMAT_VERSION:
            raise ValueError(
                f"{config_file}: unsupported index format version {config.get('format_version')}"
            )
        if config["dim"] != retriever.config.dim:
            raise ValueError(
                f"{folder}: index vectors have dim {config['dim']}, the retriever {retriever.config.dim}"
            )
        passages = pq.read_table(str(folder / "passages.parquet")).to_pydict()
        tensors = load_file(str(folder / "vectors.safetensors"))
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
        if index.is_stale:
            message = (
                f"{folder}: the retriever's weights differ from the ones that encoded this index "
                "(fingerprint mismatch)"
            )
            if not allow_stale:
                raise StaleIndexError(message + "; pass allow_stale=True and call index.refresh(retriever)")
            logger.warning("%s; search uses stale vectors until index.refresh() is called", message)
        return index


__all__ = ["DocumentIndex", "SearchHit", "StaleIndexError"]
