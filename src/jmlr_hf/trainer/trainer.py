"""JMLRTrainer: a ``transformers.Trainer`` that trains a causal LLM and a ColBERT retriever together.

``compute_loss`` runs the joint step of DESIGN.md for a batch of QA rows:

1. candidates ``index.search(question, k=num_candidate_docs)`` (the index may be stale);
2. fresh retriever scores of the candidates (normalised MaxSim);
3. ``num_scored_docs`` candidates sampled from ``softmax(s / rank_temperature)`` (or the top ones);
4. their utility ``NLL_LLM(answer | doc, question)``, one batched no-grad forward;
5. the rank loss on the retriever (``llm_rank`` or ``pdist``), gradients through the scored docs only;
6. the LM loss on the answer with the top ``num_context_docs`` passages in the prompt;
   ``loss = lm_loss + rank_loss_weight * rank_loss``.

Multi-process training (``accelerate launch``: DDP, FSDP, DeepSpeed) wraps only the LLM; the retriever
stays replicated on every process (see :mod:`jmlr_hf.trainer.distributed`): rank 0's initial weights are
broadcast, its gradients are averaged like DDP's at every optimizer step, and at each refresh every process
encodes 1/N of the passages into one shared, memory-mapped store under ``output_dir/index_store/``.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel, Trainer, TrainerCallback, get_scheduler
from transformers.trainer_utils import (
    TrainOutput,
    get_last_checkpoint,
    load_sharded_checkpoint,
    rotate_checkpoints,
)

from ..data.qa import validate_qa_dataset
from ..evaluation.metrics import kendall_tau
from ..layout import (
    INDEX_DIR,
    RETRIEVER_DIR,
    RETRIEVER_OPTIMIZER_FILE,
    RETRIEVER_SCHEDULER_FILE,
    STATE_FILE,
    write_inference_settings,
)
from ..prompting import PromptBuilder
from ..retriever import DocumentIndex, EncodedBatch, JMLRRetriever, maxsim_paired
from ..retriever.modeling_jmlr_retriever import bf16_supported
from ..scoring import lm_loss, passage_utility_nll
from .arguments import JMLRTrainingArguments
from .checkpoints import (
    link_or_copy_files,
    missing_index_files,
    read_state,
    require_complete,
    untied_missing_keys,
    write_json_atomic,
)
from .collator import QACollator
from .distributed import any_process, average_gradients_, broadcast_module_, world_size
from .losses import llm_rank_loss, pdist_loss

if TYPE_CHECKING:  # pragma: no cover
    from ..hub import CardValues

logger = logging.getLogger(__name__)

#: Where index refreshes write their memory-mapped stores, under ``output_dir`` (``refresh-<step>/``).
INDEX_STORE_DIR = "index_store"


class _RetrieverOptimizerCallback(TrainerCallback):
    """``Trainer`` clips, steps and zeroes the gradients of ``trainer.model`` only: do the same for the retriever
    (without it, retriever gradients would silently accumulate across optimizer steps). Under FSDP /
    DeepSpeed the retriever has its own optimizer and scheduler, created and stepped here."""

    def __init__(self, trainer: JMLRTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._ensure_restored()
        if self.trainer.separate_retriever_optimizer:
            self.trainer._create_retriever_optimizer(state.max_steps)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if args.max_grad_norm and args.max_grad_norm > 0:
            params = [p for p in self.trainer.retriever.parameters() if p.grad is not None]
            if params:
                torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)

    def on_optimizer_step(self, args, state, control, **kwargs):
        trainer = self.trainer
        if trainer.separate_retriever_optimizer and trainer.retriever_optimizer is not None:
            trainer.retriever_optimizer.step()
            trainer.retriever_lr_scheduler.step()
        trainer.retriever.zero_grad(set_to_none=True)


def _active_adapter_config(model: nn.Module) -> Any:
    """The active PEFT config of a PEFT-wrapped LLM, ``None`` for a plain model."""
    configs = getattr(model, "peft_config", None)
    if isinstance(configs, Mapping) and configs:
        active = getattr(model, "active_adapter", None)
        return (
            configs[active] if isinstance(active, str) and active in configs else next(iter(configs.values()))
        )
    return None


def _set_query_max_length(retriever: JMLRRetriever, length: int | None) -> None:
    """Let the retriever see questions up to ``length`` tokens (``retriever_query_max_length``; saved
    with its config). ``None`` keeps the retriever's own setting."""
    if length is None or retriever.config.query_max_length == length:
        return
    before = retriever.config.query_max_length
    retriever.config.query_max_length = length
    logger.info(
        "The retriever encodes questions up to %d tokens (retriever_query_max_length; it had %s)",
        retriever.config.max_query_tokens,
        before or "the encoder's limit",
    )


