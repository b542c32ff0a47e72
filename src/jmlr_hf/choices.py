"""The closed sets of values that options take, as ``Literal`` types, and the one check for them.

``HfArgumentParser`` (and TRL's ``TrlParser`` on top of it) turns a ``Literal[...]`` field into argparse
``choices``: ``--help`` lists them and a flag or config value outside them is refused before anything
loads. :func:`invalid_choices` applies the same check to an arguments dataclass built in Python.
This module imports nothing heavy, so that the ``jmlr`` command can build its parsers quickly.

Examples:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Options:
    ...     backend: IndexBackend = "auto"
    >>> invalid_choices(Options(backend="annoy"))
    ["backend must be one of auto, exact, faiss, got 'annoy'"]
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Literal

__all__ = ["DType", "IndexBackend", "MCQMethod", "QAFormat", "invalid_choices", "literal_choices"]

#: dtype an LLM's weights are loaded in (``"auto"``: the checkpoint's own).
DType = Literal["auto", "bfloat16", "float16", "float32"]
#: Search backend of a :class:`~jmlr_hf.DocumentIndex` (``"auto"``: faiss from 2,048 passages on).
IndexBackend = Literal["auto", "exact", "faiss"]
#: Layouts of QA files that :func:`jmlr_hf.data.load_qa_dataset` adapts into the QA schema.
QAFormat = Literal["qa", "medqa", "medmcqa", "mmlu", "pubmedqa"]
#: How :func:`jmlr_hf.evaluation.evaluate_mcq` reads the answer of a multiple-choice question.
MCQMethod = Literal["loglik", "option", "generate"]


def literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    """The values of a ``Literal[...]`` (or ``Literal[...] | None``) annotation; ``None`` for any other type."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for member in typing.get_args(annotation):
            if typing.get_origin(member) is Literal:
                return typing.get_args(member)
    return None


@functools.cache
def _literal_fields(cls: type) -> dict[str, tuple[Any, ...]]:
    hints = typing.get_type_hints(cls)
    found = {f.name: literal_choices(hints.get(f.name)) for f in dataclasses.fields(cls)}
    return {name: choices for name, choices in found.items() if choices}


def invalid_choices(obj: Any) -> list[str]:
    """One message per ``Literal`` field of the dataclass ``obj`` whose value is not one of its choices
    (``None`` passes: optional fields)."""
    return [
        f"{name} must be one of {', '.join(map(str, choices))}, got {getattr(obj, name)!r}"
        for name, choices in _literal_fields(type(obj)).items()
        if getattr(obj, name) is not None and getattr(obj, name) not in choices
    ]
