"""DocumentIndex: passages, their ColBERT token vectors, and exact or faiss-accelerated MaxSim search.

Token vectors of all passages are stored flat (``[n_tokens, dim]``, bfloat16) with each
passage's token count (:mod:`jmlr_hf.retriever.store`). Backends behind one interface
(:class:`~jmlr_hf.retriever.backends.IndexBackend`, one module each) search them:

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
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..data.corpus import CorpusSource, chunk_corpus, load_corpus, passage_text_for_encoding
from .backends import BACKENDS, ExactBackend, FaissBackend, IndexBackend, IndexFileError, read_index_file
from .backends.faiss import approximate_maxsim
from .modeling_jmlr_retriever import EncodedBatch, JMLRRetriever, Precision
from .store import STORE_DTYPE, VectorStore, segment_maxsim

logger = logging.getLogger(__name__)

Backend = Literal["auto", "exact", "faiss"]
INDEX_FORMAT_VERSION = 1
AUTO_FAISS_MIN_PASSAGES = 2048
#: The files of every saved index, the config first (a backend adds its own ``files``).
INDEX_FILES = ("index_config.json", "passages.parquet", "vectors.safetensors")


class SearchHit(TypedDict):
    """One ranked result of :meth:`DocumentIndex.search`."""

    passage_id: str
    doc_id: str
    title: str
    text: str
    score: float


class StaleIndexError(ValueError):
    """The retriever's weights are not the ones the index vectors were computed with."""


# The names of earlier versions (benchmarks and tests import them from here).
_ExactBackend, _FaissBackend, _VectorStore = ExactBackend, FaissBackend, VectorStore
_segment_maxsim, _approximate_maxsim = segment_maxsim, approximate_maxsim


