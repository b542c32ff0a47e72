"""The training recipe shared by ``jmlr train`` and ``examples/train_medqa.py``.

Three dataclasses, parsed together by :class:`~jmlr_hf.parsing.JMLRParser` (TRL's ``TrlParser``: a YAML
``--config`` that command-line flags override, the ``trl sft`` habit): :class:`ModelArguments` (which LLM
and retriever, attention, LoRA / QLoRA; TRL's ``ModelConfig`` spellings ``model_name_or_path``,
``use_peft`` and ``torch_dtype`` work too), :class:`DataArguments` (QA files, corpus, index) and
:class:`~jmlr_hf.JMLRTrainingArguments` (every ``TrainingArguments`` field plus the joint step's).
:func:`parse_args` reads them; :func:`run_training` loads everything, builds or loads the index, trains,
saves and returns the :class:`~jmlr_hf.JMLRTrainer`::

    from jmlr_hf.recipe import parse_args, run_training

    model_args, data_args, training_args = parse_args(["--max_steps", "10"], config_file="cpu-demo.yaml")
    trainer = run_training(model_args, data_args, training_args)

What :func:`run_training` writes to ``output_dir``: the LLM (or its LoRA adapter) and tokenizer, the
retriever in ``retriever/`` and the prompt settings in ``jmlr_inference.json`` (``jmlr eval`` and
``jmlr ask`` read them, so inference prompts are the training prompts), and the index re-encoded with the
trained retriever in ``index/`` (``save_index: false`` skips that re-encoding).

This module imports neither torch nor transformers at import time: ``jmlr train --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .choices import DType, IndexBackend, QAFormat, invalid_choices
from .layout import INFERENCE_FILE, read_inference_settings, write_inference_settings  # noqa: F401 (re-exported)
from .parsing import JMLRParser, read_config  # noqa: F401 (read_config re-exported)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .trainer.arguments import JMLRTrainingArguments

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MODEL",
    "INFERENCE_FILE",
    "DataArguments",
    "ModelArguments",
    "build_arg_parser",
    "build_or_load_index",
    "load_llm_and_tokenizer",
    "load_retriever",
    "load_training_data",
    "lora_config",
    "parse_args",
    "run_training",
]

#: The model name that means "the embedded default" (SmolLM2 / MiniLM), as does leaving it out.
DEFAULT_MODEL = "default"
#: Seed of the new ColBERT head put on an encoder, so that "default" is the same retriever everywhere.
HEAD_SEED = 0


def is_default(name: str | os.PathLike | None) -> bool:
    """``None`` or ``"default"``: the embedded default model."""
    return name is None or str(name).strip().lower() in ("", DEFAULT_MODEL)


def option(default: Any = dataclasses.MISSING, help: str = "", **metadata: Any) -> Any:
    """A dataclass field that ``JMLRParser`` shows as ``--name`` with ``help`` (``aliases`` / ``metavar`` in
    ``metadata``); a callable ``default`` is a default factory, no default makes the option required."""
    if default is dataclasses.MISSING:
        return field(metadata={"help": help, **metadata})
    if callable(default):
        return field(default_factory=default, metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


def index_backend_option() -> Any:
    """The index backend option (``jmlr train``'s ``index_backend``, ``jmlr index --backend``)."""
    return option("auto", "Index backend: faiss (auto: from 2,048 passages on) or exact brute-force MaxSim.")


def chunk_tokens_option() -> Any:
    """Passage length of the chunker, in retriever tokens."""
    return option(150, "Passage length in retriever tokens.")


def chunk_overlap_option() -> Any:
    """Overlap of consecutive passages, in retriever tokens."""
    return option(32, "Overlap of consecutive passages, in retriever tokens.")


@dataclass
class ModelArguments:
    """Which LLM and retriever to train, and how to load them."""

    llm_name_or_path: str | None = option(
        None,
        "Causal LM (Hub id or folder); omitted or 'default': the embedded SmolLM2-135M-Instruct.",
        aliases=["--model_name_or_path", "--model-name-or-path"],
    )
    retriever_name_or_path: str | None = option(
        None,
        "Retriever: a JMLR / Stanford ColBERT / PyLate checkpoint, or a plain BERT-like encoder (a new ColBERT "
        "head is put on it); a folder written by JMLRTrainer (with retriever/) works too. Omitted or "
        "'default': the embedded all-MiniLM-L6-v2 with a new head.",
    )
    retriever_dim: int = option(128, "Token-vector size of a new ColBERT head (plain encoders only).")
    attn_implementation: str | None = option(
        None, "LLM attention: 's2_attn' (LongLoRA's Shifted Sparse Attention), 'sdpa', 'eager', ..."
    )
    s2_group_size_ratio: float = option(0.25, "S2-Attn group size as a fraction of the sequence length.")
    context_length: int | None = option(
        None,
        "Extend the LLM's context to this many tokens the LongLoRA way (linear RoPE scaling); nothing "
        "changes when it fits already.",
    )
    dtype: DType | None = option(
        None,
        "dtype the LLM weights are loaded in (default: the checkpoint's). Mixed precision is "
        "TrainingArguments' bf16 / fp16.",
        aliases=["--torch_dtype", "--torch-dtype"],
    )
    use_lora: bool = option(
        False, "Train LoRA adapters on the LLM (PEFT).", aliases=["--use_peft", "--use-peft"]
    )
    lora_r: int = option(16, "LoRA rank.")
    lora_alpha: int = option(32, "LoRA alpha.")
    lora_dropout: float = option(0.05, "LoRA dropout.")
    lora_target_modules: list[str] = option(
        lambda: ["all-linear"],
        "Modules that get LoRA adapters ('all-linear' or names such as q_proj v_proj).",
    )
    lora_train_embeddings_and_norms: bool = option(
        False,
        "Also train (and save) the embeddings and norm layers beside LoRA, as LongLoRA does for long contexts.",
    )
    load_in_4bit: bool = option(
        False, "QLoRA: load the LLM in 4-bit NF4 with bitsandbytes (CUDA; needs use_lora)."
    )

    def __post_init__(self) -> None:
        modules = (
            [self.lora_target_modules]
            if isinstance(self.lora_target_modules, str)
            else self.lora_target_modules
        )
        self.lora_target_modules = [m.strip() for item in modules for m in item.split(",") if m.strip()]
        problems = invalid_choices(self)
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


_SOURCES = ("train_file", "dataset_name", "corpus_files", "corpus_dataset_name", "index_path")


@dataclass
class DataArguments:
    """Training data (QA rows), the retrieval corpus and its index."""

    demo: bool = option(
        False,
        "Train on the bundled synthetic demo task (fictional guidelines; not medical advice) instead of "
        "train_file / corpus_files.",
    )
    demo_num_facts: int = option(120, "Facts (guideline passages) of the demo task.")
    demo_questions_per_fact: int = option(2, "Questions per demo fact.")
    train_file: str | None = option(None, "QA file to train on (.jsonl, .json or .parquet).")
    dataset_name: str | None = option(
        None, "A Hub dataset to train on instead of train_file (datasets.load_dataset)."
    )
    dataset_config_name: str | None = option(None, "Config of dataset_name.")
    train_split: str | None = option(
        None, "Split to train on when the source holds several (Hub datasets: default 'train')."
    )
    data_format: QAFormat = option("qa", "Layout of the QA rows ('qa': the jmlr-hf schema).")
    eval_file: str | None = option(None, "QA file for the Trainer's evaluation loop (joint loss).")
    eval_split: str | None = option(None, "Split of eval_file / dataset_name.")
    skip_bad_rows: bool = option(False, "Drop malformed QA rows with a warning instead of stopping.")
    max_train_samples: int | None = option(None, "Train on the first N rows only.")
    max_eval_samples: int | None = option(None, "Evaluate on the first N rows only.")
    corpus_files: list[str] | None = option(
        None, "Corpus files of {id, title, text} rows (.jsonl[.gz], .json, .parquet); ids unique."
    )
    corpus_dataset_name: str | None = option(
        None, "A Hub corpus (e.g. epfl-llm/guidelines, gated) instead of / beside corpus_files."
    )
    corpus_split: str = option("train", "Split of corpus_dataset_name.")
    index_path: str | None = option(
        None, "Load this saved index (from `jmlr index`) instead of building one from the corpus."
    )
    index_backend: IndexBackend = index_backend_option()
    chunk_tokens: int = chunk_tokens_option()
    chunk_overlap: int = chunk_overlap_option()
    save_index: bool = option(
        True,
        "After training, re-encode the index with the trained retriever and save it to output_dir/index "
        "(false: skip that re-encoding, e.g. 16 minutes for 6,439 passages on 2 CPU cores).",
    )

    def __post_init__(self) -> None:
        if isinstance(self.corpus_files, str):
            self.corpus_files = [self.corpus_files]
        problems = invalid_choices(self) + self._source_problems()
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                problems.append(f"{name} must be positive, got {value}")
        if problems:
            raise ValueError("Invalid DataArguments: " + "; ".join(problems))

    def _source_problems(self) -> list[str]:
        """What is wrong with the choice of QA data and corpus (one source of each)."""
        if self.demo:
            clash = [name for name in _SOURCES if getattr(self, name)]
            return [f"demo uses the synthetic task: drop {', '.join(clash)}"] if clash else []
        problems = []
        if not self.train_file and not self.dataset_name:
            problems.append("give train_file or dataset_name (or demo: true)")
        if self.train_file and self.dataset_name:
            problems.append("give train_file or dataset_name, not both")
        if not (self.corpus_files or self.corpus_dataset_name or self.index_path):
            problems.append("give corpus_files, corpus_dataset_name or index_path (the retrieval corpus)")
        if self.index_path and (self.corpus_files or self.corpus_dataset_name):
            problems.append("index_path already holds the corpus: drop corpus_files / corpus_dataset_name")
        return problems


# ---------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------


def build_arg_parser(prog: str | None = None, **kwargs: Any) -> JMLRParser:
    """The :class:`~jmlr_hf.parsing.JMLRParser` over ModelArguments, DataArguments and JMLRTrainingArguments."""
    from .trainer.arguments import JMLRTrainingArguments

    return JMLRParser((ModelArguments, DataArguments, JMLRTrainingArguments), prog=prog, **kwargs)


def parse_args(
    argv: Sequence[str] | None = None, config_file: str | os.PathLike | None = None, prog: str | None = None
) -> tuple[ModelArguments, DataArguments, JMLRTrainingArguments]:
    """Parse a YAML config (``config_file`` or ``--config`` in ``argv``) with command-line overrides.

    Flags on the command line win over the config's values (``--max_steps 2``, ``--bf16 false``,
    ``--lora_target_modules q_proj v_proj``). Config values are parsed as their flags would be. A bad or
    unknown config key raises ``ValueError`` naming the key and the file, an unknown flag ``ValueError``
    naming the flag and the closest real one; a flag value argparse cannot convert exits with its usage
    error (status 2).

    Returns:
        ``(model_args, data_args, training_args)``.
    """
    model_args, data_args, training_args = build_arg_parser(prog).parse_args_and_config(
        argv, config_file=config_file
    )
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
    from .layout import RETRIEVER_DIR
    from .retriever import JMLRRetriever

    if is_default(name_or_path):
        from .models import load_default_retriever

        return _with_seeded_head(load_default_retriever, dim=dim)
    path = str(name_or_path)
    if os.path.isdir(os.path.join(path, RETRIEVER_DIR)) and _is_jmlr_model_dir(path):
        path = os.path.join(path, RETRIEVER_DIR)
    elif not os.path.exists(path) and _looks_like_local_path(path):
        raise FileNotFoundError(f"retriever not found: {path}")
    try:
        with weights_errors_named(path):
            return JMLRRetriever.from_pretrained(path)
    except ValueError as err:
        if "plain encoder" not in str(err):
            raise
        logger.info("%s is a plain encoder: putting a new ColBERT head (dim %d) on it", path, dim)
        with weights_errors_named(path):
            return _with_seeded_head(JMLRRetriever.from_encoder, path, dim=dim)


@contextlib.contextmanager
def weights_errors_named(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise safetensors' errors, which name no file, as ``ValueError`` naming the weights of ``path``."""
    try:
        yield
    except Exception as err:
        from safetensors import SafetensorError

        if not isinstance(err, SafetensorError):
            raise
        files = sorted(Path(path).glob("*.safetensors")) if os.path.isdir(path) else []
        where = ", ".join(map(str, files)) or str(path)
        raise ValueError(f"{where}: cannot be read, the weights are truncated or corrupt ({err})") from err


def _with_seeded_head(load: Any, *args: Any, **kwargs: Any) -> Any:
    """``load(*args, **kwargs)`` with the global RNG seeded by :data:`HEAD_SEED` (and restored after)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(HEAD_SEED)
        return load(*args, **kwargs)


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
    import torch

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
    with weights_errors_named(path):
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
    """The ``peft.LoraConfig`` for ``model`` (``None`` without ``use_lora``), made by TRL's ``get_peft_config``.

    ``lora_train_embeddings_and_norms`` becomes ``modules_to_save`` (the model's embedding and norm layers).
    """
    if not model_args.use_lora:
        return None
    from trl import ModelConfig, get_peft_config

    from .attention import embedding_and_norm_module_names

    modules_to_save = (
        embedding_and_norm_module_names(model) if model_args.lora_train_embeddings_and_norms else None
    )
    config = ModelConfig(
        use_peft=True,
        lora_r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        lora_modules_to_save=modules_to_save,
        lora_task_type="CAUSAL_LM",
    )
    # Set after ModelConfig.__post_init__, which turns a one-item list into a string: PEFT would read
    # ["q_proj"] as the regex "q_proj" matching whole module names only.
    targets = model_args.lora_target_modules
    config.lora_target_modules = "all-linear" if targets == ["all-linear"] else list(targets)
    return get_peft_config(config)


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
    the index over ``corpus``; logs what it does (encoding is the slow part on a CPU)."""
    from .retriever import DocumentIndex

    if data_args.index_path:
        index = DocumentIndex.load(data_args.index_path, retriever, allow_stale=True)
        logger.info("Loaded the index %s: %d passages", data_args.index_path, len(index))
        if index.is_stale:
            logger.warning(
                "%s was encoded with other retriever weights: re-encoding %d passages",
                data_args.index_path,
                len(index),
            )
            index.refresh(retriever, show_progress_bar=show_progress_bar)
        return index
    logger.info(
        "Building the index the joint step retrieves from: %d documents chunked into passages of %d "
        "retriever tokens, each encoded by the retriever",
        len(corpus),
        data_args.chunk_tokens,
    )
    return DocumentIndex.build(  # logs how many passages it indexed, and how long that took
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

    set_seed(training_args.seed)
    checkpoint = _resume_checkpoint(training_args)
    train, evaluation, corpus = load_training_data(data_args, seed=training_args.seed)
    logger.info(
        "Training on %d QA rows%s", len(train), f", evaluating on {len(evaluation)}" if evaluation else ""
    )
    logger.info("Loading the retriever %s", model_args.retriever_name_or_path or DEFAULT_MODEL)
    retriever = load_retriever(model_args.retriever_name_or_path, dim=model_args.retriever_dim)
    index = build_or_load_index(data_args, corpus, retriever)
    logger.info("Loading the LLM %s", model_args.llm_name_or_path or DEFAULT_MODEL)
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
    trainer.save_model()  # the LLM, retriever/ and jmlr_inference.json
    if trainer.is_world_process_zero():
        trainer.save_state()  # trainer_state.json: the log history of the run
        if data_args.save_index:
            _save_index(trainer, training_args.output_dir)
    return trainer


def _save_index(trainer: Any, output_dir: str) -> None:
    """``output_dir/index``: the index, re-encoded first when the trained retriever changed since its last refresh."""
    from .layout import INDEX_DIR

    if trainer.index.is_stale:
        logger.info(
            "Re-encoding the index (%d passages) with the trained retriever so that %s matches it "
            "(save_index: false skips this)",
            len(trainer.index),
            os.path.join(output_dir, INDEX_DIR),
        )
        trainer.index.refresh(trainer.index.retriever, show_progress_bar=True)
    trainer.index.save(os.path.join(output_dir, INDEX_DIR))
