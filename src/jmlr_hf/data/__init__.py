"""Data: QA schemas and adapters, corpora and chunking, the synthetic demo task."""

from .corpus import chunk_corpus, load_corpus, passage_text_for_encoding

__all__ = ["chunk_corpus", "load_corpus", "passage_text_for_encoding"]