class DocumentIndex:
    """A searchable collection of passages encoded by a :class:`JMLRRetriever`.

    Build with :meth:`build`, query with :meth:`search`; :meth:`refresh` re-encodes every passage
    with the retriever's current weights (the trainer calls it every ``index_refresh_steps``).

    Example:
        >>> import torch
        >>> from jmlr_hf.models import load_default_retriever
        >>> _ = torch.manual_seed(0)
        >>> retriever = load_default_retriever()  # the embedded MiniLM with a new ColBERT head, offline
        >>> corpus = [
        ...     {"id": "aspirin", "title": "Aspirin", "text": "Aspirin relieves pain and fever."},
        ...     {"id": "metformin", "title": "Metformin", "text": "Metformin is first-line for diabetes."},
        ... ]
        >>> index = DocumentIndex.build(corpus, retriever)
        >>> hit = index.search(["first-line drug for type 2 diabetes"], k=1)[0][0]
        >>> hit["doc_id"], hit["passage_id"], hit["title"]
        ('metformin', 'metformin#0', 'Metformin')
        >>> index.passage(0)
        {'title': 'Aspirin', 'text': 'Aspirin relieves pain and fever.'}
    """

    def __init__(
        self,
        passages: dict[str, list[str]],
        store: VectorStore,
        retriever: JMLRRetriever,
        backend: IndexBackend,
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
        self.precision: Precision = "auto"
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
        precision: Precision = "auto",
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
            precision: the encoder's math for passages and, by default, for the queries of :meth:`search`
                (see :meth:`JMLRRetriever.encode_queries`): ``"fp32"`` is exact; ``"auto"`` uses bf16 where the
                hardware is fast at it, which moves a few rankings against PyLate / Stanford ColBERT
                (Kendall tau about 0.99). The index stores its vectors in bf16 either way.
            **backend_kwargs: faiss options ``nlist``, ``nprobe``, ``tokens_per_query_token``, ``use_gpu``,
                ``max_rerank`` (candidates kept for the exact rerank; raise it for very short queries),
                ``min_tokens_per_query_token`` (hits per token of a long query, see ``FaissBackend``).
        """
        docs = load_corpus(corpus)
        passages = chunk_corpus(docs, retriever._require_tokenizer(), chunk_tokens, chunk_overlap)
        n = len(passages["passage_id"])
        if backend == "auto":
            backend = "faiss" if n >= AUTO_FAISS_MIN_PASSAGES else "exact"
        if backend not in BACKENDS:
            raise ValueError(f"backend must be 'auto', 'exact' or 'faiss', got {backend!r}")
        engine = BACKENDS[backend](**backend_kwargs)
        index = cls(passages, None, retriever, engine, "", chunk_tokens, chunk_overlap, batch_size)  # type: ignore[arg-type]
        index.precision = precision
        index._encode_all(show_progress_bar)
        return index

    def _encode_texts(self, titles: Sequence[str], texts: Sequence[str], show_progress_bar: bool | None):
        strings = [passage_text_for_encoding(t, x) for t, x in zip(titles, texts)]
        return self.retriever.encode_documents_flat(
            strings,
            batch_size=self.batch_size,
            show_progress_bar=show_progress_bar,
            precision=self.precision,
            dtype=STORE_DTYPE,
        )

    def _encode_all(self, show_progress_bar: bool | None) -> None:
        t0 = time.perf_counter()
        vectors, doclens = self._encode_texts(
            self.passages["title"], self.passages["text"], show_progress_bar
        )
        t1 = time.perf_counter()
        self.store = VectorStore(vectors, doclens)
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

    def refresh(
        self,
        retriever: JMLRRetriever | None = None,
        show_progress_bar: bool | None = None,
        precision: Precision | None = None,
    ) -> float:
        """Re-encode every passage with ``retriever`` (default: the index's own) and rebuild the
        backend; ``precision`` (default: the index's, set by :meth:`build`) becomes the index's.
        Returns the seconds it took."""
        if retriever is not None:
            self.retriever = retriever
        if precision is not None:
            self.precision = precision
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
    def num_tokens(self) -> int:
        """Token vectors stored for all passages."""
        return self.store.num_tokens

    @property
    def content_id(self) -> tuple[Any, ...]:
        """Changes whenever the stored vectors do: at a refresh (new store, fingerprint) and at :meth:`add`."""
        return (id(self.store), self.fingerprint, self.num_passages, self.num_tokens)

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
        self,
        queries: str | Sequence[str],
        k: int = 10,
        batch_size: int = 64,
        precision: Precision | None = None,
    ) -> list[list[SearchHit]]:
        """Ranked hits (best first) for each query: ``passage_id``, ``doc_id``, ``title``, ``text``, ``score``.

        ``precision`` encodes the queries (default: the index's, set by :meth:`build`; ``"fp32"`` is exact)."""
        if isinstance(queries, str):
            queries = [queries]
        self._check_k(k)
        for i, text in enumerate(queries):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"query {i} is empty or not a string: {text!r:.60}")
        results: list[list[SearchHit]] = []
        for start in range(0, len(queries), batch_size):
            encoded = self.retriever.encode_queries(
                queries[start : start + batch_size],
                show_progress_bar=False,
                precision=precision or self.precision,
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

    def passage(self, passage_index: int) -> dict[str, str]:
        """The ``title`` and ``text`` of the passage at ``passage_index`` (what a prompt shows of it)."""
        p = self.passages
        return {"title": p["title"][passage_index], "text": p["text"][passage_index]}

    def passage_texts(self, passage_indices: Iterable[int]) -> list[str]:
        """The strings the retriever encodes for these passages (title and text joined)."""
        return [passage_text_for_encoding(**self.passage(int(i))) for i in passage_indices]

    def gather_vectors(self, passage_indices: Sequence[int] | np.ndarray) -> EncodedBatch:
        """The stored token vectors of these passages, padded: ``[n, max_len, dim]`` float32 and a mask.

        They are the retriever's own vectors only while the index is not stale (e.g. for a frozen
        document encoder).
        """
        vectors, lengths = self.store.gather(np.asarray(passage_indices, dtype=np.int64))
        emb = torch.zeros(len(lengths), int(lengths.max()), vectors.shape[1])
        mask = torch.zeros(emb.shape[:2], dtype=torch.bool)
        start = 0
        for row, length in enumerate(lengths.tolist()):
            emb[row, :length] = vectors[start : start + length].float()
            mask[row, :length] = True
            start += length
        return EncodedBatch(emb, mask)

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
        for name in INDEX_FILES + tuple(f for b in BACKENDS.values() for f in b.files):  # config first
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
        config = read_index_file(config_file, lambda f: json.loads(Path(f).read_text(encoding="utf-8")))
        if config.get("format_version") != INDEX_FORMAT_VERSION:
            raise ValueError(
                f"{config_file}: unsupported index format version {config.get('format_version')}"
            )
        if config["dim"] != retriever.config.dim:
            raise ValueError(
                f"{folder}: index vectors have dim {config['dim']}, the retriever {retriever.config.dim}"
            )
        passages = read_index_file(folder / "passages.parquet", lambda f: pq.read_table(f).to_pydict())
        tensors = read_index_file(folder / "vectors.safetensors", load_file)
        store = VectorStore(tensors["vectors"], tensors["doclens"])
        if store.num_passages != len(passages["passage_id"]):
            raise ValueError(
                f"{folder}: {store.num_passages} vector blocks for {len(passages['passage_id'])} passages"
            )
        backend = BACKENDS[config["backend"]].load(folder, config.get("backend_params", {}))
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


def missing_index_files(folder: str | os.PathLike) -> list[str]:
    """The files a saved index needs that ``folder`` lacks (its backend's own files too)."""
    root = Path(folder)
    try:
        config = json.loads((root / "index_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    backend = BACKENDS.get(config.get("backend") if isinstance(config, dict) else None)
    needed = INDEX_FILES + (backend.files if backend is not None else ())
    return [name for name in needed if not (root / name).is_file()]


__all__ = ["DocumentIndex", "IndexFileError", "SearchHit", "StaleIndexError", "missing_index_files"]
