"""The layout of a JMLR checkpoint folder and the rules that make one usable for resuming.

``checkpoint-N/`` holds ``Trainer``'s files (the LLM, optimizer, scheduler, RNG states and, last of them,
``trainer_state.json``), then JMLRTrainer's: ``retriever/`` (weights and tokenizer), ``index/`` (the
:class:`~jmlr_hf.DocumentIndex` as of the last refresh) and ``jmlr_state.json``. ``jmlr_state.json`` is
written last and atomically: a folder without it was interrupted while saving and is never resumed from
("last" skips it; naming it explicitly is an error).

An ``index/`` that did not change since the previous checkpoint is hard-linked to that checkpoint's copy
(one copy on disk; deleting either folder leaves the other's files intact), or copied where links fail.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import Any

from torch import nn
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..layout import (  # noqa: F401
    INDEX_DIR,
    RETRIEVER_DIR,
    RETRIEVER_OPTIMIZER_FILE,
    RETRIEVER_SCHEDULER_FILE,
    STATE_FILE,
    link_or_copy,
)

# The folder names are jmlr_hf.layout's; imported here, they stay importable from this module too.
from ..retriever.index import missing_index_files

logger = logging.getLogger(__name__)

TRAINER_STATE_FILE = "trainer_state.json"
_RETRIEVER_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def missing_parts(folder: str | os.PathLike) -> list[str]:
    """The parts of a complete JMLR checkpoint that ``folder`` lacks (empty when it is complete)."""
    root = Path(folder)
    missing = [name for name in (TRAINER_STATE_FILE, STATE_FILE) if not (root / name).is_file()]
    if not (root / RETRIEVER_DIR / "config.json").is_file():
        missing.append(f"{RETRIEVER_DIR}/config.json")
    if not any((root / RETRIEVER_DIR / name).is_file() for name in _RETRIEVER_WEIGHTS):
        missing.append(f"{RETRIEVER_DIR}/model.safetensors")
    return missing + [f"{INDEX_DIR}/{name}" for name in missing_index_files(root / INDEX_DIR)]


def untied_missing_keys(module: nn.Module, missing: Sequence[str]) -> list[str]:
    """The keys of ``missing`` (after ``load_state_dict(strict=False)``) that are not tied to a weight that
    was loaded: a weight shared by two names (an LM head tied to the embeddings) is saved once."""
    aliases: dict[int, list[str]] = {}
    named = chain(
        module.named_parameters(remove_duplicate=False), module.named_buffers(remove_duplicate=False)
    )
    for name, tensor in named:
        aliases.setdefault(id(tensor), []).append(name)
    by_name = {name: group for group in aliases.values() for name in group}
    absent = set(missing)
    return [key for key in missing if all(alias in absent for alias in by_name.get(key, [key]))]


def require_complete(folder: str | os.PathLike) -> None:
    """Raise ``ValueError`` naming ``folder`` and what it lacks unless it is a complete JMLR checkpoint."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"resume_from_checkpoint: checkpoint folder not found: {folder}")
    missing = missing_parts(folder)
    if missing:
        raise ValueError(
            f"{folder} is not a complete JMLR checkpoint (it lacks {', '.join(missing)}; saving was probably "
            "interrupted): resume from an earlier checkpoint, or with resume_from_checkpoint='last' to take "
            "the newest complete one"
        )


def checkpoint_step(folder: str | os.PathLike) -> int | None:
    """``N`` for a folder named ``checkpoint-N``, else ``None``."""
    match = _CHECKPOINT_RE.match(Path(folder).name)
    return int(match.group(1)) if match else None


def newest_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The ``checkpoint-N`` folder of ``output_dir`` with the largest ``N`` that is complete (``None`` if
    there is none); newer incomplete ones are skipped with a warning that says what they lack."""
    if not os.path.isdir(output_dir):
        return None
    folders = [p for p in Path(output_dir).iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    for folder in sorted(folders, key=checkpoint_step, reverse=True):
        missing = missing_parts(folder)
        if not missing:
            logger.info("Resuming from %s, the newest complete checkpoint", folder)
            return str(folder)
        logger.warning(
            "Skipping %s: incomplete checkpoint (interrupted while saving?), lacks %s",
            folder,
            ", ".join(missing),
        )
    return None


def link_or_copy_files(source: str | os.PathLike, target: str | os.PathLike) -> bool:
    """Hard-link every file of the flat folder ``source`` into the new folder ``target`` (a copy where a
    link fails, e.g. across filesystems). Returns whether every file was linked."""
    os.makedirs(target)
    linked = [
        link_or_copy(entry, os.path.join(target, entry.name)) for entry in sorted(Path(source).iterdir())
    ]
    return all(linked)


def write_json_atomic(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: readers see all of it or nothing."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_state(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``jmlr_state.json`` of a checkpoint folder."""
    path = Path(folder) / STATE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: cannot be read ({err}): the checkpoint is damaged") from err
