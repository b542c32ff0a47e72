"""DocumentIndex: passages, their ColBERT token vectors, and exact or faiss-accelerated MaxSim search.

Token vectors of all passages are stored flat (``[n_tokens, dim]``, bfloat16) with each
passage's token count, in a :class:`~jmlr_hf.retriever.store.TokenStore` (RAM or a memory-mapped
file). Backends behind one interface (:class:`~jmlr_hf.retriever.backends.IndexBackend`, one module
each) search them:

- ``"exact"``: brute-force MaxSim over every passage, chunked so that the score matrix of one
  chunk is all that is ever materialised.
- ``"faiss"``: token-level candidate generation (an IVF index over token vectors, each query
  token fetches its nearest document tokens), then exact MaxSim rerank of the candidate passages.
  faiss-gpu is used when the package has GPU support and CUDA is available.

On disk (``save`` / ``load``, format version 2), one flat folder, no pickle:

- ``index_config.json``: ``format_version`` (2), backend name and parameters, the retriever's weights
  fingerprint, ``dim``, ``num_passages``, ``num_tokens``, chunking and batch size. Written last.
- ``vectors.npy``: the token vectors, ``uint16 [n_tokens, dim]`` holding bfloat16 bits (numpy's ``.npy``
  format). :meth:`DocumentIndex.load` memory-maps it read-only (``MADV_RANDOM``): every process of a node
  shares one copy through the page cache, and only the pages search touches are read.
- ``doclens.npy``: ``int64 [n_passages]``, each passage's token count (passage ``i`` owns the rows
  ``sum(doclens[:i]) : sum(doclens[:i + 1])``).
- ``passages.arrow``: ``passage_id``, ``doc_id``, ``title``, ``text`` as an Arrow IPC file, memory-mapped
  on load (:class:`PassageTable`).
- the backend's own files (``faiss.index``, faiss's format).

A residual-compressed index (``compression="residual"``, :mod:`jmlr_hf.retriever.residual`) keeps no
``vectors.npy``: ``codes.npy`` (a centroid id a token), ``residuals.npy`` (its quantized residual row),
``doclens.npy`` and ``codec.safetensors`` hold the store, memory-mapped on load the same way, and
``index_config.json`` records ``"store": {"kind": "residual", "nbits": ..., "n_centroids": ..., ...}``
(no ``"store"``: bf16 ``vectors.npy``). Search decompresses only the tokens it reads (bf16); the faiss
backend is built from the decompressed vectors. :meth:`DocumentIndex.add` compresses new passages with the
index's codec; :meth:`DocumentIndex.refresh` fits a new codec (the re-encoded vectors moved: the old
centroids and buckets would fit them worse), with the same ``compression_kwargs``. It is meant for the exact
rerank at inference; training re-encodes its candidates, so compression never changes what it computes.

Format version 1 (``passages.parquet`` + ``vectors.safetensors``) still loads, into RAM; saving writes
version 2. With a ``folder``, :meth:`DocumentIndex.build` and :meth:`DocumentIndex.refresh` encode
straight into these files, split across the processes of a ``torch.distributed`` run (``accelerate
launch`` / ``torchrun``): the batches are planned as one process plans them, batch ``b`` goes to
process ``b % N``, each writes its vectors at their place in one pre-allocated ``vectors.npy``; rank 0
then builds the backend, and every process maps the result (bit-identical to a 1-process build).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..data.corpus import CorpusSource, chunk_corpus, load_corpus, passage_text_for_encoding
from ..layout import link_or_copy
from .backends import BACKENDS, ExactBackend, FaissBackend, IndexBackend, IndexFileError, read_index_file
from .backends.faiss import approximate_maxsim
from .modeling_jmlr_retriever import EncodedBatch, JMLRRetriever, Precision, batch_plan
from .residual import Bf16Bits, ResidualStore
from .store import (
    STORE_DTYPE,
    TokenStore,
    VectorStore,
    bf16_from_bits,
    bf16_to_bits,
    map_npy,
    segment_maxsim,
)

logger = logging.getLogger(__name__)

Backend = Literal["auto", "exact", "faiss"]
Compression = Literal[None, "residual"]
INDEX_FORMAT_VERSION = 2
AUTO_FAISS_MIN_PASSAGES = 2048
#: The files of every saved index (format version 2), the config first (a backend adds its own ``files``).
INDEX_FILES = ("index_config.json", "passages.arrow", "vectors.npy", "doclens.npy")
#: The files of a residual-compressed index (``"store": {"kind": "residual"}`` in its config).
INDEX_FILES_RESIDUAL = ("index_config.json", "passages.arrow", *ResidualStore.FILES)
#: The files of a format version 1 index.
INDEX_FILES_V1 = ("index_config.json", "passages.parquet", "vectors.safetensors")
PASSAGE_COLUMNS = ("passage_id", "doc_id", "title", "text")
# Token vectors converted or copied per block when writing vectors.npy (32 MiB of bf16 at dim 128).
_WRITE_BLOCK_TOKENS = 1 << 17


class PassageTable(Mapping[str, list]):
    """The passages of an index as an Arrow table (memory-mapped when loaded from ``passages.arrow``).

    ``table[column]`` gives a whole column as a Python list (``index.passages["doc_id"]``, as the dict of
    lists of earlier versions did); :meth:`row` reads one passage without materialising any column.
    """

    def __init__(self, table: pa.Table) -> None:
        missing = [c for c in PASSAGE_COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(f"passages lack the columns {missing} (they need {list(PASSAGE_COLUMNS)})")
        self.table = table.select(list(PASSAGE_COLUMNS))

    @classmethod
    def from_columns(cls, columns: Mapping[str, Sequence[str]] | Any) -> PassageTable:
        """From a dict of lists, a ``pa.Table``, a ``datasets.Dataset`` or another :class:`PassageTable`."""
        if isinstance(columns, PassageTable):
            return columns
        if isinstance(columns, pa.Table):
            return cls(columns)
        data = getattr(columns, "data", None)  # datasets.Dataset: its arrow table, no Python lists
        if data is not None and hasattr(data, "table"):
            if getattr(columns, "_indices", None) is not None:
                columns = columns.flatten_indices()
            return cls(columns.data.table)
        return cls(pa.table({c: pa.array(list(columns[c]), type=pa.string()) for c in PASSAGE_COLUMNS}))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> PassageTable:
        """The passages of an Arrow IPC file, memory-mapped (zero-copy)."""
        with pa.memory_map(str(path), "r") as source:
            return cls(pa.ipc.open_file(source).read_all())

    def write(self, path: str | os.PathLike) -> None:
        """Write the passages as an Arrow IPC file (what :meth:`from_file` maps)."""
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, self.table.schema) as writer:
            writer.write_table(self.table, max_chunksize=1 << 16)

    def append(self, columns: Mapping[str, Sequence[str]]) -> PassageTable:
        """A new table: these passages followed by ``columns``' (the new rows are in RAM)."""
        return PassageTable(pa.concat_tables([self.table, PassageTable.from_columns(columns).table]))

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def row(self, i: int, columns: Sequence[str] = PASSAGE_COLUMNS) -> dict[str, str]:
        """Passage ``i``'s ``columns``."""
        return {c: self.table.column(c)[i].as_py() for c in columns}

    def __getitem__(self, column: str) -> list:
        if column not in PASSAGE_COLUMNS:
            raise KeyError(column)
        return self.table.column(column).to_pylist()

    def __iter__(self) -> Iterator[str]:
        return iter(PASSAGE_COLUMNS)

    def __len__(self) -> int:
        return len(PASSAGE_COLUMNS)

    def __repr__(self) -> str:
        return f"PassageTable({self.num_rows} passages)"


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes of the default ``torch.distributed`` group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _all_ranks(world: int, step: Callable[[], None], what: str) -> None:
    """Run ``step`` on this process, then wait for every process of the group (a barrier that also tells each
    process whether any other failed): a failure on one rank raises on all of them, instead of leaving the
    others waiting at the next barrier until the collective timeout."""
    error: BaseException | None = None
    try:
        step()
    except Exception as err:  # re-raised below, after the others know
        error = err
    if world > 1:
        nccl = torch.distributed.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        failed = torch.tensor([int(error is not None)], device=device)
        torch.distributed.all_reduce(failed)
        if error is None and int(failed.item()):
            raise RuntimeError(
                f"{what}: {int(failed.item())} other process(es) of the group failed (their error is in their "
                "log); this process stops too"
            )
    if error is not None:
        raise error


