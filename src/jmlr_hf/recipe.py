"""The training recipe shared by ``jmlr train`` and ``examples/train_medqa.py``.

Three dataclasses, parsed together by ``transformers.HfArgumentParser`` (the TRL / ``run_clm.py``
habit): :class:`ModelArguments` (which LLM and retriever, attention, LoRA / QLoRA),
:class:`DataArguments` (QA files, corpus, index) and :class:`~jmlr_hf.JMLRTrainingArguments`
(every ``TrainingArguments`` field plus the joint step's). :func:`parse_args` reads a YAML config and
lets command-line flags override it; :func:`run_training` loads everything, builds or loads the index,
trains, saves and returns the :class:`~jmlr_hf.JMLRTrainer`::

    from jmlr_hf.recipe import parse_args, run_training

    model_args, data_args, training_args = parse_args(["--max_steps", "10"], config_file="cpu-demo.yaml")
    trainer = run_training(model_args, data_args, training_args)

What :func:`run_training` writes to ``output_dir``: the LLM (or its LoRA adapter) and tokenizer, the
retriever in ``retriever/``, the index re-encoded with the trained retriever in ``index/`` (unless
``save_index`` is false) and the prompt settings in ``jmlr_inference.json`` (``jmlr eval`` and
``jmlr ask`` read them, so inference prompts are the training prompts).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .trainer.arguments import JMLRTrainingArguments

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MODEL",
    "INFERENCE_FILE",
    "DataArguments",
    "ModelArguments",
    "build_or_load_index",
    "load_llm_and_tokenizer",
    "load_retriever",
    "load_training_data",
    "parse_args",
    "run_training",
]

#: The model name that means "the embedded default" (SmolLM2 / MiniLM), as does leaving it out.
DEFAULT_MODEL = "default"
#: Prompt settings written next to a trained model (read by ``jmlr eval`` / ``jmlr ask``).
INFERENCE_FILE = "jmlr_inference.json"
#: Seed of the new ColBERT head put on an encoder, so that "default" is the same retriever everywhere.
HEAD_SEED = 0

_DTYPES = ("auto", "bfloat16", "float16", "float32")
_BACKENDS = ("auto", "exact", "faiss")
_KEY_ALIASES = {"torch_dtype": "dtype", "model_name_or_path": "llm_name_or_path"}


def is_default(name: str | os.PathLike | None) -> bool:
    """``None`` or ``"default"``: the embedded default model."""
    return name is None or str(name).strip().lower() in ("", DEFAULT_MODEL)


@dataclass
class ModelArguments:
    """Which LLM and retriever to train, and how to load them."""

    llm_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Causal LM (Hub id or folder); omitted or 'default': the embedded SmolLM2-135M-Instruct."
        },
    )
    retriever_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Retriever: a JMLR / Stanford ColBERT / PyLate checkpoint, or a plain BERT-like encoder "
            "(a new ColBERT head is put on it); a folder written by JMLRTrainer (with retriever/) works too. "
            "Omitted or 'default': the embedded all-MiniLM-L6-v2 with a new head."
        },
    )
    retriever_dim: int = field(
        default=128, metadata={"help": "Token-vector size of a new ColBERT head (plain encoders only)."}
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "LLM attention: 's2_attn' (LongLoRA's Shifted Sparse Attention), 'sdpa', 'eager', ..."
        },
    )
    s2_group_size_ratio: float = field(
        default=0.25, metadata={"help": "S2-Attn group size as a fraction of the sequence length."}
    )
    context_length: int | None = field(
        default=None,
        metadata={
            "help": "Extend the LLM's context to this many tokens the LongLoRA way (linear RoPE scaling); "
            "nothing changes when it fits already."
        },
    )
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "dtype the LLM weights are loaded in: auto, bfloat16, float16 or float32 (default: the "
            "checkpoint's). Mixed precision is TrainingArguments' bf16 / fp16.",
            "aliases": ["--torch_dtype", "--torch-dtype"],
        },
    )
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters on the LLM (PEFT)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "Modules that get LoRA adapters ('all-linear' or names such as q_proj v_proj)."},
    )
    lora_train_embeddings_and_norms: bool = field(
        default=False,
        metadata={
            "help": "Also train (and save) the embeddings and norm layers beside LoRA, as LongLoRA does for "
            "long contexts."
        },
    )
    load_in_4bit: bool = field(
        default=False,
        metadata={"help": "QLoRA: load the LLM in 4-bit NF4 with bitsandbytes (CUDA; needs use_lora)."},
    )

    def __post_init__(self) -> None:
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]
        problems = []
        if self.dtype is not None and self.dtype not in _DTYPES:
            problems.append(f"dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        if not 0 < self.s2_group_size_ratio <= 1:
            problems.append(f"s2_group_size_ratio must be in (0, 1], got {self.s2_group_size_ratio}")
        if self.load_in_4bit and not self.use_lora:
            problems.append("load_in_4bit (QLoRA) needs use_lora: a 4-bit model cannot be trained directly")
        if self.use_lora and (self.lora_r <= 0 or not self.lora_target_modules):
            problems.append("use_lora needs lora_r > 0 and at least one lora_target_modules entry")
        if self.context_length is not None and self.context_length <= 0:
            problems.append(f"context_length must be positive, got {self.context_length}")
        if self.retriever_dim <= 0:
            problems.append(f"retriever_dim must be positive, got {self.retriever_dim}")
        if problems:
            raise ValueError("Invalid ModelArguments: " + "; ".join(problems))


@dataclass
class DataArguments:
    """Training data (QA rows), the retrieval corpus and its index."""

    demo: bool = field(
        default=False,
        metadata={
            "help": "Train on the bundled synthetic demo task (fictional guidelines; not medical advice) "
            "instead of train_file / corpus_files."
        },
    )
    demo_num_facts: int = field(
        default=120, metadata={"help": "Facts (guideline passages) of the demo task."}
    )
    demo_questions_per_fact: int = field(default=2, metadata={"help": "Questions per demo fact."})
    train_file: str | None = field(
        default=None, metadata={"help": "QA file to train on (.jsonl, .json or .parquet)."}
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A Hub dataset to train on instead of train_file (datasets.load_dataset)."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config of dataset_name."})
    train_split: str | None = field(
        default=None,
        metadata={"help": "Split to train on when the source holds several (Hub datasets: default 'train')."},
    )
    data_format: str = field(
        default="qa",
        metadata={
            "help": "Layout of the QA rows: 'qa' (the jmlr-hf schema), 'medqa', 'medmcqa', 'mmlu' or 'pubmedqa'."
        },
    )
    eval_file: str | None = field(
        default=None, metadata={"help": "QA file for the Trainer's evaluation loop (joint loss)."}
    )
    eval_split: str | None = field(default=None, metadata={"help": "Split of eval_file / dataset_name."})
    skip_bad_rows: bool = field(
        default=False, metadata={"help": "Drop malformed QA rows with a warning instead of stopping."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on the first N rows only."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on the first N rows only."}
    )
    corpus_files: list[str] | None = field(
        default=None,
        metadata={
            "help": "Corpus files of {id, title, text} rows (.jsonl[.gz], .json, .parquet); ids unique."
        },
    )
    corpus_dataset_name: str | None = field(
        default=None,
        metadata={"help": "A Hub corpus (e.g. epfl-llm/guidelines, gated) instead of / beside corpus_files."},
    )
    corpus_split: str = field(default="train", metadata={"help": "Split of corpus_dataset_name."})
    index_path: str | None = field(
        default=None,
        metadata={
            "help": "Load this saved index (from `jmlr index`) instead of building one from the corpus."
        },
    )
    index_backend: str = field(default="auto", metadata={"help": "Index backend: auto, exact or faiss."})
    chunk_tokens: int = field(default=150, metadata={"help": "Passage length in retriever tokens."})
    chunk_overlap: int = field(default=32, metadata={"help": "Overlap of consecutive passages, in tokens."})
    save_index: bool = field(
        default=True,
        metadata={
            "help": "After training, re-encode the index with the trained retriever and save it to output_dir/index."
        },
    )

    def __post_init__(self) -> None:
        from .data.qa import QA_FORMATS

        if isinstance(self.corpus_files, str):
            self.corpus_files = [self.corpus_files]
        problems = []
        if self.data_format not in QA_FORMATS:
            problems.append(f"data_format must be one of {', '.join(QA_FORMATS)}, got {self.data_format!r}")
        if self.index_backend not in _BACKENDS:
            problems.append(
                f"index_backend must be one of {', '.join(_BACKENDS)}, got {self.index_backend!r}"
            )
        if self.demo:
            clash = [
                n
                for n in ("train_file", "dataset_name", "corpus_files", "corpus_dataset_name", "index_path")
                if getattr(self, n)
            ]
            if clash:
                problems.append(f"demo uses the synthetic task: drop {', '.join(clash)}")
        else:
            if not self.train_file and not self.dataset_name:
                problems.append("give train_file or dataset_name (or demo: true)")
            if self.train_file and self.dataset_name:
                problems.append("give train_file or dataset_name, not both")
            if not (self.corpus_files or self.corpus_dataset_name or self.index_path):
                problems.append("give corpus_files, corpus_dataset_name or index_path (the retrieval corpus)")
            if self.index_path and (self.corpus_files or self.corpus_dataset_name):
                problems.append(
                    "index_path already holds the corpus: drop corpus_files / corpus_dataset_name"
                )
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                problems.append(f"{name} must be positive, got {value}")
        if problems:
            raise ValueError("Invalid DataArguments: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------

_DATACLASSES = (ModelArguments, DataArguments, JMLRTrainingArguments)


def _field_names() -> dict[str, str]:
    return {f.name: cls.__name__ for cls in _DATACLASSES for f in dataclasses.fields(cls) if f.init}


def read_config(config_file: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config into ``{field: value}``; errors name the file and the offending key."""
    import yaml

    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: invalid YAML ({err})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a mapping of option: value, got {type(data).__name__}")
    known = _field_names()
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = _KEY_ALIASES.get(str(key), str(key))
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"{path}: unknown key {key!r} (not a ModelArguments, DataArguments or JMLRTrainingArguments "
                f"field){hint}"
            )
        if name in values:
            raise ValueError(f"{path}: {key!r} is given twice (as {name!r} and an alias)")
        values[name] = value
    return values