@dataclass
class JointStepOutput:
    """What one joint step computed (``compute_loss(..., return_outputs=True)``)."""

    loss: torch.Tensor
    lm_loss: torch.Tensor
    rank_loss: torch.Tensor | None
    candidate_ids: torch.Tensor
    context_ids: torch.Tensor
    scored_ids: torch.Tensor | None
    utility_nll: torch.Tensor | None
    scored_scores: torch.Tensor | None


#: The joint-step metrics JMLRTrainer logs (train) and, prefixed ``eval_``, evaluates.
METRIC_NAMES = (
    "lm_loss",
    "rank_loss",
    "rank_agreement_kendall_tau",
    "index_refresh_seconds",
    "skipped_batches",
)


class JMLRTrainer(Trainer):
    """Joint LLM + retriever trainer (JMLR, Wang et al. 2024).

    Args:
        model: the causal LM (``PreTrainedModel``); LoRA is applied when ``peft_config`` is given.
        retriever: the :class:`~jmlr_hf.JMLRRetriever` trained beside it (never frozen by PEFT).
        index: a :class:`~jmlr_hf.DocumentIndex` over the corpus, built with ``retriever``.
        args: :class:`~jmlr_hf.JMLRTrainingArguments`.
        train_dataset / eval_dataset: QA rows ``{id, question, options, answer, explanation}``.
        processing_class: the LLM's tokenizer (its chat template builds the prompts).
        peft_config: a ``peft.PeftConfig`` for the LLM.
        **kwargs: anything else ``transformers.Trainer`` takes (callbacks, optimizers, ...).

    ``trainer.model`` is the LLM, ``trainer.retriever`` the retriever, ``trainer.index`` the index.
    ``save_model(dir)`` writes the LLM to ``dir``, the retriever to ``dir/retriever`` and the prompt settings
    to ``dir/jmlr_inference.json`` (the layout of :mod:`jmlr_hf.layout`).

    With several processes (``accelerate launch``) only the LLM is wrapped by DDP / FSDP / DeepSpeed;
    the retriever (small) stays replicated: rank 0's initial weights are broadcast, its gradients are
    averaged across processes at every optimizer step, and each process refreshes its own copy of the
    index from the identical weights. Under FSDP / DeepSpeed the retriever gets its own optimizer and
    scheduler (``retriever_optimizer``, ``retriever_lr_scheduler``; same optimizer class, schedule and
    ``retriever_learning_rate``), because those wrappers only take the LLM's parameters; otherwise its
    parameter groups (named ``"retriever"``) sit in ``trainer.optimizer``.
    """

    _tag_names = ["jmlr", "retrieval-augmented-generation", "medical", "colbert", "jmlr-hf"]
    _name = "JMLR"
    _paper = {
        "title": "JMLR: Joint Medical LLM and Retrieval Training for Enhancing Reasoning and Professional Question Answering Capability",
        "id": "2402.17887",
        "citation": (
            "@article{wang2024jmlr,\n  title={JMLR: Joint Medical LLM and Retrieval Training for Enhancing "
            "Reasoning and Professional Question Answering Capability},\n  author={Wang, Junda and Yang, Zhichao "
            "and Yao, Zonghai and Yu, Hong},\n  journal={arXiv preprint arXiv:2402.17887},\n  year={2024}\n}"
        ),
    }

    def __init__(
        self,
        model: PreTrainedModel | nn.Module,
        retriever: JMLRRetriever,
        index: DocumentIndex,
        args: JMLRTrainingArguments | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        peft_config: Any = None,
        data_collator: Any = None,
        **kwargs: Any,
    ) -> None:
        # Args
        if args is None:
            args = JMLRTrainingArguments(output_dir="jmlr-output")
        elif not isinstance(args, JMLRTrainingArguments):
            raise TypeError(f"args must be JMLRTrainingArguments, got {type(args).__name__}")
        # Retriever and index
        if not isinstance(retriever, JMLRRetriever):
            raise TypeError(f"retriever must be a JMLRRetriever, got {type(retriever).__name__}")
        if any(hasattr(p, "ds_id") for p in retriever.parameters()):
            raise ValueError(
                "The retriever was partitioned by DeepSpeed ZeRO-3 (loaded inside zero.Init), but it must stay "
                "replicated: set zero3_init_flag: false in the accelerate config, or load it before creating "
                "the training arguments"
            )
        if len(index) < args.num_candidate_docs:
            raise ValueError(
                f"The index holds {len(index)} passages, fewer than num_candidate_docs={args.num_candidate_docs}"
            )
        if args.freeze_document_encoder:
            # Documents keep the vectors of a frozen copy; only the query side trains.
            frozen = copy.deepcopy(retriever).eval().requires_grad_(False)
            index.retriever = frozen
        elif index.retriever is not retriever:
            index.retriever = retriever
        _set_query_max_length(retriever, args.retriever_query_max_length)
        self.retriever = retriever
        self.index = index
        # Model
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(model.config._name_or_path)
        # PEFT (LLM only: the retriever is a separate module and keeps its own trainable weights)
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        # Dataset: fail early, naming the row, instead of in the middle of training
        for name, dataset in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            if dataset is not None:
                try:
                    validate_qa_dataset(dataset)
                except ValueError as err:
                    raise ValueError(f"{name}: {err}") from err
        # Data collator
        if data_collator is None:
            data_collator = QACollator()
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        self.retriever.to(self.args.device)
        self.retriever_optimizer: torch.optim.Optimizer | None = None
        self.retriever_lr_scheduler: Any = None
        # FSDP / DeepSpeed only optimize the wrapped LLM's parameters: the retriever gets its own optimizer.
        self.separate_retriever_optimizer = bool(self.is_fsdp_enabled or self.is_deepspeed_enabled)
        if self.separate_retriever_optimizer and self.args.fp16:
            raise ValueError(
                "fp16 under FSDP / DeepSpeed is not supported by JMLRTrainer (the retriever's gradients would "
                "stay loss-scaled): use bf16"
            )
        self._retriever_optimizer_checkpoint: str | None = None
        self.add_callback(_RetrieverOptimizerCallback(self))
        self._sync_retriever_replicas()
        self.prompts = PromptBuilder(processing_class, args.prompt_template, args.max_context_tokens)
        # Joint-step metrics per mode (TRL's habit), averaged over processes and steps in log().
        self._metrics: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self._last_refresh_step = -1
        self.skipped_batches = 0

    # ------------------------------------------------------------------ replicas (several processes)
    def _sync_retriever_replicas(self) -> None:
        """Give every process rank 0's retriever (and frozen document encoder); re-encode an index that
        was built from other weights. A no-op in a single process."""
        if world_size() == 1:
            return
        index_was_fresh = not self.index.is_stale
        changed = broadcast_module_(self.retriever)
        if self.index.retriever is not self.retriever:
            changed = broadcast_module_(self.index.retriever) or changed
        if any_process(changed, self.args.device):
            logger.warning(
                "The retriever's weights differed across processes: all use rank 0's now. Seed before "
                "creating the retriever (transformers.set_seed) so that each process builds the same index."
            )
        if changed and index_was_fresh and self.index.is_stale:
            logger.warning("Re-encoding this process's index with rank 0's retriever weights")
            self.index.refresh(self.index.retriever, show_progress_bar=False)

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """``Trainer.training_step``; on the last micro-batch of an optimizer step the retriever's gradients
        are averaged across processes, where DDP averages the LLM's (before unscaling and clipping)."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients:
            average_gradients_(self.retriever.parameters())
        return loss

    # ------------------------------------------------------------------ optimizer
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The LLM's parameter groups (``learning_rate``) plus the retriever's (``retriever_learning_rate``);
        under FSDP / DeepSpeed the retriever's go to ``retriever_optimizer`` instead."""
        if self.optimizer is not None:
            return self.optimizer
        optimizer = super().create_optimizer(model)
        groups = self._retriever_param_groups()
        if not self.separate_retriever_optimizer:
            for group in groups:
                optimizer.add_param_group(group)
        return optimizer

    def _retriever_param_groups(self) -> list[dict[str, Any]]:
        """The retriever's parameter groups (with and without weight decay), named ``"retriever"``."""
        lr = self.args.retriever_learning_rate
        decay = set(self.get_decay_parameter_names(self.retriever))
        named = [(n, p) for n, p in self.retriever.named_parameters() if p.requires_grad]
        groups = []
        for with_decay in (True, False):
            params = [p for n, p in named if (n in decay) == with_decay]
            if params:
                groups.append(
                    {
                        "params": params,
                        "lr": lr,
                        "weight_decay": self.args.weight_decay if with_decay else 0.0,
                        "name": "retriever",
                    }
                )
        self.retriever_param_names = [n for n, _ in named]
        return groups

    def _create_retriever_optimizer(self, num_training_steps: int) -> None:
        """The retriever's own optimizer (the Trainer's optimizer class and settings) and scheduler."""
        if self.retriever_optimizer is None:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.retriever)
            self.retriever_optimizer = optimizer_cls(self._retriever_param_groups(), **optimizer_kwargs)
        self.retriever_lr_scheduler = get_scheduler(
            self.args.lr_scheduler_type,
            optimizer=self.retriever_optimizer,
            num_warmup_steps=self.args.get_warmup_steps(num_training_steps),
            num_training_steps=num_training_steps,
            scheduler_specific_kwargs=self.args.lr_scheduler_kwargs,
        )
        checkpoint, self._retriever_optimizer_checkpoint = self._retriever_optimizer_checkpoint, None
        if checkpoint is not None and os.path.isfile(os.path.join(checkpoint, RETRIEVER_OPTIMIZER_FILE)):
            self.retriever_optimizer.load_state_dict(
                torch.load(
                    os.path.join(checkpoint, RETRIEVER_OPTIMIZER_FILE),
                    map_location=self.args.device,
                    weights_only=True,
                )
            )
            self.retriever_lr_scheduler.load_state_dict(
                torch.load(os.path.join(checkpoint, RETRIEVER_SCHEDULER_FILE), weights_only=True)
            )

    # ------------------------------------------------------------------ the joint step
    def _maybe_refresh_index(self) -> None:
        """Re-encode the index every ``index_refresh_steps`` optimizer steps.

        The new index is written to ``output_dir/index_store/refresh-<step>/`` (format version 2) and
        memory-mapped. With N processes each encodes 1/N of the passages' batches into that one file (the
        folder must be one all processes see, as ``output_dir`` is for checkpoints), from retriever weights
        that are identical everywhere (broadcast at start, averaged gradients); rank 0 builds the backend
        and every process maps the result, bit-identical to a 1-process refresh. Earlier refreshes' folders
        are deleted once the new one is mapped: checkpoints hard-link their files, and a mapped file that is
        unlinked stays readable to the processes that map it.
        """
        every = self.args.index_refresh_steps
        if every <= 0 or self.args.freeze_document_encoder or not self.model.training:
            return
        step = self.state.global_step
        if step > 0 and step % every == 0 and step != self._last_refresh_step:
            self._last_refresh_step = step
            folder = Path(self.args.output_dir) / INDEX_STORE_DIR / f"refresh-{step}"
            seconds = self.index.refresh(
                self.retriever, show_progress_bar=self.is_local_process_zero(), folder=folder
            )
            if self.is_world_process_zero():  # earlier refreshes' stores (also those of a run resumed from)
                for old in folder.parent.glob("refresh-*"):
                    if old.name != folder.name:
                        shutil.rmtree(old, ignore_errors=True)
            self._metrics["train"]["index_refresh_seconds"].append(seconds)
            logger.info("Refreshed the index at step %d in %.1fs", step, seconds)

    def _document_embeddings(self, ids: torch.Tensor, with_grad: bool) -> EncodedBatch:
        """Token vectors of passages ``ids`` ``[b, n]`` -> ``[b, n, L, dim]`` (+ mask)."""
        b, n = ids.shape
        flat = ids.reshape(-1).tolist()
        if self.args.freeze_document_encoder:  # the index vectors are exact for a frozen document encoder
            emb, mask = self.index.gather_vectors(flat)
        elif with_grad:
            emb, mask = self.retriever.embed(self.index.passage_texts(flat), is_query=False)
        else:
            emb, mask = self.retriever.encode_documents(
                self.index.passage_texts(flat), show_progress_bar=False
            )
        device = self.retriever.device
        return EncodedBatch(emb.to(device).view(b, n, *emb.shape[1:]), mask.to(device).view(b, n, -1))

    def joint_step(self, model: nn.Module, rows: Sequence[Mapping[str, Any]]) -> JointStepOutput:
        """One joint step on a batch of validated QA rows (see the module docstring)."""
        args = self.args
        training = model.training
        self.retriever.train(training)
        device = self.retriever.device
        # 1. candidates from the (possibly stale) index
        query = self.retriever.embed([r["question"] for r in rows], is_query=True)
        q_tokens = query.mask.sum(-1).clamp(min=1).float()
        _, candidates = self.index.search_encoded(
            EncodedBatch(query.embeddings.detach(), query.mask), k=args.num_candidate_docs
        )
        candidates = candidates.to(device)
        # 2. fresh scores of every candidate (no grad: they only rank and sample)
        docs = self._document_embeddings(candidates, with_grad=False)
        with torch.no_grad():
            fresh = (
                maxsim_paired(query.embeddings.detach(), query.mask, docs.embeddings, docs.mask)
                / q_tokens[:, None]
            )
        rank_loss = scored = nll = scored_scores = None
        if args.rank_loss_weight > 0:
            # 3. which candidates get an LLM utility
            n = args.num_scored_docs
            if args.candidate_sampling == "sample" and training:
                probs = torch.softmax(fresh / args.rank_temperature, dim=-1)
                pick = torch.multinomial(probs, n, replacement=False)
            else:
                pick = fresh.topk(n, dim=-1).indices
            scored = candidates.gather(1, pick)
            scored_docs = self._document_embeddings(scored, with_grad=not args.freeze_document_encoder)
            scored_scores = maxsim_paired(query.embeddings, query.mask, *scored_docs) / q_tokens[:, None]
            # 4. utility of each scored document: one batched no-grad forward of the LLM
            passages = [[self.index.passage(int(i)) for i in ids] for ids in scored]
            with self._utility_autocast():
                nll = passage_utility_nll(model, self.prompts, rows, passages, self.args.device)
            nll = nll.float().to(device)
            # 5. rank loss on the retriever
            if args.rank_loss == "llm_rank":
                rank_loss = llm_rank_loss(scored_scores, nll, args.rank_temperature)
            else:
                rank_loss = pdist_loss(
                    scored_scores, nll, args.pdist_score_temperature, args.utility_temperature
                )
        # 6. LM loss with the top passages, best nearest the question
        context = candidates.gather(1, fresh.topk(args.num_context_docs, dim=-1).indices)
        given = [[self.index.passage(int(i)) for i in ids] for ids in context]
        prompts = [self.prompts.prompt(r, p) for r, p in zip(rows, given)]
        # the target cites the given passages that support its explanation as [n] (PromptBuilder.target)
        targets = [self.prompts.target(r, p) for r, p in zip(rows, given)]
        batch = {k: v.to(self.args.device) for k, v in self.prompts.batch(prompts, targets).items()}
        lm = lm_loss(model, batch)
        loss = lm if rank_loss is None else lm + args.rank_loss_weight * rank_loss.to(lm.device)
        return JointStepOutput(loss, lm, rank_loss, candidates, context, scored, nll, scored_scores)

    def _utility_autocast(self):
        """bf16 autocast for the no-grad utility forward (``utility_precision``); it only ranks documents."""
        device = self.args.device
        precision = self.args.utility_precision
        enabled = precision == "bf16" or (precision == "auto" and bf16_supported(device))
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ):
        """The whole joint step; a non-finite loss is skipped (zero gradient) with a logged warning."""
        rows = inputs["rows"]
        if not rows:
            raise ValueError("JMLRTrainer received an empty batch")
        self._maybe_refresh_index()
        out = self.joint_step(model, rows)
        loss = out.loss
        if not torch.isfinite(loss):
            self.skipped_batches += 1
            logger.warning(
                "Non-finite loss (lm_loss=%s, rank_loss=%s) at step %d on rows %s: skipping the batch",
                float(out.lm_loss),
                None if out.rank_loss is None else float(out.rank_loss),
                self.state.global_step,
                [r.get("id") for r in rows],
            )
            self._metrics["train" if model.training else "eval"]["skipped_batches"].append(1.0)
            loss = self._zero_loss(model)
        else:
            self._record_metrics(out, "train" if model.training else "eval")
        return (loss, out) if return_outputs else loss

    def _zero_loss(self, model: nn.Module) -> torch.Tensor:
        """A zero that belongs to the graph of every trainable weight: backward gives zero gradients."""
        params = [p for m in (model, self.retriever) for p in m.parameters() if p.requires_grad]
        return (
            sum(p.reshape(-1)[:1].sum() * 0.0 for p in params)
            if params
            else torch.zeros((), requires_grad=True)
        )

    def _record_metrics(self, out: JointStepOutput, mode: str) -> None:
        metrics = self._metrics[mode]
        metrics["lm_loss"].append(float(out.lm_loss.detach()))
        if out.rank_loss is not None:
            metrics["rank_loss"].append(float(out.rank_loss.detach()))
            taus = [
                kendall_tau(s.detach().float().cpu(), -u.float().cpu())
                for s, u in zip(out.scored_scores, out.utility_nll)
            ]
            metrics["rank_agreement_kendall_tau"].append(sum(taus) / len(taus))

    def _gathered_metrics(self, mode: str) -> dict[str, float]:
        """The mode's metrics since the last log, averaged over steps and processes (``skipped_batches``:
        summed); a collective call, in :data:`METRIC_NAMES` order, so every process gathers the same keys."""
        metrics = self._metrics[mode]
        local = torch.tensor(
            [[sum(metrics[n]), len(metrics[n])] for n in METRIC_NAMES], device=self.args.device
        )
        totals = self.accelerator.gather(local[None]).sum(0).tolist()
        metrics.clear()
        return {
            name: total if name == "skipped_batches" else total / count
            for name, (total, count) in zip(METRIC_NAMES, totals)
            if count
        }

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the joint-step metrics (``lm_loss``, ``rank_loss``, Kendall tau, refreshes, skipped batches) of
        the current mode to the logs that carry its loss; evaluation's as ``eval_lm_loss``, ... (TRL's habit)."""
        mode = "train" if self.model.training else "eval"
        prefix = "" if mode == "train" else "eval_"
        if f"{prefix}loss" in logs:
            logs.update({prefix + key: value for key, value in self._gathered_metrics(mode).items()})
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation: the joint loss (top candidates, no sampling) under no_grad."""
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ------------------------------------------------------------------ saving and resuming
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        self._save_retriever(output_dir if output_dir is not None else self.args.output_dir)

    def _save_retriever(self, output_dir: str) -> None:
        """JMLR's part of a saved folder (:mod:`jmlr_hf.layout`): ``retriever/``, ``jmlr_inference.json``
        and, with a frozen document encoder, ``index/``."""
        if self.args.should_save:
            self.retriever.save_pretrained(os.path.join(output_dir, RETRIEVER_DIR))
            write_inference_settings(output_dir, self.args)
            if self.args.freeze_document_encoder and not getattr(self, "_saving_checkpoint", False):
                self.index.save(os.path.join(output_dir, INDEX_DIR))  # checkpoints: _save_checkpoint_index
        self._retriever_saved_to = output_dir

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The LLM (through ``Trainer``'s FSDP / DeepSpeed gathering) to ``output_dir``, the retriever to
        ``output_dir/retriever`` and the prompt settings inference reuses to ``output_dir/jmlr_inference.json``
        (main process only)."""
        self._retriever_saved_to: str | None = None
        super().save_model(output_dir, _internal_call)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self._retriever_saved_to != output_dir:  # FSDP with a sharded state dict skips _save
            self._save_retriever(output_dir)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.retriever_optimizer is not None and self.args.should_save:
            torch.save(
                self.retriever_optimizer.state_dict(), os.path.join(output_dir, RETRIEVER_OPTIMIZER_FILE)
            )
            torch.save(
                self.retriever_lr_scheduler.state_dict(), os.path.join(output_dir, RETRIEVER_SCHEDULER_FILE)
            )

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """JMLR's own parts first: transformers calls this under every launcher (single process, DDP, FSDP,
        DeepSpeed) right after loading the LLM and before the first step, whereas ``_load_from_checkpoint``
        is skipped under DeepSpeed (``deepspeed_load_checkpoint`` loads the LLM instead)."""
        if checkpoint is not None:
            self._restore_jmlr_checkpoint(checkpoint)
        super()._load_optimizer_and_scheduler(checkpoint)
        # The retriever's own optimizer is created at train begin, after this: it loads its state then.
        self._retriever_optimizer_checkpoint = checkpoint

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """``Trainer``'s checkpoint, then ``index/`` and, last, ``jmlr_state.json`` (what marks the folder
        complete). ``save_total_limit`` rotates older checkpoints out only once this one is complete."""
        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"checkpoint-{self.state.global_step}")
        if self.args.should_save and os.path.isfile(os.path.join(folder, STATE_FILE)):
            os.remove(os.path.join(folder, STATE_FILE))  # rewritten: incomplete until the end
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        self._saving_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit, self._saving_checkpoint = limit, False
        if self.args.should_save:
            self._save_checkpoint_index(os.path.join(folder, INDEX_DIR))
            write_json_atomic(os.path.join(folder, STATE_FILE), self._jmlr_state())
            best = self.state.best_model_checkpoint
            rotate_checkpoints(run_dir, save_total_limit=limit, best_model_checkpoint=best, use_mtime=True)

    def _jmlr_state(self) -> dict[str, Any]:
        """``jmlr_state.json``: the counters a resume restores and the fingerprint of the retriever weights
        that encoded ``index/`` (those of the last refresh, older than the checkpoint's retriever)."""
        return {
            "global_step": self.state.global_step,
            "last_refresh_step": self._last_refresh_step,
            "skipped_batches": self.skipped_batches,
            "index_fingerprint": self.index.fingerprint,
        }

    def _index_version(self) -> tuple[Any, ...]:
        """What identifies the index's content: it changes at a refresh (new store and fingerprint), at
        ``add`` (more passages and vectors), or when ``trainer.index`` is replaced."""
        return (id(self.index), self.index.content_id, self._last_refresh_step)

    def _save_checkpoint_index(self, target: str) -> None:
        """A checkpoint's ``index/``: hard links to the last saved copy when the index has not changed since
        (one copy on disk however many checkpoints share it), else ``index.save``, which hard-links the files
        a refresh wrote under ``index_store/`` (a full write only for an index held in RAM); built beside
        ``target`` and renamed into place."""
        source, version = getattr(self, "_saved_index", (None, None))
        if source is not None and os.path.abspath(source) == os.path.abspath(target):
            return
        tmp = f"{target}.tmp"
        for path in (target, tmp):
            shutil.rmtree(path, ignore_errors=True)
        if source is not None and version == self._index_version() and not missing_index_files(source):
            how = "hard links" if link_or_copy_files(source, tmp) else "copied"
            logger.info("%s: the index is unchanged since %s (%s)", target, source, how)
        else:
            self.index.save(tmp)
        os.rename(tmp, target)
        self._saved_index = (target, self._index_version())

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
    ) -> TrainOutput:
        """``Trainer.train``. The checkpoint to resume from (a folder, or ``True`` for the newest
        ``checkpoint-N`` of ``output_dir``) must be complete: ``ValueError`` naming what it lacks otherwise.
        Its retriever, ``index/`` and ``jmlr_state.json`` are restored under every launcher."""
        if resume_from_checkpoint is True and os.path.isdir(self.args.output_dir):
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir) or True
        if isinstance(resume_from_checkpoint, (str, os.PathLike)):
            resume_from_checkpoint = str(resume_from_checkpoint)
            require_complete(resume_from_checkpoint)
        self._resume_from = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None
        self._restored_from: str | None = None
        return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval)

    def _ensure_restored(self) -> None:
        """At train begin, in case no launcher path called ``_load_optimizer_and_scheduler``: restore JMLR's
        parts of the checkpoint being resumed (a no-op once done)."""
        if getattr(self, "_resume_from", None) is not None:
            self._restore_jmlr_checkpoint(self._resume_from)

    def _restore_jmlr_checkpoint(self, checkpoint: str) -> None:
        """The retriever's weights (copied in place: optimizers keep their parameters), the index and the
        trainer's counters from a complete checkpoint; once per ``train()``."""
        if getattr(self, "_restored_from", None) == checkpoint:
            return
        require_complete(checkpoint)
        self._load_retriever_weights(os.path.join(checkpoint, RETRIEVER_DIR))
        state = read_state(checkpoint)
        index_dir = os.path.join(checkpoint, INDEX_DIR)
        expected = state.get("index_fingerprint")
        self.index = DocumentIndex.load(
            index_dir, self.index.retriever, allow_stale=True, expected_fingerprint=expected
        )
        self._last_refresh_step = int(state.get("last_refresh_step", -1))
        self.skipped_batches = int(state.get("skipped_batches", 0))
        self._saved_index = (index_dir, self._index_version())
        self._restored_from = checkpoint
        logger.info("Restored the retriever, index/ and jmlr_state.json from %s", checkpoint)

    def _load_retriever_weights(self, folder: str) -> None:
        """Copy the weights saved in ``folder`` into ``self.retriever`` (no second model is built)."""
        single = os.path.join(folder, "model.safetensors")
        if os.path.isfile(single):
            result = self.retriever.load_state_dict(safetensors.torch.load_file(single), strict=False)
        else:
            result = load_sharded_checkpoint(self.retriever, folder, strict=False)
        missing = untied_missing_keys(self.retriever, result.missing_keys)
        if missing or result.unexpected_keys:
            raise ValueError(
                f"{folder}: the saved weights do not fit this retriever (missing {missing}, "
                f"unexpected {list(result.unexpected_keys)})"
            )

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """``Trainer``'s warning about missing / unexpected keys of the loaded LLM, without the weights tied
        to a loaded one (an LM head tied to the embeddings is saved once: its absence is expected)."""
        missing = untied_missing_keys(self.model, load_result.missing_keys)
        tied = sorted(set(load_result.missing_keys) - set(missing))
        if tied:
            logger.info("Tied to loaded weights, so saved once (as expected): %s", tied)
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))

    # ------------------------------------------------------------------ Hub
    def card_values(self) -> CardValues:
        """This run's plain values for its two model cards (:func:`jmlr_hf.hub.card_fields` renders them)."""
        from ..hub import CardValues, joint_step_arguments, optimization_arguments

        args, index, dataset = self.args, self.index, self.train_dataset
        model = self.accelerator.unwrap_model(self.model)
        adapter = _active_adapter_config(model)
        return CardValues(
            repo_id=args.hub_model_id or Path(args.output_dir).name,
            # PEFT records the base only for models from from_pretrained; the config knows it otherwise.
            llm_name_or_path=getattr(adapter, "base_model_name_or_path", None)
            or getattr(model.config, "_name_or_path", None),
            num_parameters=sum(p.numel() for p in model.parameters()),
            retriever_config=self.retriever.config,
            joint_arguments=joint_step_arguments(args),
            optimization_arguments=optimization_arguments(args, self.state.global_step),
            prompt_template=args.prompt_template,
            max_context_tokens=args.max_context_tokens,
            num_context_docs=args.num_context_docs,
            num_passages=len(index),
            chunk_tokens=index.chunk_tokens,
            chunk_overlap=index.chunk_overlap,
            global_step=self.state.global_step,
            epoch=self.state.epoch,
            adapter_config=adapter,
            num_train_rows=len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None,
            train_dataset_name=getattr(getattr(dataset, "info", None), "dataset_name", None),
            tags=list(self._tag_names),
            model_tags=list(getattr(model, "model_tags", None) or []),
            paper=dict(self._paper),
        )

    def create_model_card(self, **kwargs: Any) -> None:
        """Write the LLM's JMLR model card to ``output_dir/README.md`` (main process only).

        Takes ``Trainer.create_model_card``'s keywords (``license``, ``tags``, ``model_name``,
        ``finetuned_from``, ``dataset``, ...) and the card fields of :func:`jmlr_hf.hub.card_fields`.
        """
        if not self.is_world_process_zero():
            return
        from ..hub import card_fields, render_model_card

        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        fields = card_fields(self.card_values(), **kwargs)["llm"]
        os.makedirs(self.args.output_dir, exist_ok=True)
        with open(os.path.join(self.args.output_dir, "README.md"), "w", encoding="utf-8") as f:
            f.write(render_model_card(fields["kind"], **fields))

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs: Any,
    ) -> tuple[str, str] | None:
        """Push the LLM to ``args.hub_model_id`` and the retriever to ``args.hub_model_id + "-retriever"``.

        Each repo gets its model card; see :func:`jmlr_hf.hub.push_jmlr_to_hub`. ``kwargs`` are card
        fields (``datasets``, ``base_model``, ``license``, ...). Every process must call it (the
        weights are saved collectively); only the main process creates the repos and uploads.

        Returns:
            The two repo URLs on the main process, ``None`` on the others.
        """
        from ..hub import push_jmlr_to_hub

        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        return push_jmlr_to_hub(
            self,
            commit_message=commit_message,
            private=private,
            token=token,
            revision=revision,
            blocking=blocking,
            **kwargs,
        )
