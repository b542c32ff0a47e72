"""The saved-folder layout: the one place that names what ``JMLRTrainer`` writes beside the LLM.

A folder written by ``JMLRTrainer.save_model`` (and every ``checkpoint-N`` inside ``output_dir``) holds
the LLM (or its PEFT adapter) and tokenizer, then::

    retriever/             the trained JMLRRetriever (config, weights, tokenizer)
    index/                 a saved DocumentIndex (``jmlr train`` re-encodes it with the trained retriever)
    jmlr_inference.json    the prompt settings ``jmlr eval`` / ``jmlr ask`` reuse
    jmlr_state.json        checkpoints only: what a resume restores; written last (marks it complete)
    retriever_optimizer.pt / retriever_scheduler.pt
                           checkpoints under FSDP / DeepSpeed only: the retriever's own optimizer state

Examples:
    >>> import tempfile
    >>> from types import SimpleNamespace
    >>> args = SimpleNamespace(prompt_template=None, max_context_tokens=1024, num_context_docs=5)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     write_inference_settings(folder, args)
    ...     read_inference_settings(folder)
    {'prompt_template': None, 'max_context_tokens': 1024, 'num_context_docs': 5}
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .trainer.arguments import JMLRTrainingArguments

__all__ = [
    "INDEX_DIR",
    "INFERENCE_FILE",
    "RETRIEVER_DIR",
    "RETRIEVER_OPTIMIZER_FILE",
    "RETRIEVER_SCHEDULER_FILE",
    "STATE_FILE",
    "inference_settings",
    "link_or_copy",
    "read_inference_settings",
    "write_inference_settings",
]

logger = logging.getLogger(__name__)

#: The trained retriever, inside the LLM's folder.
RETRIEVER_DIR = "retriever"
#: A saved :class:`~jmlr_hf.DocumentIndex`, inside the LLM's folder.
INDEX_DIR = "index"
#: A checkpoint's JMLR counters and index fingerprint; written last, so it marks a complete checkpoint.
STATE_FILE = "jmlr_state.json"
#: Prompt settings written next to a trained model (read by ``jmlr eval`` / ``jmlr ask``).
INFERENCE_FILE = "jmlr_inference.json"
#: The retriever's own optimizer and scheduler state (FSDP / DeepSpeed checkpoints).
RETRIEVER_OPTIMIZER_FILE = "retriever_optimizer.pt"
RETRIEVER_SCHEDULER_FILE = "retriever_scheduler.pt"


def inference_settings(training_args: JMLRTrainingArguments) -> dict[str, Any]:
    """The prompt settings of a run that inference must reuse (so inference prompts are training prompts)."""
    return {
        "prompt_template": training_args.prompt_template,
        "max_context_tokens": training_args.max_context_tokens,
        "num_context_docs": training_args.num_context_docs,
    }


def write_inference_settings(output_dir: str | os.PathLike, training_args: JMLRTrainingArguments) -> None:
    """Write the prompt settings ``jmlr eval`` / ``jmlr ask`` reuse (``output_dir/jmlr_inference.json``)."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, INFERENCE_FILE), "w", encoding="utf-8") as f:
        json.dump(inference_settings(training_args), f, indent=2)
        f.write("\n")


def read_inference_settings(model_dir: str | os.PathLike | None) -> dict[str, Any]:
    """The prompt settings saved in ``model_dir`` by ``JMLRTrainer.save_model`` ({} when there are none).

    Raises:
        ValueError: the file is not valid JSON (the message names it).
    """
    if model_dir is None:
        return {}
    path = Path(model_dir) / INFERENCE_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from err


def link_or_copy(source: str | os.PathLike, target: str | os.PathLike) -> bool:
    """Hard-link the file ``source`` as ``target`` (saved folders share unchanged files that way); copy it
    where a link fails (e.g. across filesystems). Returns whether it was linked."""
    try:
        os.link(source, target)
        return True
    except OSError as err:
        logger.info("Copying %s instead of hard-linking it (%s)", source, err)
        shutil.copy2(source, target)
        return False
