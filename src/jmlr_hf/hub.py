"""Model cards and the two-repo Hub push: the LLM to ``hub_model_id``, the retriever to ``hub_model_id-retriever``.

The card templates are package data (``jmlr_hf/hub_cards/*.md``, ``string.Template`` files). Their
``${card_data}`` placeholder becomes the YAML front matter, built with ``huggingface_hub.ModelCardData``;
the other placeholders are filled from the training run (:func:`card_fields`).

The cards are built from plain values (:class:`CardValues`; ``JMLRTrainer.card_values()`` gathers a run's),
so this module never imports the trainer.

Examples:
    >>> from transformers import BertConfig
    >>> from jmlr_hf import JMLRRetrieverConfig
    >>> values = CardValues(
    ...     repo_id="org/jmlr-13b",
    ...     llm_name_or_path="meta-llama/Llama-2-13b-hf",
    ...     num_parameters=13_000_000_000,
    ...     retriever_config=JMLRRetrieverConfig(encoder_config=BertConfig()),
    ...     joint_arguments={"num_context_docs": 7, "rank_loss": "llm_rank"},
    ...     optimization_arguments={"learning_rate (LLM)": 2e-4},
    ...     prompt_template=None,
    ...     max_context_tokens=2048,
    ...     num_context_docs=7,
    ...     num_passages=6439,
    ...     chunk_tokens=150,
    ...     chunk_overlap=32,
    ...     paper={"id": "2402.17887", "title": "JMLR", "citation": "@article{wang2024jmlr}"},
    ... )
    >>> fields = card_fields(values, datasets=["bigbio/med_qa"])
    >>> fields["llm"]["kind"], fields["llm"]["license"], fields["retriever"]["model_name"]
    ('jmlr-13b', 'llama2', 'jmlr-13b-retriever')
    >>> card = render_model_card("jmlr-retriever", **fields["retriever"])
    >>> "| `rank_loss` | `llm_rank` |" in card and "6439 passages" in card
    True

    Staging and pushing save the trainer's models, so they take the trainer::

        llm_dir, retriever_dir = prepare_hub_folders(trainer, "staging")
        push_jmlr_to_hub(trainer)  # the URLs of org/jmlr-13b and org/jmlr-13b-retriever
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import os
import re
import shutil
import string
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from huggingface_hub import ModelCardData
from transformers import TrainingArguments

from .layout import INDEX_DIR, INFERENCE_FILE, RETRIEVER_DIR, STATE_FILE
from .prompting import DEFAULT_PROMPT_TEMPLATE

if TYPE_CHECKING:  # pragma: no cover
    from .trainer.arguments import JMLRTrainingArguments

logger = logging.getLogger(__name__)

CARD_KINDS = ("jmlr-7b", "jmlr-13b", "jmlr-retriever")
LLM_FOLDER = "llm"
"""Sub-folder of the staging folder that holds the LLM repo (the retriever repo is ``retriever``)."""
STAGING_DIR = "_hub_staging"
"""Default staging folder inside ``output_dir`` (the leading ``_`` keeps ``Trainer``'s own pushes out of it)."""
RETRIEVER_SUFFIX = "-retriever"
CARD_NAME = "README.md"
TRAINING_ARGS_NAME = "training_args.bin"
# What ``JMLRTrainer.save_model`` writes beside the LLM that is not part of the LLM repo.
_NOT_LLM_FILES = (RETRIEVER_DIR, INDEX_DIR, STATE_FILE, INFERENCE_FILE, TRAINING_ARGS_NAME)
# Fields that go to the YAML front matter (the Hub's metadata) rather than the card body.
METADATA_KEYS = ("license", "library_name", "pipeline_tag", "base_model", "datasets", "tags", "language")
# ``Trainer.create_model_card`` / ``Trainer.push_to_hub`` keyword names -> card fields.
_TRAINER_CARD_ALIASES = {"finetuned_from": "base_model", "dataset": "datasets", "dataset_tags": "datasets"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclasses.dataclass
class CardValues:
    """What the two model cards of a run say, as plain values (``JMLRTrainer.card_values()`` gathers them).

    Args:
        repo_id: the LLM repo when :func:`card_fields` gets none (the retriever's adds ``"-retriever"``).
        llm_name_or_path: where the LLM came from (its PEFT base model, else its ``config._name_or_path``).
        num_parameters: the LLM's parameter count (picks the 7B or 13B card when no name says which).
        retriever_config: the retriever's :class:`~jmlr_hf.JMLRRetrieverConfig`.
        joint_arguments: the joint-step arguments table (:func:`joint_step_arguments`).
        optimization_arguments: the optimization table (:func:`optimization_arguments`).
        prompt_template: the training prompt template (``None``: the default one).
        max_context_tokens: the context budget of the prompt.
        num_context_docs: passages in the prompt.
        num_passages / chunk_tokens / chunk_overlap: the index's size and passage windows.
        global_step: optimizer steps done.
        epoch: epochs done (``None`` when unknown).
        adapter_config: the LLM's active PEFT config, ``None`` for full fine-tuning.
        num_train_rows: training questions (``None`` when the dataset has no length).
        train_dataset_name: the training dataset's name, when it records one.
        tags: the trainer's tags (first on the cards).
        model_tags: the LLM's own ``model_tags``.
        paper: ``{"id", "title", "citation"}`` of the method's paper.
    """

    repo_id: str
    llm_name_or_path: str | None
    num_parameters: int
    retriever_config: Any
    joint_arguments: Mapping[str, Any]
    optimization_arguments: Mapping[str, Any]
    prompt_template: str | None
    max_context_tokens: int
    num_context_docs: int
    num_passages: int
    chunk_tokens: int
    chunk_overlap: int
    global_step: int = 0
    epoch: float | None = None
    adapter_config: Any = None
    num_train_rows: int | None = None
    train_dataset_name: str | None = None
    tags: Sequence[str] = ()
    model_tags: Sequence[str] = ()
    paper: Mapping[str, str] = dataclasses.field(default_factory=dict)


class HubTrainer(Protocol):
    """What staging and pushing need of a trainer (:class:`~jmlr_hf.JMLRTrainer` is one)."""

    args: Any

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None: ...

    def card_values(self) -> CardValues: ...

    def is_world_process_zero(self) -> bool: ...


# ---------------------------------------------------------------------- rendering
def render_model_card(kind: str, /, **fields: Any) -> str:
    """Render the ``hub_cards/<kind>.md`` template (``kind`` in :data:`CARD_KINDS`).

    Args:
        kind: ``"jmlr-7b"``, ``"jmlr-13b"`` (the LLM) or ``"jmlr-retriever"``.
        **fields: the template's placeholders; the :data:`METADATA_KEYS` among them (``None`` or empty
            values are left out) form the YAML front matter. Fields a template does not use are ignored.

    Returns:
        The card: YAML front matter, then Markdown.

    Raises:
        ValueError: unknown ``kind``, or a placeholder of the template missing from ``fields``.
    """
    if kind not in CARD_KINDS:
        raise ValueError(f"kind must be one of {CARD_KINDS}, got {kind!r}")
    text = resources.files("jmlr_hf").joinpath("hub_cards", f"{kind}.md").read_text(encoding="utf-8")
    metadata = {k: fields[k] for k in METADATA_KEYS if fields.get(k) not in (None, "", [], ())}
    values = {**fields, "card_data": ModelCardData(**metadata).to_yaml()}
    try:
        return string.Template(text).substitute(values)
    except KeyError as err:
        raise ValueError(f"The {kind} card needs the field {err.args[0]!r}") from None


def llm_card_kind(*names: str | None, num_parameters: int | None = None) -> str:
    """``"jmlr-13b"`` or ``"jmlr-7b"``: the first of ``names`` (base model, repo id) that says 13b or 7b
    decides; otherwise models of 10B parameters or more get the 13B card."""
    for name in names:
        lowered = (name or "").lower()
        if re.search(r"(?<![\d.])13b", lowered):
            return "jmlr-13b"
        if re.search(r"(?<![\d.])7b", lowered):
            return "jmlr-7b"
    return "jmlr-13b" if (num_parameters or 0) >= 10_000_000_000 else "jmlr-7b"


def _hub_id(name: str | None) -> str | None:
    """``name`` when it looks like a Hub repo id (not a local path), else ``None``."""
    if not name or os.path.exists(name) or not _HUB_ID.match(name):
        return None
    return name


def _display_name(name: str | None) -> str | None:
    """A Hub id as is; a local path by its last component only (cards are public)."""
    if not name:
        return None
    return name if _hub_id(name) else f"{Path(name).name or name} (local files)"


def _md(value: Any) -> str:
    """A value as a Markdown table cell."""
    text = repr(value) if isinstance(value, str) and "\n" in value else str(value)
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def _table(rows: Mapping[str, Any]) -> str:
    lines = ["| argument | value |", "| --- | --- |"]
    lines += [f"| `{k}` | {_md(v)} |" for k, v in rows.items()]
    return "\n".join(lines)


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def joint_step_arguments(args: JMLRTrainingArguments) -> dict[str, Any]:
    """Every ``JMLRTrainingArguments`` field that ``TrainingArguments`` does not have, with its value."""
    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.name not in base}


def optimization_arguments(args: JMLRTrainingArguments, global_step: int = 0) -> dict[str, Any]:
    """The optimization table of the LLM card: learning rates, schedule, batch sizes, steps, precision."""
    retriever_lr = args.retriever_learning_rate
    total_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    rows: dict[str, Any] = {
        "learning_rate (LLM)": args.learning_rate,
        "learning rate (retriever)": retriever_lr,
        "lr_scheduler_type": getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type),
        "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay,
        "max_grad_norm": args.max_grad_norm,
        "optim": getattr(args.optim, "value", args.optim),
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "processes": args.world_size,
        "total batch size": total_batch,
        # Trainer ignores num_train_epochs when max_steps is set
        **(
            {"max_steps": args.max_steps}
            if args.max_steps > 0
            else {"num_train_epochs": args.num_train_epochs}
        ),
        "optimizer steps done": global_step,
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "gradient_checkpointing": args.gradient_checkpointing,
        "seed": args.seed,
    }
    return rows


