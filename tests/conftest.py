"""Shared fixtures: tiny random models (fast), the embedded defaults and the shared real data (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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


def make_tiny_retriever(tokenizer, dim: int = 16, seed: int = 0, **config_kwargs):
    """A randomly initialised 2-layer BERT retriever (hidden 32) with a real BERT tokenizer."""
    from transformers import BertConfig

    from jmlr_hf import JMLRRetriever, JMLRRetrieverConfig

    torch.manual_seed(seed)
    encoder_config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    model = JMLRRetriever(JMLRRetrieverConfig(encoder_config=encoder_config, dim=dim, **config_kwargs))
    model.tokenizer = tokenizer
    return model.eval()


def tiny_llama_config(**overrides: object):
    """A 2-layer GQA Llama config (4 query / 2 key-value heads, hidden 64) for fast tests."""
    from transformers import LlamaConfig

    kwargs = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


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


def save_tiny_models(root: Path, llm_tokenizer, bert_tokenizer, seed: int = 0) -> tuple[Path, Path]:
    """Save a tiny random Llama (with ``llm_tokenizer``) to ``root/llm`` and a tiny retriever to
    ``root/retriever``, as a user's own checkpoints would be: ``(llm_dir, retriever_dir)``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_llama_config(
        vocab_size=len(llm_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        max_position_embeddings=2048,
        pad_token_id=llm_tokenizer.pad_token_id,
        eos_token_id=llm_tokenizer.eos_token_id,
    )
    llm_dir, retriever_dir = root / "llm", root / "retriever"
    AutoModelForCausalLM.from_config(config).save_pretrained(llm_dir)
    llm_tokenizer.save_pretrained(llm_dir)
    make_tiny_retriever(bert_tokenizer, seed=seed).save_pretrained(retriever_dir)
    return llm_dir, retriever_dir
