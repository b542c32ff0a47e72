"""Load document corpora (``{id, title, text}``) and chunk them into retrieval passages.

Passages are ``{passage_id, doc_id, title, text}``: windows of at most ``chunk_tokens`` tokens of the
document's text (counted with the retriever's tokenizer) that overlap by at least ``chunk_overlap``
tokens and start and end at word boundaries. Each passage's text is the exact character span of the
original document.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset

logger = logging.getLogger(__name__)

CorpusSource = str | os.PathLike | Dataset | Sequence[str] | Sequence[Mapping[str, Any]]

# Field names other corpora use for the passage text (Meditron's epfl-llm/guidelines: clean_text).
_TEXT_FIELDS = ("text", "clean_text", "content", "contents", "body", "raw_text")
_TITLE_FIELDS = ("title", "name", "heading")
_ID_FIELDS = ("id", "doc_id", "_id", "docid")


def _first(row: Mapping[str, Any], fields: Iterable[str]) -> Any:
    for field in fields:
        if field in row and row[field] is not None:
            return row[field]
    return None


def read_text_file(path: Path) -> str:
    """The text of a UTF-8 file (``.gz``: gunzipped first); a file that is not UTF-8 or not gzip raises
    ``ValueError`` naming it, the line and the byte."""
    import gzip

    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (gzip.BadGzipFile, EOFError) as err:
        raise ValueError(f"{path}: not a complete gzip file ({err})") from err
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{path}, line {line}: byte {data[err.start]:#04x} at offset {err.start} is not UTF-8 "
            "(save the file as UTF-8)"
        ) from None


def read_parquet_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a Parquet file; a truncated or corrupt one raises ``ValueError`` naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(str(path)).to_pylist()
    except pa.ArrowException as err:
        raise ValueError(f"{path}: not a readable Parquet file ({err})") from err


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"Corpus file not found: {path}")
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffix in (".jsonl", ".jsonl.gz"):
        return parse_json_lines(read_text_file(path), path)[0]
    if suffix == ".json":
        try:
            data = json.loads(read_text_file(path))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: invalid JSON ({err})") from err
        if not isinstance(data, list):
            raise ValueError(f"{path}: a .json corpus must hold a list of {{id, title, text}} objects")
        return data
    if suffix == ".parquet":
        return read_parquet_rows(path)
    raise ValueError(f"{path}: unsupported corpus format {suffix!r} (use .jsonl, .json or .parquet)")


def parse_json_lines(text: str, path: Path) -> tuple[list[Any], list[str]]:
    """Parse JSON Lines text: the rows and a ``row i (line n)`` name for each; errors name the line."""
    rows, names = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}: invalid JSON ({err})") from err
        names.append(f"row {len(rows) - 1} (line {number})")
    return rows, names


def load_corpus(source: CorpusSource) -> Dataset:
    """Normalise a corpus into a ``datasets.Dataset`` with the columns ``id``, ``title``, ``text``.

    Args:
        source: a JSONL/JSON/Parquet path, a ``datasets.Dataset``, a list of dicts, or a list of
            plain strings (ids become ``doc-0``, ``doc-1``, ... and titles are empty). Rows may
            use Meditron-guidelines-style fields (``clean_text``) instead of ``text``.

    Raises:
        ValueError: empty corpus, a row without a non-empty string text, or duplicate ids; the
            message names the row.
    """
    where = ""
    if isinstance(source, (str, os.PathLike)):
        where = f"{source}: "
        rows: list[Any] = _read_rows(Path(source))
    elif isinstance(source, Dataset):
        rows = source.to_list()
    else:
        rows = list(source)
    if not rows:
        raise ValueError(f"{where}the corpus is empty")
    ids, titles, texts = [], [], []
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        if isinstance(row, str):
            row = {"id": f"doc-{i}", "title": "", "text": row}
        if not isinstance(row, Mapping):
            raise ValueError(f"{where}row {i} is {type(row).__name__}, expected a string or a mapping")
        doc_id = _first(row, _ID_FIELDS)
        doc_id = f"doc-{i}" if doc_id is None else str(doc_id)
        text = _first(row, _TEXT_FIELDS)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}row {i} (id {doc_id!r}) has an empty or non-string text: {text!r:.60}")
        title = _first(row, _TITLE_FIELDS) or ""
        if not isinstance(title, str):
            raise ValueError(f"{where}row {i} (id {doc_id!r}) has a non-string title")
        if doc_id in seen:
            raise ValueError(f"{where}duplicate id {doc_id!r} in rows {seen[doc_id]} and {i}")
        seen[doc_id] = i
        ids.append(doc_id)
        titles.append(title)
        texts.append(text)
    return Dataset.from_dict({"id": ids, "title": titles, "text": texts})


def _word_boundary(text: str, offsets: Sequence[tuple[int, int]], j: int) -> bool:
    """Whether a passage may start at token ``j`` (and the previous one end before it): whitespace lies
    between them, or they do not both touch letters/digits ("hyper|tension" and "1|000" are not)."""
    if j <= 0 or j >= len(offsets):
        return True
    start, previous_end = offsets[j][0], offsets[j - 1][1]
    if start > previous_end:
        return True
    return not (0 < start < len(text) and text[start - 1].isalnum() and text[start].isalnum())


def _window_spans(
    text: str, offsets: Sequence[tuple[int, int]], size: int, overlap: int
) -> list[tuple[int, int]]:
    """Token windows ``[first, end)`` of at most ``size`` tokens that start and end at word boundaries,
    each starting at least ``overlap`` tokens before the previous one ended (more when a word straddles
    that point); a single word longer than ``size`` tokens is the only thing ever cut."""
    n, first, spans = len(offsets), 0, []
    while True:
        end = min(first + size, n)
        while end < n and end > first + 1 and not _word_boundary(text, offsets, end):
            end -= 1
        if end < n and not _word_boundary(text, offsets, end):
            end = min(first + size, n)  # one word longer than the window: cut it
        spans.append((first, end))
        if end >= n:
            return spans
        start = max(end - overlap, first + 1)
        while start > first + 1 and not _word_boundary(text, offsets, start):
            start -= 1
        if not _word_boundary(text, offsets, start):  # no boundary behind: the next one ahead
            start = next((j for j in range(start, end) if _word_boundary(text, offsets, j)), end)
        first = start


def chunk_corpus(
    corpus: Dataset,
    tokenizer: Any,
    chunk_tokens: int = 150,
    chunk_overlap: int = 32,
) -> dict[str, list[str]]:
    """Split documents into overlapping token windows that start and end at word boundaries.

    A window holds at most ``chunk_tokens`` tokens and ends where a new word starts (never between two
    word-pieces of one word, e.g. ``hyper`` / ``##tension``); the next window starts at least
    ``chunk_overlap`` tokens before it ends, moved back to a word start. Windows together cover all of
    the document's text. Returns column lists ``passage_id``, ``doc_id``, ``title``, ``text``; passage
    ids are ``"{doc_id}#{k}"``. Needs a fast tokenizer (character offsets).
    """
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
    if not 0 <= chunk_overlap < chunk_tokens:
        raise ValueError(f"chunk_overlap must be in [0, chunk_tokens), got {chunk_overlap}")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("chunk_corpus needs a fast tokenizer (for character offsets)")
    out: dict[str, list[str]] = {"passage_id": [], "doc_id": [], "title": [], "text": []}
    ids, titles, texts = corpus["id"], corpus["title"], corpus["text"]
    batch = 256
    for start in range(0, len(texts), batch):
        enc = tokenizer(
            texts[start : start + batch],
            add_special_tokens=False,
            return_offsets_mapping=True,
            truncation=False,
            verbose=False,  # whole documents are longer than the model: they are only being split here
        )
        for j, offsets in enumerate(enc["offset_mapping"]):
            i = start + j
            text = texts[i]
            if not offsets:
                spans = [(0, len(text))]
            else:
                windows = _window_spans(text, offsets, chunk_tokens, chunk_overlap)
                spans = [(offsets[a][0], offsets[b - 1][1]) for a, b in windows]
            for k, (a, b) in enumerate(spans):
                out["passage_id"].append(f"{ids[i]}#{k}")
                out["doc_id"].append(ids[i])
                out["title"].append(titles[i])
                out["text"].append(text[a:b].strip() or text[a:b])
    return out


def passage_text_for_encoding(title: str, text: str) -> str:
    """The string the retriever encodes for a passage: ``"title | text"`` (ColBERT convention)."""
    return f"{title} | {text}" if title else text


__all__ = ["chunk_corpus", "load_corpus", "passage_text_for_encoding"]