def _peft_section(config: Any) -> str:
    """The PEFT table of the LLM card (``""`` without an adapter)."""
    if config is None:
        return ""
    keep = ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save", "bias")
    rows = {}
    for key in keep:
        value = getattr(config, key, None)
        if value is not None:
            value = getattr(value, "value", value)
            rows[key] = sorted(value) if isinstance(value, (set, frozenset)) else value
    return "\n### PEFT adapter (LLM only; the retriever is trained in full)\n\n" + _table(rows) + "\n"


def _framework_versions() -> str:
    lines = []
    for package in ("jmlr-hf", "transformers", "torch", "peft", "huggingface_hub"):
        try:
            lines.append(f"- {package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return "\n".join(lines)


def _default_license(*base_models: str | None) -> str:
    text = " ".join(b or "" for b in base_models).lower()
    return "llama2" if re.search(r"llama-?2", text) else "other"


def card_fields(
    values: CardValues,
    llm_repo_id: str | None = None,
    retriever_repo_id: str | None = None,
    **overrides: Any,
) -> dict[str, dict[str, Any]]:
    """The fields of both cards of a run: ``{"llm": {...}, "retriever": {...}}``.

    Args:
        values: the run's plain values (``JMLRTrainer.card_values()`` gathers them after training).
        llm_repo_id / retriever_repo_id: the two repos (default: ``values.repo_id``, and that plus
            ``"-retriever"``).
        **overrides: card fields that win over what the run says. Useful ones: ``base_model`` (the LLM's
            Hub id when the model was loaded from a local path), ``retriever_base_model``, ``datasets``
            (Hub dataset ids), ``corpus`` (the retrieval corpus, in words), ``license``,
            ``retriever_license``, ``tags``, ``model_name``. Other fields go to the LLM card, and
            ``retriever_<field>`` to the retriever card. ``Trainer.create_model_card``'s names
            ``finetuned_from`` and ``dataset`` / ``dataset_tags`` are accepted too.
    """
    for alias, name in _TRAINER_CARD_ALIASES.items():
        value = overrides.pop(alias, None)
        if value is not None and overrides.get(name) is None:
            overrides[name] = value
    llm_repo_id = llm_repo_id or values.repo_id
    retriever_repo_id = retriever_repo_id or llm_repo_id + RETRIEVER_SUFFIX
    base_model = overrides.pop("base_model", None) or _hub_id(values.llm_name_or_path)
    retriever_names = _retriever_names(values.retriever_config)
    retriever_base = overrides.pop("retriever_base_model", None) or next(
        (n for n in map(_hub_id, retriever_names) if n), None
    )
    datasets = _as_list(overrides.pop("datasets", None))
    extra_tags = _as_list(overrides.pop("tags", None)) + list(values.model_tags)
    tags = list(dict.fromkeys([*values.tags, *extra_tags]))
    common = _common_fields(values, llm_repo_id, retriever_repo_id, base_model, retriever_base, datasets)
    common["corpus_text"] = _corpus_text(values, overrides.pop("corpus", None))
    license_ = overrides.pop("license", None) or _default_license(base_model, values.llm_name_or_path)
    # The retriever is not derived from the LLM: its licence follows its own base.
    retriever_license = overrides.pop("retriever_license", None) or _default_license(retriever_base)
    llm = {**common, **_llm_fields(values, llm_repo_id, base_model, tags), "license": license_}
    retriever_fields = {
        **common,
        **_retriever_fields(values.retriever_config, retriever_repo_id, retriever_base, tags),
        "license": retriever_license,
    }
    for key, value in overrides.items():
        if key.startswith("retriever_"):
            retriever_fields[key.removeprefix("retriever_")] = value
        else:
            llm[key] = value
    return {"llm": llm, "retriever": retriever_fields}


def _retriever_names(config: Any) -> tuple[str | None, str | None]:
    """The retriever's own name or path, then its encoder's."""
    return (
        getattr(config, "_name_or_path", None),
        getattr(config.encoder_config, "_name_or_path", None),
    )


def _corpus_text(values: CardValues, corpus: str | None) -> str:
    return (f"{corpus}; " if corpus else "") + (
        f"{values.num_passages} passages "
        f"({values.chunk_tokens}-token windows, overlap {values.chunk_overlap})"
    )


def _datasets_text(values: CardValues, datasets: list[str]) -> str:
    name = values.train_dataset_name
    text = ", ".join(f"`{d}`" for d in datasets) or (
        f"`{name}`" if name else "not recorded (pass `datasets=[...]` to `push_to_hub`)"
    )
    if values.num_train_rows is not None:
        text += f"; {values.num_train_rows} training questions"
    return text


def _common_fields(
    values: CardValues,
    llm_repo_id: str,
    retriever_repo_id: str,
    base_model: str | None,
    retriever_base: str | None,
    datasets: list[str],
) -> dict[str, Any]:
    """The fields both cards share: paper, repos, base models, data, progress and argument tables."""
    epoch, steps = values.epoch, values.global_step
    steps_text = f"{steps} optimizer step{'' if steps == 1 else 's'}" + (
        f" ({epoch:.2f} epochs)" if epoch is not None else ""
    )
    retriever_local = next((n for n in _retriever_names(values.retriever_config) if n), None)
    paper = values.paper
    return {
        "paper_id": paper["id"],
        "paper_title": paper["title"],
        "citation": paper["citation"],
        "llm_repo_id": llm_repo_id,
        "retriever_repo_id": retriever_repo_id,
        "base_model_name": base_model or _display_name(values.llm_name_or_path) or "a locally built model",
        "retriever_base_model_name": retriever_base
        or _display_name(retriever_local)
        or "a locally built retriever",
        "datasets_text": _datasets_text(values, datasets),
        "steps_text": steps_text,
        "joint_table": _table(values.joint_arguments),
        "optimization_table": _table(values.optimization_arguments),
        "framework_versions": _framework_versions(),
        "num_context_docs": values.num_context_docs,
        "datasets": datasets,
    }


def _llm_fields(
    values: CardValues, llm_repo_id: str, base_model: str | None, tags: list[str]
) -> dict[str, Any]:
    """The LLM card's own fields (the licence apart)."""
    adapter = values.adapter_config
    load_llm = (
        "from peft import AutoPeftModelForCausalLM\n"
        "from transformers import AutoTokenizer\n\n"
        f'llm = AutoPeftModelForCausalLM.from_pretrained("{llm_repo_id}")  # loads the base model too\n'
        if adapter is not None
        else "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'llm = AutoModelForCausalLM.from_pretrained("{llm_repo_id}")\n'
    ) + f'tokenizer = AutoTokenizer.from_pretrained("{llm_repo_id}")'
    builder_kwargs = f", max_context_tokens={values.max_context_tokens}"
    if values.prompt_template is not None:
        builder_kwargs += f", prompt_template={values.prompt_template!r}"
    weights = (
        f"a {getattr(adapter.peft_type, 'value', adapter.peft_type)} adapter (PEFT) for "
        f"**{base_model or _display_name(values.llm_name_or_path)}**, and the tokenizer"
        if adapter is not None
        else "the full fine-tuned weights (safetensors) and the tokenizer"
    )
    names = (base_model, values.llm_name_or_path, llm_repo_id)
    return {
        "kind": llm_card_kind(*names, num_parameters=values.num_parameters),
        "model_name": llm_repo_id.split("/")[-1],
        "library_name": "peft" if adapter is not None else "transformers",
        "pipeline_tag": "text-generation",
        "base_model": base_model,
        "tags": tags + (["peft", "lora"] if adapter is not None else []),
        "weights_description": weights,
        "load_llm_code": load_llm,
        "prompt_builder_kwargs": builder_kwargs,
        "prompt_template": values.prompt_template or DEFAULT_PROMPT_TEMPLATE,
        "peft_section": _peft_section(adapter),
    }


def _retriever_fields(
    config: Any, retriever_repo_id: str, retriever_base: str | None, tags: list[str]
) -> dict[str, Any]:
    """The retriever card's own fields (the licence apart), from its :class:`~jmlr_hf.JMLRRetrieverConfig`."""
    encoder = config.encoder_config
    return {
        "kind": "jmlr-retriever",
        "model_name": retriever_repo_id.split("/")[-1],
        "library_name": "transformers",
        "pipeline_tag": "sentence-similarity",
        "base_model": retriever_base,
        "tags": list(dict.fromkeys([*tags, "late-interaction", "sentence-similarity"])),
        "dim": config.dim,
        "query_length": config.query_length,
        "query_max_length": config.max_query_tokens,
        "document_length": config.document_length,
        "similarity": config.similarity,
        "encoder_type": encoder.model_type,
        "encoder_hidden_size": encoder.hidden_size,
    }


# ---------------------------------------------------------------------- staging and pushing
def prepare_hub_folders(
    trainer: HubTrainer,
    staging_dir: str | os.PathLike,
    *,
    llm_repo_id: str | None = None,
    retriever_repo_id: str | None = None,
    **card_overrides: Any,
) -> tuple[Path, Path]:
    """Save the trainer's models and lay out exactly the two folders that a push uploads.

    ``staging_dir/llm``: the LLM weights (or PEFT adapter), its config and tokenizer, and its card;
    ``staging_dir/retriever``: the retriever's config, weights and tokenizer, and its card. No
    checkpoints, optimizer state, ``training_args.bin`` or index. Both sub-folders are recreated.
    Call it on every process (``save_model`` gathers sharded weights); only the processes that save
    write files.

    Args:
        trainer: the :class:`~jmlr_hf.JMLRTrainer`.
        staging_dir: where to put the two folders.
        llm_repo_id / retriever_repo_id / **card_overrides: see :func:`card_fields`.

    Returns:
        ``(llm_folder, retriever_folder)``.
    """
    staging = Path(staging_dir)
    llm_dir, retriever_dir = staging / LLM_FOLDER, staging / RETRIEVER_DIR
    should_save = trainer.args.should_save
    if should_save:
        for folder in (llm_dir, retriever_dir):
            shutil.rmtree(folder, ignore_errors=True)
    # _internal_call: with args.push_to_hub, a plain save_model would push (and recurse into us).
    trainer.save_model(str(llm_dir), _internal_call=True)
    if not should_save:
        return llm_dir, retriever_dir
    shutil.move(str(llm_dir / RETRIEVER_DIR), str(retriever_dir))
    for name in _NOT_LLM_FILES:
        path = llm_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    fields = card_fields(trainer.card_values(), llm_repo_id, retriever_repo_id, **card_overrides)
    for folder, part in ((llm_dir, "llm"), (retriever_dir, "retriever")):
        card = render_model_card(fields[part]["kind"], **fields[part])
        (folder / CARD_NAME).write_text(card, encoding="utf-8")
    logger.info("Staged the LLM repo in %s and the retriever repo in %s", llm_dir, retriever_dir)
    return llm_dir, retriever_dir


def push_jmlr_to_hub(
    trainer: HubTrainer,
    commit_message: str | None = "End of training",
    private: bool | None = None,
    token: str | None = None,
    *,
    revision: str | None = None,
    blocking: bool = True,
    staging_dir: str | os.PathLike | None = None,
    **card_overrides: Any,
) -> tuple[str, str] | None:
    """Push the LLM to ``args.hub_model_id`` and the retriever to ``args.hub_model_id + "-retriever"``.

    Creates both repos (``exist_ok=True``), stages the two folders with :func:`prepare_hub_folders`
    and uploads each with ``HfApi.upload_folder``. Call it on every process: the weights are saved
    collectively, the repos are created and uploaded from the main process only.

    Args:
        trainer: the :class:`~jmlr_hf.JMLRTrainer`.
        commit_message: the commit message of both uploads.
        private: create the repos private (default: ``args.hub_private_repo``; no effect on existing repos).
        token: Hub token (default: ``args.hub_token``, then the logged-in token).
        revision: branch to upload to (default: ``args.hub_revision``, then ``main``); it must exist.
        blocking: wait for the uploads; otherwise they run in the background and ``trainer`` waits for
            them like for its own pushes (``trainer.push_in_progress``).
        staging_dir: where to stage the folders (default: ``output_dir/_hub_staging``).
        **card_overrides: card fields, see :func:`card_fields`.

    Returns:
        The URLs of the LLM repo and the retriever repo (``huggingface_hub.RepoUrl``, whose
        ``.repo_id`` is the full id), or ``None`` on processes other than the main one.

    Raises:
        ValueError: ``args.hub_model_id`` is not set.
    """
    from huggingface_hub import HfApi

    from . import __version__

    args = trainer.args
    if not args.hub_model_id:
        raise ValueError(
            "Set JMLRTrainingArguments(hub_model_id='org/name') to push: the LLM goes to 'org/name' and "
            f"the retriever to 'org/name{RETRIEVER_SUFFIX}'"
        )
    token = token if token is not None else args.hub_token
    private = private if private is not None else args.hub_private_repo
    revision = revision if revision is not None else args.hub_revision
    staging = Path(staging_dir) if staging_dir is not None else Path(args.output_dir) / STAGING_DIR
    main = trainer.is_world_process_zero()
    pending = getattr(trainer, "push_in_progress", None)
    if main and pending is not None:  # an earlier background upload may still read the staging folder
        pending.wait_until_done()
    api = HfApi(token=token, library_name="jmlr-hf", library_version=__version__)
    urls = None
    if main:
        # Create first: the cards then name the repos with their resolved namespace.
        urls = tuple(
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            for repo_id in (args.hub_model_id, args.hub_model_id + RETRIEVER_SUFFIX)
        )
    llm_id, retriever_id = (u.repo_id for u in urls) if urls else (None, None)
    folders = prepare_hub_folders(
        trainer, staging, llm_repo_id=llm_id, retriever_repo_id=retriever_id, **card_overrides
    )
    if not main:
        return None
    jobs = [
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message=commit_message,
            revision=revision,
            repo_type="model",
            run_as_future=not blocking,
        )
        for repo_id, folder in zip((llm_id, retriever_id), folders)
    ]
    if not blocking:
        from transformers.utils.hub import PushInProgress

        trainer.push_in_progress = PushInProgress(jobs)
    logger.info("Pushed the LLM to %s and the retriever to %s", *urls)
    return urls[0], urls[1]


__all__ = [
    "CARD_KINDS",
    "CardValues",
    "HubTrainer",
    "card_fields",
    "joint_step_arguments",
    "llm_card_kind",
    "optimization_arguments",
    "prepare_hub_folders",
    "push_jmlr_to_hub",
    "render_model_card",
]