def _unlink(folder: Path, names: Iterable[str]) -> None:
    """Unlink (never rewrite in place) ``names``: a file hard-linked elsewhere or memory-mapped keeps its content."""
    for name in names:
        (folder / name).unlink(missing_ok=True)


def _all_index_files() -> tuple[str, ...]:
    """Every file name an index folder of any version or backend may hold, the config first."""
    names = (
        INDEX_FILES
        + INDEX_FILES_RESIDUAL
        + INDEX_FILES_V1
        + tuple(f for b in BACKENDS.values() for f in b.files)
    )
    return tuple(dict.fromkeys(names))


def _start_folder(folder: Path, passages: PassageTable) -> Path:
    """``folder`` created, any index files in it unlinked (the config first), ``passages.arrow`` written."""
    folder.mkdir(parents=True, exist_ok=True)
    _unlink(folder, _all_index_files())
    passages.write(folder / "passages.arrow")
    return folder


def _file_identity(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size


def _write_store_files(folder: Path, blocks: Iterable[torch.Tensor], doclens: np.ndarray, dim: int) -> None:
    """``vectors.npy`` from ``blocks`` of consecutive token vectors (one block in memory at a time) and
    ``doclens.npy``."""
    n_tokens = int(doclens.sum())
    out = np.lib.format.open_memmap(folder / "vectors.npy", mode="w+", dtype=np.uint16, shape=(n_tokens, dim))
    t = 0
    for block in blocks:
        out[t : t + len(block)] = bf16_to_bits(torch.as_tensor(block))
        t += len(block)
    if t != n_tokens:
        raise ValueError(f"{t} token vectors for doclens summing to {n_tokens}")
    out.flush()
    del out
    np.save(folder / "doclens.npy", np.asarray(doclens, dtype=np.int64), allow_pickle=False)


def _read_v2_store(folder: Path) -> VectorStore:
    """The store of a version-2 folder: ``doclens.npy`` read, ``vectors.npy`` memory-mapped."""
    doclens = read_index_file(folder / "doclens.npy", lambda f: np.load(f, allow_pickle=False))
    vectors = read_index_file(folder / "vectors.npy", map_npy)
    try:
        return VectorStore(vectors, doclens)
    except ValueError as err:
        raise IndexFileError(f"{folder}: vectors.npy and doclens.npy disagree ({err})") from err


def _read_store(folder: Path, store_params: dict[str, Any] | None) -> TokenStore:
    """The store of a version-2 folder, by its config's ``"store"`` entry (``None``: bf16 ``vectors.npy``)."""
    if not store_params or store_params.get("kind", "bf16") == "bf16":
        return _read_v2_store(folder)
    if store_params.get("kind") != "residual":
        raise ValueError(f"{folder}: unknown store kind {store_params.get('kind')!r} in index_config.json")
    for name in ResidualStore.FILES:
        read_index_file(folder / name, lambda f: os.stat(f))  # a missing file raises IndexFileError naming it
    try:
        return ResidualStore.load(folder, store_params)
    except (ValueError, OSError, RuntimeError) as err:
        raise IndexFileError(f"{folder}: the residual store does not load ({err})") from err


def _store_files(store: TokenStore | None) -> tuple[str, ...]:
    """The data files (all but the config) of a version-2 folder holding ``store``."""
    files = INDEX_FILES_RESIDUAL if isinstance(store, ResidualStore) else INDEX_FILES
    return files[1:]


def _read_config(folder: Path) -> dict[str, Any]:
    config_file = folder / "index_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} is not a saved DocumentIndex (no index_config.json)")
    config = read_index_file(config_file, lambda f: json.loads(Path(f).read_text(encoding="utf-8")))
    version = config.get("format_version") if isinstance(config, dict) else None
    if version not in (1, 2):
        raise ValueError(
            f"{config_file}: unsupported index format version {version!r} (this version of jmlr-hf reads "
            f"versions 1 and 2; a newer jmlr-hf wrote it, or the file is not an index config)"
        )
    return config


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
    ``index.passages`` is a :class:`PassageTable` (``index.passages["doc_id"]`` is a list), ``index.store``
    a :class:`~jmlr_hf.retriever.store.TokenStore`, ``index.folder`` the version-2 folder the index is
    memory-mapped from (``None`` while it lives in RAM).

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
        passages: PassageTable | Mapping[str, Sequence[str]],
        store: TokenStore,
        retriever: JMLRRetriever,
        backend: IndexBackend,
        fingerprint: str,
        chunk_tokens: int,
        chunk_overlap: int,
        batch_size: int = 32,
    ) -> None:
        self.passages = PassageTable.from_columns(passages)
        self.store = store
        self.retriever = retriever
        self.backend = backend
        self.fingerprint = fingerprint
        self.chunk_tokens = chunk_tokens
        self.chunk_overlap = chunk_overlap
        self.batch_size = batch_size
        self.precision: Precision = "auto"
        self.last_refresh_seconds: float | None = None
        #: What the last encode (build, refresh) did in this process: ``passages_encoded``, ``batches_encoded``,
        #: ``rank``, ``world_size``, ``seconds`` (a sharded encode gives each of N processes about 1/N).
        self.last_encode_stats: dict[str, Any] = {}
        # The version-2 folder whose files this index is (mapped from, or written to), with the identity
        # of those files: save() hard-links them instead of writing a copy while they still match.
        self.folder: Path | None = None
        self._folder_identity: tuple[Any, ...] | None = None
        #: ``None`` (bf16 vectors) or ``"residual"``, and the options of its codec (what refresh re-fits with).
        self.compression: Compression = "residual" if isinstance(store, ResidualStore) else None
        self.compression_kwargs: dict[str, Any] = {}

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
        folder: str | os.PathLike | None = None,
        compression: Compression = None,
        compression_kwargs: dict[str, Any] | None = None,
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
            folder: write the index (format version 2) into this folder while encoding and memory-map it;
                under ``torch.distributed`` with N > 1 processes (every one calls ``build`` with the same
                arguments, and all see the folder) each encodes 1/N of the batches. Without it the
                vectors stay in RAM and every process encodes everything.
            compression: ``None`` (bf16 vectors, 256 bytes a token at dim 128); ``"residual"``: a compressed store
                (:class:`~jmlr_hf.retriever.residual.ResidualStore`, 36 bytes a token by default), for the exact
                rerank at inference.
            compression_kwargs: options of :meth:`ResidualStore.from_vectors` (``nbits``, ``n_centroids``,
                ``sample_tokens``, ``niter``, ``per_dim``, ``scaled``, ``seed``).
            **backend_kwargs: faiss options ``nlist``, ``nprobe``, ``tokens_per_query_token``, ``use_gpu``,
                ``max_rerank`` (candidates kept for the exact rerank; raise it for very short queries),
                ``min_tokens_per_query_token`` (hits per token of a long query, see ``FaissBackend``).
        """
        _check_compression(compression)
        docs = load_corpus(corpus)
        passages = chunk_corpus(docs, retriever._require_tokenizer(), chunk_tokens, chunk_overlap)
        engine = cls._make_backend(backend, len(passages["passage_id"]), backend_kwargs)
        index = cls(passages, None, retriever, engine, "", chunk_tokens, chunk_overlap, batch_size)  # type: ignore[arg-type]
        index.precision = precision
        index.compression, index.compression_kwargs = compression, dict(compression_kwargs or {})
        index._encode_all(show_progress_bar, folder)
        return index

    @staticmethod
    def _make_backend(backend: Backend, num_passages: int, backend_kwargs: dict[str, Any]) -> IndexBackend:
        if backend == "auto":
            backend = "faiss" if num_passages >= AUTO_FAISS_MIN_PASSAGES else "exact"
        if backend not in BACKENDS:
            raise ValueError(f"backend must be 'auto', 'exact' or 'faiss', got {backend!r}")
        return BACKENDS[backend](**backend_kwargs)

    @classmethod
    def from_vectors(
        cls,
        passages: Mapping[str, Sequence[str]] | Any,
        vectors: torch.Tensor | np.ndarray,
        doclens: Sequence[int] | np.ndarray | torch.Tensor,
        retriever: JMLRRetriever,
        backend: Backend = "auto",
        folder: str | os.PathLike | None = None,
        chunk_tokens: int = 150,
        chunk_overlap: int = 32,
        compression: Compression = None,
        compression_kwargs: dict[str, Any] | None = None,
        **backend_kwargs: Any,
    ) -> DocumentIndex:
        """An index over token vectors computed elsewhere (no encoding), e.g. for benchmarks.

        Args:
            passages: ``passage_id``, ``doc_id``, ``title``, ``text`` columns (a dict of lists, a ``pa.Table`` or
                a ``datasets.Dataset``).
            vectors: ``[n_tokens, dim]`` token vectors of all passages, flat in passage order (a bf16 or float
                tensor, a float array, or a uint16 array of bf16 bits, e.g. a ``np.memmap``).
            doclens: each passage's token count (they sum to ``n_tokens``).
            retriever: the retriever that encodes queries; the vectors are taken to be its own (its
                weights fingerprint is recorded).
            backend: as in :meth:`build`.
            folder: write the version-2 files there block by block (bounded memory) and return the
                memory-mapped index; without it the vectors are copied into RAM as bf16. One process.
            chunk_tokens / chunk_overlap: recorded in ``index_config.json`` (what :meth:`add` chunks with).
            compression / compression_kwargs: as in :meth:`build` (the codec is fitted on a sample of ``vectors``).
            **backend_kwargs: as in :meth:`build`.
        """
        _check_compression(compression)
        table = PassageTable.from_columns(passages)
        doclens = np.asarray(doclens, dtype=np.int64)
        if len(doclens) != table.num_rows or int(doclens.sum()) != len(vectors):
            raise ValueError(
                f"{table.num_rows} passages, {len(doclens)} doclens summing to {int(doclens.sum())}, "
                f"{len(vectors)} vectors: they must agree"
            )
        engine = cls._make_backend(backend, table.num_rows, backend_kwargs)
        index = cls(
            table, None, retriever, engine, retriever.weights_fingerprint(), chunk_tokens, chunk_overlap
        )  # type: ignore[arg-type]
        index.compression, index.compression_kwargs = compression, dict(compression_kwargs or {})
        if compression == "residual":
            source = (
                Bf16Bits(vectors)
                if isinstance(vectors, np.ndarray) and vectors.dtype == np.uint16
                else vectors
            )
            path = None if folder is None else _start_folder(Path(folder), table)
            index.store = ResidualStore.from_vectors(source, doclens, folder=path, **index.compression_kwargs)
            index.backend.build(index.store)
            if path is not None:
                index._write_config(path, index.backend.save(path))
                index._remember_folder(path)
            return index

        def blocks() -> Iterator[torch.Tensor]:
            for a in range(0, len(vectors), _WRITE_BLOCK_TOKENS):
                block = vectors[a : a + _WRITE_BLOCK_TOKENS]
                if isinstance(block, np.ndarray):
                    block = (
                        bf16_from_bits(np.ascontiguousarray(block))
                        if block.dtype == np.uint16
                        else torch.from_numpy(np.asarray(block))
                    )
                yield block.to(STORE_DTYPE)

        if folder is None:
            index.store = VectorStore(
                torch.cat(list(blocks())) if len(vectors) else torch.zeros(0, retriever.config.dim), doclens
            )
            index.backend.build(index.store)
            return index
        path = _start_folder(Path(folder), table)
        _write_store_files(path, blocks(), doclens, int(vectors.shape[1]))
        index._map_folder(path)
        index.backend.build(index.store)
        index._write_config(path, index.backend.save(path))
        index._remember_folder(path)
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

    def _encode_all(self, show_progress_bar: bool | None, folder: str | os.PathLike | None = None) -> None:
        t0 = time.perf_counter()
        if folder is not None:
            self._encode_into_folder(Path(folder), show_progress_bar)
            return
        vectors, doclens = self._encode_texts(
            self.passages["title"], self.passages["text"], show_progress_bar
        )
        rank, world = _rank_and_world()
        t1 = time.perf_counter()
        if self.compression == "residual":  # a new codec for the new vectors
            self.store = ResidualStore.from_vectors(vectors, doclens, **self.compression_kwargs)
        else:
            self.store = VectorStore(vectors, doclens)
        self.backend.build(self.store)
        self.fingerprint = self.retriever.weights_fingerprint()
        self.folder, self._folder_identity = None, None
        self.last_refresh_seconds = time.perf_counter() - t0
        self.last_encode_stats = {
            "passages_encoded": self.num_passages,
            "batches_encoded": -(-self.num_passages // self.batch_size),
            "rank": rank,
            "world_size": world,
            "seconds": t1 - t0,
        }
        self._log_encode(t1 - t0, time.perf_counter() - t1)

    def _log_encode(self, encode_seconds: float, backend_seconds: float) -> None:
        logger.info(
            "Indexed %d passages (%d token vectors; %d passages encoded by this process): encoding %.1fs, "
            "%s backend %.1fs",
            self.num_passages,
            self.store.num_tokens,
            self.last_encode_stats.get("passages_encoded", 0),
            encode_seconds,
            self.backend.name,
            backend_seconds,
        )

    def _document_token_ids(self) -> tuple[list[str], list[list[int]], np.ndarray]:
        """The strings encoded for every passage, their token ids, and the vectors each keeps (its ids not in
        the punctuation skiplist: exactly the rows ``encode_documents_flat`` returns for it)."""
        table = self.passages.table
        titles, texts = table.column("title").to_pylist(), table.column("text").to_pylist()
        strings = [passage_text_for_encoding(t, x) for t, x in zip(titles, texts)]
        token_ids = self.retriever._token_ids(strings, is_query=False)
        lengths = np.fromiter((len(ids) for ids in token_ids), dtype=np.int64, count=len(token_ids))
        flat = np.fromiter((t for ids in token_ids for t in ids), dtype=np.int64, count=int(lengths.sum()))
        kept = ~np.isin(flat, self.retriever._skiplist().numpy())
        starts = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        doclens = np.add.reduceat(kept.astype(np.int64), starts) if len(flat) else np.zeros(0, np.int64)
        return strings, token_ids, doclens

    def _encode_into_folder(self, folder: Path, show_progress_bar: bool | None) -> None:
        """Encode every passage into ``folder``'s ``vectors.npy``, this process's share of the batches only
        (every process of the default ``torch.distributed`` group calls it), then map the result."""
        rank, world = _rank_and_world()
        t0 = time.perf_counter()
        strings, token_ids, doclens = self._document_token_ids()
        dim = int(self.retriever.config.dim)
        _all_ranks(
            world,
            lambda: self._prepare_folder(folder, doclens, dim) if rank == 0 else None,
            f"preparing {folder}",
        )
        n_batches = len(batch_plan(token_ids, self.batch_size))
        mine = range(rank, n_batches, world)
        encoded = 0

        def encode_mine() -> None:
            nonlocal encoded
            out = np.load(folder / "vectors.npy", mmap_mode="r+", allow_pickle=False)
            target = bf16_from_bits(out)
            offsets = np.zeros(len(doclens) + 1, dtype=np.int64)
            np.cumsum(doclens, out=offsets[1:])
            show = show_progress_bar if rank == 0 else False
            batches = self.retriever._encode_batches(
                strings, False, self.batch_size, show, self.precision, batches=mine, token_ids=token_ids
            )
            for idx, emb, mask in batches:
                emb, mask = emb.cpu(), mask.cpu()
                for row, i in enumerate(idx):
                    kept = emb[row][mask[row]].to(STORE_DTYPE)
                    if len(kept) != doclens[i]:  # the plan's token counts must be what the encoder keeps
                        raise RuntimeError(f"passage {i}: {len(kept)} vectors encoded, {doclens[i]} planned")
                    target[offsets[i] : offsets[i + 1]] = kept
                encoded += len(idx)
            out.flush()

        _all_ranks(world, encode_mine, f"encoding into {folder}")  # every process's vectors are in the file
        t1 = time.perf_counter()
        self.fingerprint = self.retriever.weights_fingerprint()

        def map_and_build() -> None:  # every process maps the vectors; rank 0 builds the backend
            self._map_folder(folder)
            if rank != 0:
                return
            if self.compression == "residual":  # compress vectors.npy into the residual files, drop it
                bits = map_npy(folder / "vectors.npy", random_access=False)
                self.store = ResidualStore.from_vectors(
                    Bf16Bits(bits), doclens, folder=folder, **self.compression_kwargs
                )
                del bits
                _unlink(folder, ["vectors.npy"])
            self.backend.build(self.store)
            self._write_config(folder, self.backend.save(folder))

        def load_backend() -> None:  # the other processes read what rank 0 wrote
            if rank != 0:
                config = _read_config(folder)
                self.store = _read_store(folder, config.get("store"))
                self.backend = BACKENDS[config["backend"]].load(folder, config.get("backend_params", {}))

        _all_ranks(world, map_and_build, f"building the {self.backend.name} index in {folder}")
        _all_ranks(world, load_backend, f"loading {folder}")
        self._remember_folder(folder)
        self.last_refresh_seconds = time.perf_counter() - t0
        self.last_encode_stats = {
            "passages_encoded": encoded,
            "batches_encoded": len(mine),
            "rank": rank,
            "world_size": world,
            "seconds": t1 - t0,
        }
        self._log_encode(t1 - t0, time.perf_counter() - t1)

    def _prepare_folder(self, folder: Path, doclens: np.ndarray, dim: int) -> None:
        """Rank 0, before a sharded encode: old files unlinked, ``passages.arrow``, ``doclens.npy`` and an
        all-zero ``vectors.npy`` of the final size written."""
        folder.mkdir(parents=True, exist_ok=True)
        same_passages = (
            self.folder is not None and self._folder_intact() and self.folder.resolve() == folder.resolve()
        )
        source = self.folder / "passages.arrow" if self.folder is not None and self._folder_intact() else None
        names = [n for n in _all_index_files() if not (same_passages and n == "passages.arrow")]
        _unlink(folder, names)
        if not same_passages:
            try:  # the passages never change at a refresh: share the previous folder's file
                if source is None:
                    raise OSError("no file to link")
                os.link(source, folder / "passages.arrow")
            except OSError:
                self.passages.write(folder / "passages.arrow")
        out = np.lib.format.open_memmap(
            folder / "vectors.npy", mode="w+", dtype=np.uint16, shape=(int(doclens.sum()), dim)
        )
        out.flush()
        del out
        np.save(folder / "doclens.npy", doclens, allow_pickle=False)

    def _map_folder(self, folder: Path) -> None:
        """Map ``folder``'s vectors and passages (files of format version 2)."""
        self.store = _read_v2_store(folder)
        self.passages = read_index_file(folder / "passages.arrow", PassageTable.from_file)

    def _remember_folder(self, folder: Path) -> None:
        self.folder = folder
        self._folder_identity = self._identity(folder)

    def _identity(self, folder: Path) -> tuple[Any, ...] | None:
        """The identity (device, inode, size) of ``folder``'s data files for this index's store."""
        try:
            return tuple(_file_identity(folder / name) for name in _store_files(self.store))
        except OSError:
            return None

    def _folder_intact(self) -> bool:
        """Whether :attr:`folder` still holds this index's files (not removed, replaced or outdated)."""
        if self.folder is None or self._folder_identity is None:
            return False
        if missing_index_files(self.folder):
            return False
        return self._identity(self.folder) == self._folder_identity

    def refresh(
        self,
        retriever: JMLRRetriever | None = None,
        show_progress_bar: bool | None = None,
        precision: Precision | None = None,
        folder: str | os.PathLike | None = None,
    ) -> float:
        """Re-encode every passage with ``retriever`` (default: the index's own) and rebuild the
        backend; ``precision`` (default: the index's, set by :meth:`build`) becomes the index's.
        ``folder``: write the new index there and map it, encoding split across processes as in
        :meth:`build` (it may be the folder the index is mapped from: its files are replaced, never
        rewritten in place). Returns the seconds it took."""
        if retriever is not None:
            self.retriever = retriever
        if precision is not None:
            self.precision = precision
        self._encode_all(show_progress_bar, folder)
        return self.last_refresh_seconds or 0.0

    def add(self, docs: CorpusSource, show_progress_bar: bool | None = None) -> int:
        """Chunk, encode and append new documents; returns the number of passages added. The vectors of a
        memory-mapped index move to RAM (save it to write them back)."""
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
        if not isinstance(self.store, (ResidualStore, VectorStore)):
            raise NotImplementedError(f"add() to a {type(self.store).__name__}")
        self.passages = self.passages.append(new)
        if isinstance(self.store, ResidualStore):  # the index's codec compresses the new passages
            self.store.extend(*self.store.codec.compress(vectors), doclens)
        else:
            self.store.extend(vectors, doclens)
        self.backend.add(self.store, first_new)
        self.folder, self._folder_identity = None, None  # the folder's files no longer hold all of it
        return len(new["passage_id"])

    # ------------------------------------------------------------------ queries
    @property
    def num_passages(self) -> int:
        return self.passages.num_rows

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
        return SearchHit(**self.passages.row(passage_index), score=float(score))

    def passage(self, passage_index: int) -> dict[str, str]:
        """The ``title`` and ``text`` of the passage at ``passage_index`` (what a prompt shows of it)."""
        return self.passages.row(passage_index, ("title", "text"))

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
    def _write_config(self, folder: Path, backend_params: dict[str, Any]) -> None:
        config = {
            "format_version": INDEX_FORMAT_VERSION,
            "backend": self.backend.name,
            "backend_params": backend_params,
            "retriever_fingerprint": self.fingerprint,
            "dim": int(self.store.dim),
            "num_passages": self.num_passages,
            "num_tokens": self.num_tokens,
            "chunk_tokens": self.chunk_tokens,
            "chunk_overlap": self.chunk_overlap,
            "batch_size": self.batch_size,
            "precision": self.precision,
        }
        if isinstance(self.store, ResidualStore):
            config["store"] = {**self.store.params(), "compression_kwargs": self.compression_kwargs}
        (folder / "index_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to a folder (format version 2: json + arrow + npy [+ faiss.index]).

        An index whose files are already in a folder (mapped by :meth:`load`, or written by ``build`` /
        ``refresh`` with a ``folder``) hard-links them (a copy where links fail); saving into that folder
        itself does nothing. Otherwise the files are written, the vectors in blocks. Files already there are
        unlinked first, never rewritten in place: a file hard-linked into another folder (checkpoints share
        an unchanged index that way) or memory-mapped keeps its content there. ``index_config.json`` is
        removed first and written last, so an interrupted save never looks like a saved index.
        """
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        intact = self._folder_intact()
        if intact and folder.resolve() == self.folder.resolve():  # type: ignore[union-attr]
            return
        _unlink(folder, _all_index_files())  # config first
        if intact:
            backend_files = [n for n in self.backend.files if (self.folder / n).is_file()]  # type: ignore[operator]
            names = [*_store_files(self.store), *backend_files, INDEX_FILES[0]]  # config last
            for name in names:
                link_or_copy(self.folder / name, folder / name)  # type: ignore[operator]
            return
        self.passages.write(folder / "passages.arrow")
        if isinstance(self.store, ResidualStore):
            self.store.save(folder)
        else:
            blocks = self.store.token_blocks(0, _WRITE_BLOCK_TOKENS)
            _write_store_files(folder, blocks, self.store.doclens, self.store.dim)
        self._write_config(folder, self.backend.save(folder))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        retriever: JMLRRetriever,
        allow_stale: bool = False,
        expected_fingerprint: str | None = None,
    ) -> DocumentIndex:
        """Load a saved index for ``retriever``: the vectors and passages of a version-2 folder are
        memory-mapped (read-only, shared by the processes of a node), a version-1 folder is read into RAM.

        Raises :class:`StaleIndexError` when the retriever's weights are not the ones that encoded
        the vectors; with ``allow_stale=True`` it only warns (call :meth:`refresh` to re-encode).
        ``expected_fingerprint``: the fingerprint the caller knows the vectors were encoded with (a
        checkpoint's index comes from the last refresh, older than the checkpoint's retriever): such a
        stale index loads with an info line. A missing, truncated or corrupt file raises
        :class:`IndexFileError` naming it; an unknown ``format_version`` a ``ValueError`` naming the config.
        """
        folder = Path(path)
        config = _read_config(folder)
        if config["dim"] != retriever.config.dim:
            raise ValueError(
                f"{folder}: index vectors have dim {config['dim']}, the retriever {retriever.config.dim}"
            )
        if config["format_version"] == 1:
            passages, store = cls._read_v1(folder)
        else:
            passages = read_index_file(folder / "passages.arrow", PassageTable.from_file)
            store = _read_store(folder, config.get("store"))
        if store.num_passages != passages.num_rows:
            raise IndexFileError(
                f"{folder}: {store.num_passages} vector blocks for {passages.num_rows} passages"
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
        index.compression_kwargs = dict((config.get("store") or {}).get("compression_kwargs") or {})
        index.precision = config.get("precision", "auto")  # saved since 2026-12; before: the default
        if config["format_version"] == INDEX_FORMAT_VERSION:
            index._remember_folder(folder)
        index._check_fingerprint(folder, allow_stale, expected_fingerprint)
        return index

    @staticmethod
    def _read_v1(folder: Path) -> tuple[PassageTable, VectorStore]:
        """Passages and vectors of a format-version-1 folder (parquet + safetensors), in RAM."""
        from safetensors.torch import load_file

        passages = read_index_file(folder / "passages.parquet", lambda f: PassageTable(pq.read_table(f)))
        tensors = read_index_file(folder / "vectors.safetensors", load_file)
        return passages, VectorStore(tensors["vectors"], tensors["doclens"])

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
    """The files a saved index needs that ``folder`` lacks (those of its format version, its backend's too)."""
    root = Path(folder)
    try:
        config = json.loads((root / "index_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    config = config if isinstance(config, dict) else {}
    backend = BACKENDS.get(config.get("backend"))
    store = config.get("store")
    residual = isinstance(store, dict) and store.get("kind") == "residual"
    files = (
        INDEX_FILES_V1
        if config.get("format_version") == 1
        else INDEX_FILES_RESIDUAL
        if residual
        else INDEX_FILES
    )
    params = config.get("backend_params")
    needed = files + (backend.needed_files(params if isinstance(params, dict) else {}) if backend else ())
    return [name for name in needed if not (root / name).is_file()]


def _check_compression(compression: Any) -> None:
    if compression not in (None, "residual"):
        raise ValueError(f"compression must be None or 'residual', got {compression!r}")


__all__ = [
    "DocumentIndex",
    "IndexFileError",
    "PassageTable",
    "SearchHit",
    "StaleIndexError",
    "missing_index_files",
]
