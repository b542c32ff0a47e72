"""What the ``jmlr`` commands load: the LLM, the retriever and the index of a ``--model`` folder, settings.

A folder written by ``jmlr train`` / ``JMLRTrainer.save_model`` holds the LLM, the trained retriever in
``retriever/``, the re-encoded index in ``index/`` and the prompt settings (:mod:`jmlr_hf.layout`):
``--model DIR`` picks them all up. Heavy imports happen inside the functions.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..layout import INDEX_DIR, RETRIEVER_DIR
from ..recipe import is_default

__all__ = [
    "device",
    "index_source",
    "load_index",
    "load_llm",
    "model_dir",
    "progress_bars",
    "prompt_settings",
    "retriever_source",
]


def device(name: str | None) -> Any:
    """The ``torch.device`` of ``--device`` (``auto``: CUDA when available)."""
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_dir(model: str | None) -> Path | None:
    """The local folder of ``--model`` (None for the default or a Hub id)."""
    if is_default(model) or not os.path.isdir(str(model)):
        return None
    return Path(str(model))


def load_llm(model: str | None, dtype: str | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for inference: the default, a Hub id, a folder, or a LoRA adapter folder."""
    from transformers import AutoTokenizer

    from .. import models
    from ..recipe import _looks_like_local_path, _torch_dtype, weights_errors_named

    kwargs = {} if dtype is None else {"dtype": _torch_dtype(dtype)}
    if is_default(model):
        return models.load_default_llm(**kwargs)
    path = str(model)
    if not os.path.exists(path) and _looks_like_local_path(path):
        raise FileNotFoundError(f"model not found: {path}")
    if os.path.isdir(path) and not (
        os.path.isfile(os.path.join(path, "config.json"))
        or os.path.isfile(os.path.join(path, "adapter_config.json"))
    ):
        raise FileNotFoundError(f"{path} holds no config.json or adapter_config.json: not a model folder")
    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_source(path))
    with weights_errors_named(path):  # adapter folders load their base model through PEFT
        return models.load_llm(path, **kwargs), tokenizer


def _tokenizer_source(path: str) -> str:
    """``path``, or the base model of an adapter folder saved without its tokenizer."""
    adapter_config = os.path.join(path, "adapter_config.json")
    if os.path.isfile(adapter_config) and not os.path.isfile(os.path.join(path, "tokenizer_config.json")):
        with open(adapter_config, encoding="utf-8") as f:
            return json.load(f).get("base_model_name_or_path") or path
    return path


def _inside_model(model: str | None, name: str) -> str | None:
    """``DIR/name`` when ``--model`` is a local folder ``DIR`` holding that folder."""
    folder = model_dir(model)
    return str(folder / name) if folder is not None and (folder / name).is_dir() else None


def retriever_source(retriever: str | None, model: str | None) -> str | None:
    """``--retriever``, else the trained retriever inside ``--model DIR`` (``DIR/retriever``), else default."""
    return retriever if retriever is not None else _inside_model(model, RETRIEVER_DIR)


def index_source(index: str | None, model: str | None) -> str | None:
    """``--index``, else the index folder inside ``--model DIR`` (``DIR/index``; loading it names a missing
    or broken file)."""
    return index if index is not None else _inside_model(model, INDEX_DIR)


def load_index(index_dir: str, retriever_name: str | None, on: Any) -> Any:
    """The saved index at ``index_dir`` with the retriever it was built with (on the device ``on``)."""
    from ..recipe import load_retriever
    from ..retriever import DocumentIndex, StaleIndexError

    if not os.path.isdir(index_dir):
        raise FileNotFoundError(f"index folder not found: {index_dir}")
    retriever = load_retriever(retriever_name).to(on).eval()
    try:
        return DocumentIndex.load(index_dir, retriever)
    except StaleIndexError as err:
        raise StaleIndexError(
            f"{err}. The index was built with another retriever than {retriever_name or 'default'!r}: pass "
            f"the retriever it was built with (--retriever), or re-encode it with `jmlr index --refresh "
            f"--output {index_dir} --retriever ...`"
        ) from None


def prompt_settings(args: Any) -> tuple[int, int, str | None]:
    """``(k, max_context_tokens, prompt_template)``: the flags, else what ``jmlr train`` saved in ``--model``,
    else the training defaults (so inference prompts are the training prompts)."""
    from ..layout import read_inference_settings
    from ..prompting import DEFAULT_MAX_CONTEXT_TOKENS
    from ..trainer.arguments import JMLRTrainingArguments

    saved = read_inference_settings(model_dir(args.model))
    k = (
        args.k
        if args.k is not None
        else saved.get("num_context_docs", JMLRTrainingArguments.num_context_docs)
    )
    budget = args.max_context_tokens or saved.get("max_context_tokens") or DEFAULT_MAX_CONTEXT_TOKENS
    return k, budget, saved.get("prompt_template")


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """transformers' / datasets' progress bars off inside (``--quiet``), as they were after."""
    from transformers.utils import logging as hf_logging

    were_on = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if were_on:
            hf_logging.enable_progress_bar()
