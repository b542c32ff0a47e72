"""Builders of the tests' tiny models and trainers: one copy for the tests, conftest and the workers.

Tiny random models train in seconds on a CPU; the tokenizers are the embedded defaults' (SmolLM2 for the
LLM, MiniLM's BERT tokenizer for the retriever), so the text pipeline is the real one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

#: ``JMLRTrainingArguments`` of a tiny joint run: 2 rows per step, 6 candidates, 3 scored, 2 in the prompt.
TRAINER_DEFAULTS: dict[str, Any] = dict(
    per_device_train_batch_size=2,
    num_candidate_docs=6,
    num_scored_docs=3,
    num_context_docs=2,
    max_context_tokens=256,
    learning_rate=1e-3,
    retriever_learning_rate=5e-3,
    max_steps=2,
    logging_steps=1,
    save_strategy="no",
    report_to="none",
    use_cpu=True,
    dataloader_num_workers=0,
)


def default_tokenizers() -> tuple[Any, Any]:
    """``(llm_tokenizer, bert_tokenizer)`` of the embedded defaults (outside pytest's fixtures)."""
    from transformers import AutoTokenizer

    from jmlr_hf.models import default_encoder_path, default_llm_path

    return AutoTokenizer.from_pretrained(default_llm_path()), AutoTokenizer.from_pretrained(
        default_encoder_path()
    )


def make_tiny_retriever(tokenizer: Any, dim: int = 16, seed: int = 0, **config_kwargs: Any):
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


def tiny_llama_config(**overrides: Any):
    """A 2-layer GQA Llama config (4 query / 2 key-value heads, hidden 64) for fast tests."""
    from transformers import LlamaConfig

    kwargs: dict[str, Any] = dict(
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


def make_tiny_llm(tokenizer: Any, seed: int = 0, attn_implementation: str | None = None, **overrides: Any):
    """A random tiny Llama (hidden 32) over ``tokenizer``'s vocabulary, 2,048 positions, seeded by ``seed``.

    ``overrides`` change the :func:`tiny_llama_config` fields (``hidden_size``, ``tie_word_embeddings``, ...).
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_llama_config(
        **{
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "max_position_embeddings": 2048,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            **overrides,
        }
    )
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return AutoModelForCausalLM.from_config(config, **kwargs)


def make_trainer(
    tmp_path: str | os.PathLike,
    llm_tokenizer: Any,
    bert_tokenizer: Any,
    demo: Any,
    seed: int = 0,
    *,
    llm: Any = None,
    retriever: Any = None,
    callbacks: list[Any] | None = None,
    **overrides: Any,
):
    """A :class:`~jmlr_hf.JMLRTrainer` on the demo task with tiny models (built from ``seed`` unless given)
    and an exact index; the arguments are :data:`TRAINER_DEFAULTS` with ``output_dir=tmp_path/out`` and
    ``seed``, updated by ``overrides``."""
    from jmlr_hf import DocumentIndex, JMLRTrainer, JMLRTrainingArguments

    retriever = retriever if retriever is not None else make_tiny_retriever(bert_tokenizer, seed=seed)
    index = DocumentIndex.build(demo.corpus, retriever, backend="exact")
    defaults = {**TRAINER_DEFAULTS, "output_dir": str(Path(tmp_path) / "out"), "seed": seed}
    return JMLRTrainer(
        model=llm if llm is not None else make_tiny_llm(llm_tokenizer, seed),
        retriever=retriever,
        index=index,
        args=JMLRTrainingArguments(**{**defaults, **overrides}),
        train_dataset=demo.train,
        processing_class=llm_tokenizer,
        callbacks=callbacks,
    )


def save_tiny_models(root: Path, llm_tokenizer: Any, bert_tokenizer: Any, seed: int = 0) -> tuple[Path, Path]:
    """Save a tiny random Llama (with ``llm_tokenizer``) to ``root/llm`` and a tiny retriever to
    ``root/retriever``, as a user's own checkpoints would be: ``(llm_dir, retriever_dir)``."""
    llm_dir, retriever_dir = root / "llm", root / "retriever"
    make_tiny_llm(llm_tokenizer, seed).save_pretrained(llm_dir)
    llm_tokenizer.save_pretrained(llm_dir)
    make_tiny_retriever(bert_tokenizer, seed=seed).save_pretrained(retriever_dir)
    return llm_dir, retriever_dir


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` as JSON Lines to ``path``; returns ``path``."""
    import json

    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def run_cli(argv: list[Any], capsys: Any) -> tuple[int, str, str]:
    """``jmlr ARGV...`` in-process: ``(exit status, stdout, stderr)``."""
    from jmlr_hf.cli import main

    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def make_cli_assets(
    root: Path, llm_tokenizer: Any, bert_tokenizer: Any, backend: str = "exact"
) -> dict[str, Any]:
    """What the ``jmlr`` command tests work on: tiny models saved to ``root/llm`` and ``root/retriever``, the
    demo task's corpus and QA files (train with rationales, test) as JSON Lines, and ``root/index`` built
    over the corpus by ``jmlr index`` with ``backend``."""
    from jmlr_hf.cli import main
    from jmlr_hf.data import make_demo_task

    llm_dir, retriever_dir = save_tiny_models(root, llm_tokenizer, bert_tokenizer)
    task = make_demo_task(num_facts=12, seed=0, related_docs_per_fact=1, test_fraction=0.5)
    keep = ("id", "question", "options", "answer", "explanation")
    files = {
        "corpus": write_jsonl(root / "corpus.jsonl", task.corpus.to_list()),
        "train": write_jsonl(root / "train.jsonl", [{k: r[k] for k in keep} for r in task.train]),
        "test": write_jsonl(root / "test.jsonl", [{k: r[k] for k in keep} for r in task.test]),
    }
    argv = ["index", "--corpus", files["corpus"], "--retriever", retriever_dir, "--output", root / "index"]
    argv += ["--backend", backend, "--chunk-tokens", "32", "--chunk-overlap", "8", "-q"]
    assert main([str(a) for a in argv]) == 0
    return {
        "root": root,
        "llm": llm_dir,
        "retriever": retriever_dir,
        "index": root / "index",
        "task": task,
        **files,
    }
