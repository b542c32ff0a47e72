"""Shared fixtures: tiny random models (fast; built by testing_utils), the embedded defaults and the shared real
data (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The builders live in testing_utils; tests written against conftest's names keep importing them from here.
from testing_utils import make_tiny_retriever, save_tiny_models, tiny_llama_config  # noqa: F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def encoder_path() -> Path:
    """The embedded all-MiniLM-L6-v2 folder (its tokenizer also serves the tiny random retrievers)."""
    from jmlr_hf.models import MissingDefaultModelError, default_encoder_path

    try:
        return default_encoder_path()
    except MissingDefaultModelError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def llm_tokenizer():
    """The embedded SmolLM2 tokenizer (the tiny random LLMs of the tests use its vocabulary)."""
    from transformers import AutoTokenizer

    from jmlr_hf.models import MissingDefaultModelError, default_llm_path

    try:
        return AutoTokenizer.from_pretrained(default_llm_path())
    except MissingDefaultModelError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def bert_tokenizer(encoder_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(encoder_path)


@pytest.fixture
def tiny_retriever(bert_tokenizer):
    return make_tiny_retriever(bert_tokenizer)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``$JMLR_SHARED_DATA`` (the real MIRAGE / NGC files); tests that need it skip without it."""
    root = os.environ.get("JMLR_SHARED_DATA")
    if not root:
        pytest.skip("JMLR_SHARED_DATA is not set: the real data tests need ../shared/data")
    path = Path(root)
    if not path.is_dir():
        pytest.skip(f"JMLR_SHARED_DATA={root} is not a folder")
    return path


@pytest.fixture(scope="session")
def ngc_path(shared_data) -> Path:
    path = shared_data / "ngc" / "ngc_guidelines.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path