def build_arg_parser(prog: str | None = None):
    """The ``HfArgumentParser`` over ModelArguments, DataArguments and JMLRTrainingArguments."""
    from transformers import HfArgumentParser

    return HfArgumentParser(_DATACLASSES, prog=prog)


def parse_args(
    argv: Sequence[str] | None = None, config_file: str | os.PathLike | None = None, prog: str | None = None
) -> tuple[ModelArguments, DataArguments, JMLRTrainingArguments]:
    """Parse a YAML config (``config_file`` or ``--config`` in ``argv``) with command-line overrides.

    Flags on the command line win over the config's values (``--max_steps 2``, ``--bf16 false``,
    ``--lora_target_modules q_proj v_proj``). Unknown config keys raise ``ValueError`` naming the key and
    the file, unknown flags ``ValueError`` naming the flag; a value argparse cannot convert exits with its
    usage error (status 2).

    Returns:
        ``(model_args, data_args, training_args)``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    known, argv = pre.parse_known_args(argv)
    config_file = known.config or config_file
    parser = build_arg_parser(prog)
    if config_file is not None:
        values = read_config(config_file)
        for action in parser._actions:
            if action.dest in values:
                action.required = False
        parser.set_defaults(**values)
    try:
        model_args, data_args, training_args, unknown = parser.parse_args_into_dataclasses(
            args=argv, look_for_args_file=False, return_remaining_strings=True
        )
    except ValueError as err:
        where = f" (config {config_file})" if config_file else ""
        raise ValueError(f"{err}{where}") from err
    if unknown:
        flags = [a for a in unknown if a.startswith("--")]
        known = [f"--{name}" for name in _field_names()]
        close = difflib.get_close_matches(flags[0].split("=")[0], known, n=1) if flags else []
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ValueError(f"unknown command-line argument(s) {' '.join(unknown)}{hint}")
    return model_args, data_args, training_args


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------


def load_retriever(name_or_path: str | os.PathLike | None = None, dim: int = 128):
    """A :class:`~jmlr_hf.JMLRRetriever` from a name or folder.

    ``None`` / ``"default"``: the embedded MiniLM with a new ColBERT head; a folder written by
    ``JMLRTrainer.save_model`` (holding ``retriever/``): its retriever; a JMLR, Stanford ColBERT or PyLate
    checkpoint: loaded as is; a plain BERT-like encoder: a new ColBERT head of size ``dim`` on it.
    New heads are seeded (:data:`HEAD_SEED`) so that the same name gives the same retriever in every
    process and command (an index built with ``--retriever default`` loads with ``default`` later).
    """
    from .retriever import JMLRRetriever
    from .trainer.trainer import RETRIEVER_DIR

    if is_default(name_or_path):
        from .models import load_default_retriever

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(HEAD_SEED)
            return load_default_retriever(dim=dim)
    path = str(name_or_path)
    if os.path.isdir(os.path.join(path, RETRIEVER_DIR)) and _is_jmlr_model_dir(path):
        path = os.path.join(path, RETRIEVER_DIR)
    elif not os.path.exists(path) and _looks_like_local_path(path):
        raise FileNotFoundError(f"retriever not found: {path}")
    try:
        return JMLRRetriever.from_pretrained(path)
    except ValueError as err:
        if "plain encoder" not in str(err):
            raise
        logger.info("%s is a plain encoder: putting a new ColBERT head (dim %d) on it", path, dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(HEAD_SEED)
            return JMLRRetriever.from_encoder(path, dim=dim)


def _looks_like_local_path(path: str) -> bool:
    """Not a Hub id (``name`` or ``org/name``): a missing local path deserves a "not found" error."""
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or os.sep != "/" and os.sep in path


def _is_jmlr_model_dir(path: str) -> bool:
    """A folder written by ``JMLRTrainer.save_model``: an LLM (or adapter) with ``retriever/`` inside."""
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return True  # an adapter folder, or retriever/ + index/ only
    with open(config, encoding="utf-8") as f:
        return json.load(f).get("model_type") != "jmlr_retriever"


def _torch_dtype(name: str | None) -> Any:
    if name is None or name == "auto":
        return name
    return getattr(torch, name)


def load_llm_and_tokenizer(model_args: ModelArguments, training_args: JMLRTrainingArguments | None = None):
    """The LLM and its tokenizer as :class:`ModelArguments` describe them (attention, dtype, 4-bit, context).

    Loads through :func:`jmlr_hf.models.load_llm` (which also does QLoRA's 4-bit loading and
    ``prepare_model_for_kbit_training``). Returns ``(model, tokenizer)``; LoRA is applied later by the
    trainer (see :func:`lora_config`).
    """
    from transformers import AutoTokenizer

    from .attention import configure_s2_attn, extend_context
    from .models import default_llm_path, load_llm

    path = default_llm_path() if is_default(model_args.llm_name_or_path) else model_args.llm_name_or_path
    # transformers 5.x renamed gradient_checkpointing to activation_checkpointing
    checkpointing = bool(
        training_args is not None
        and (
            getattr(training_args, "activation_checkpointing", None)
            or getattr(training_args, "gradient_checkpointing", None)
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = load_llm(
        path,
        quantization="4bit" if model_args.load_in_4bit else None,
        attn_implementation=model_args.attn_implementation,
        dtype=_torch_dtype(model_args.dtype),
        gradient_checkpointing=checkpointing,
    )
    if model_args.attn_implementation == "s2_attn":
        configure_s2_attn(model, group_size_ratio=model_args.s2_group_size_ratio)
    if model_args.context_length:
        extend_context(model, model_args.context_length)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def lora_config(model_args: ModelArguments, model: torch.nn.Module):
    """The ``peft.LoraConfig`` for ``model`` (``None`` without ``use_lora``)."""
    if not model_args.use_lora:
        return None
    from peft import LoraConfig

    from .attention import embedding_and_norm_module_names

    targets: str | list[str] = model_args.lora_target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    modules_to_save = (
        embedding_and_norm_module_names(model) if model_args.lora_train_embeddings_and_norms else None
    )
    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=targets,
        modules_to_save=modules_to_save,
        task_type="CAUSAL_LM",
    )


def load_training_data(data_args: DataArguments, seed: int = 0):
    """``(train_dataset, eval_dataset or None, corpus or None)`` as :class:`DataArguments` describe them.

    The corpus is ``None`` when ``index_path`` is given (the saved index holds the passages).
    """
    from .data import load_corpus, load_qa_dataset, make_demo_task

    on_error = "skip" if data_args.skip_bad_rows else "raise"
    if data_args.demo:
        task = make_demo_task(
            num_facts=data_args.demo_num_facts,
            seed=seed,
            questions_per_fact=data_args.demo_questions_per_fact,
            related_docs_per_fact=3,
        )
        train, evaluation, corpus = task.train, task.test, task.corpus
    else:
        if data_args.dataset_name:
            train = load_qa_dataset(
                _hub_dataset(data_args.dataset_name, data_args.dataset_config_name),
                data_args.data_format,
                split=data_args.train_split or "train",
                on_error=on_error,
            )
        else:
            train = load_qa_dataset(
                data_args.train_file, data_args.data_format, split=data_args.train_split, on_error=on_error
            )
        evaluation = None
        if data_args.eval_file:
            evaluation = load_qa_dataset(
                data_args.eval_file, data_args.data_format, split=data_args.eval_split, on_error=on_error
            )
        elif data_args.dataset_name and data_args.eval_split:
            evaluation = load_qa_dataset(
                _hub_dataset(data_args.dataset_name, data_args.dataset_config_name),
                data_args.data_format,
                split=data_args.eval_split,
                on_error=on_error,
            )
        corpus = None
        if not data_args.index_path:
            parts = [load_corpus(path) for path in data_args.corpus_files or ()]
            if data_args.corpus_dataset_name:
                from datasets import load_dataset

                parts.append(
                    load_corpus(load_dataset(data_args.corpus_dataset_name, split=data_args.corpus_split))
                )
            if len(parts) == 1:
                corpus = parts[0]
            else:
                from datasets import concatenate_datasets

                corpus = load_corpus(concatenate_datasets(parts))  # checks ids are unique across files
    if data_args.max_train_samples is not None:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if evaluation is not None and data_args.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(data_args.max_eval_samples, len(evaluation))))
    if len(train) == 0:
        raise ValueError("the training set is empty")
    return train, evaluation, corpus


def _hub_dataset(name: str, config: str | None):
    from datasets import load_dataset

    return load_dataset(name, config)


def build_or_load_index(
    data_args: DataArguments, corpus: Any, retriever: Any, show_progress_bar: bool | None = None
):
    """Load ``index_path`` for ``retriever`` (re-encoded when it was built with other weights), or build
    the index over ``corpus``."""
    from .retriever import DocumentIndex

    if data_args.index_path:
        index = DocumentIndex.load(data_args.index_path, retriever, allow_stale=True)
        if index.is_stale:
            logger.warning(
                "%s was encoded with other retriever weights: re-encoding %d passages",
                data_args.index_path,
                len(index),
            )
            index.refresh(retriever, show_progress_bar=show_progress_bar)
        return index
    return DocumentIndex.build(
        corpus,
        retriever,
        backend=data_args.index_backend,
        chunk_tokens=data_args.chunk_tokens,
        chunk_overlap=data_args.chunk_overlap,
        show_progress_bar=show_progress_bar,
    )


def _resume_checkpoint(training_args: JMLRTrainingArguments) -> str | None:
    """The checkpoint ``resume_from_checkpoint`` names, or ``None`` to start from scratch.

    ``"last"`` (or ``"latest"``, ``"auto"``): the newest *complete* ``checkpoint-N`` of ``output_dir``;
    newer incomplete ones (interrupted while saving) are skipped with a warning. ``"true"``: the newest
    one, as ``Trainer.train(resume_from_checkpoint=True)`` takes it, and a folder: both must be complete
    (``ValueError`` naming what is missing otherwise).
    """
    from .trainer.checkpoints import newest_complete_checkpoint, require_complete

    value = training_args.resume_from_checkpoint
    if value is None or str(value).lower() in ("", "false", "none"):
        return None
    folder = training_args.output_dir
    if str(value).lower() in ("last", "latest", "auto"):
        last = newest_complete_checkpoint(folder) if folder else None
    elif str(value).lower() == "true":
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(folder) if folder and os.path.isdir(folder) else None
    else:
        require_complete(value)
        return str(value)
    if last is None:
        logger.warning("resume_from_checkpoint=%s: no checkpoint in %s, starting from scratch", value, folder)
        return None
    require_complete(last)
    return last


def write_inference_settings(output_dir: str, training_args: JMLRTrainingArguments) -> None:
    """Write the prompt settings ``jmlr eval`` / ``jmlr ask`` reuse (``output_dir/jmlr_inference.json``)."""
    settings = {
        "prompt_template": training_args.prompt_template,
        "max_context_tokens": training_args.max_context_tokens,
        "num_context_docs": training_args.num_context_docs,
    }
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, INFERENCE_FILE), "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=2)
        f.write("\n")


def read_inference_settings(model_dir: str | os.PathLike | None) -> dict[str, Any]:
    """The prompt settings saved by :func:`run_training` in ``model_dir`` ({} when there are none)."""
    if model_dir is None:
        return {}
    path = Path(model_dir) / INFERENCE_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from err


def run_training(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: JMLRTrainingArguments,
    callbacks: list[Any] | None = None,
):
    """Load the models and data, build or load the index, train (resuming when asked), save, return the trainer.

    Args:
        model_args / data_args / training_args: from :func:`parse_args` (or built directly).
        callbacks: extra ``TrainerCallback`` s.

    Returns:
        The :class:`~jmlr_hf.JMLRTrainer` after training (``trainer.model``, ``trainer.retriever``,
        ``trainer.index``, ``trainer.state``).
    """
    from transformers import set_seed

    from .trainer import JMLRTrainer
    from .trainer.trainer import INDEX_DIR

    set_seed(training_args.seed)
    checkpoint = _resume_checkpoint(training_args)
    train, evaluation, corpus = load_training_data(data_args, seed=training_args.seed)
    logger.info(
        "Training on %d QA rows%s", len(train), f", evaluating on {len(evaluation)}" if evaluation else ""
    )
    retriever = load_retriever(model_args.retriever_name_or_path, dim=model_args.retriever_dim)
    index = build_or_load_index(data_args, corpus, retriever)
    model, tokenizer = load_llm_and_tokenizer(model_args, training_args)
    trainer = JMLRTrainer(
        model=model,
        retriever=retriever,
        index=index,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=lora_config(model_args, model),
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    if trainer.is_world_process_zero():
        output_dir = training_args.output_dir
        trainer.save_state()  # trainer_state.json: the log history of the run
        write_inference_settings(output_dir, training_args)
        if data_args.save_index:
            if trainer.index.is_stale:
                logger.info(
                    "Re-encoding the index (%d passages) with the trained retriever so that %s matches it "
                    "(save_index: false skips this)",
                    len(trainer.index),
                    os.path.join(output_dir, INDEX_DIR),
                )
                trainer.index.refresh(trainer.index.retriever, show_progress_bar=True)
            trainer.index.save(os.path.join(output_dir, INDEX_DIR))
    return trainer
