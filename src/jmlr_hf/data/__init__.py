"""Data: QA schemas and adapters, corpora and chunking, the synthetic demo task."""

from .corpus import chunk_corpus, load_corpus, passage_text_for_encoding
from .demo import DemoTask, make_demo_task
from .qa import (
    QARow,
    answer_letters,
    format_question,
    format_target,
    from_medmcqa,
    from_medqa,
    from_mmlu,
    from_pubmedqa,
    load_mirage,
    load_qa_dataset,
    to_qa_dataset,
    validate_qa_dataset,
    validate_qa_row,
)

__all__ = [
    "DemoTask",
    "QARow",
    "answer_letters",
    "chunk_corpus",
    "format_question",
    "format_target",
    "from_medmcqa",
    "from_medqa",
    "from_mmlu",
    "from_pubmedqa",
    "load_corpus",
    "load_mirage",
    "load_qa_dataset",
    "make_demo_task",
    "passage_text_for_encoding",
    "to_qa_dataset",
    "validate_qa_dataset",
    "validate_qa_row",
]
