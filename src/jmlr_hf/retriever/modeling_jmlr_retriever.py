"""ColBERT late-interaction retriever as a ``transformers.PreTrainedModel``.

A BERT-like encoder gives one vector per token; a linear projection (no bias) maps them to
``config.dim`` and they are L2-normalised. Queries get the [Q] marker, keep up to
``max_query_tokens`` tokens (the encoder's limit by default) and short ones are padded with the mask
token to ``query_length`` (query expansion); documents get the [D] marker and lose their
punctuation vectors. The relevance of a document to a query is MaxSim: for every query token the
best-matching document token, summed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from .configuration_jmlr_retriever import DEFAULT_SKIPLIST, JMLRRetrieverConfig

logger = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16"]
_PROGRESS_THRESHOLD = 512
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


class EncodedBatch(NamedTuple):
    """Padded token embeddings ``[n, length, dim]`` and their boolean mask ``[n, length]``."""

    embeddings: torch.Tensor
    mask: torch.Tensor


@dataclass
class JMLRRetrieverOutput(ModelOutput):
    """Output of :meth:`JMLRRetriever.forward`.

    Args:
        embeddings: L2-normalised token vectors ``[batch, length, dim]``; masked-out positions are zero.
        mask: which positions take part in MaxSim ``[batch, length]`` (``None`` if not given).
    """

    embeddings: torch.Tensor | None = None
    mask: torch.Tensor | None = None


def maxsim(
    query_embeddings: torch.Tensor,
    query_mask: torch.Tensor | None,
    doc_embeddings: torch.Tensor,
    doc_mask: torch.Tensor | None,
    doc_chunk_size: int = 256,
) -> torch.Tensor:
    """MaxSim scores of every query against every document: ``[n_queries, n_docs]``.

    ``query_embeddings`` is ``[nq, Lq, dim]``, ``doc_embeddings`` ``[nd, Ld, dim]``; masks are
    boolean (``None`` = all valid). Documents are processed in chunks so that the
    ``[nq, chunk, Lq, Ld]`` similarity tensor stays small. A document without any valid token
    scores 0.
    """
    nq, lq, _ = query_embeddings.shape
    nd = doc_embeddings.shape[0]
    qmask = (
        torch.ones(nq, lq, dtype=torch.bool, device=query_embeddings.device)
        if query_mask is None
        else query_mask.bool()
    )
    out = []
    for start in range(0, nd, doc_chunk_size):
        d = doc_embeddings[start : start + doc_chunk_size]
        sim = torch.einsum("qld,nmd->qnlm", query_embeddings, d)
        if doc_mask is not None:
            dmask = doc_mask[start : start + doc_chunk_size].bool()
            sim = sim.masked_fill(~dmask[None, :, None, :], float("-inf"))
        best = sim.amax(dim=-1)
        best = torch.where(torch.isfinite(best), best, torch.zeros_like(best))
        out.append((best * qmask[:, None, :]).sum(-1))
    return torch.cat(out, dim=1) if out else query_embeddings.new_zeros(nq, 0)


def maxsim_paired(
    query_embeddings: torch.Tensor,
    query_mask: torch.Tensor | None,
    doc_embeddings: torch.Tensor,
    doc_mask: torch.Tensor | None,
) -> torch.Tensor:
    """MaxSim of query ``b`` against its own ``k`` documents: queries ``[b, Lq, dim]``,
    documents ``[b, k, Ld, dim]`` (mask ``[b, k, Ld]``) -> scores ``[b, k]``."""
    sim = torch.einsum("bld,bkmd->bklm", query_embeddings, doc_embeddings)
    if doc_mask is not None:
        sim = sim.masked_fill(~doc_mask.bool()[:, :, None, :], float("-inf"))
    best = sim.amax(dim=-1)
    best = torch.where(torch.isfinite(best), best, torch.zeros_like(best))
    if query_mask is not None:
        best = best * query_mask.bool()[:, None, :]
    return best.sum(-1)


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` has fast bf16 matrix math (AVX-512 BF16 or AMX CPUs, bf16-capable GPUs)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return bool((check and check()) or (amx and amx()))
    return False


class JMLRRetriever(PreTrainedModel):
    """ColBERT retriever: BERT-like encoder + linear projection to ``config.dim``, MaxSim scoring.

    The tokenizer travels with the model: :meth:`save_pretrained` writes it beside the weights and
    :meth:`from_pretrained` loads it into ``model.tokenizer``. ``from_pretrained`` also reads
    Stanford ColBERT checkpoints (``artifact.metadata`` + ``linear`` layer) and PyLate /
    sentence-transformers ColBERT folders.

    Example:
        A new ColBERT head on the embedded all-MiniLM-L6-v2 (offline; ``from_encoder`` takes any BERT-like
        encoder's Hub id or folder, e.g. ``"sentence-transformers/all-MiniLM-L6-v2"``):

        >>> import torch
        >>> from jmlr_hf.models import default_encoder_path
        >>> _ = torch.manual_seed(0)
        >>> retriever = JMLRRetriever.from_encoder(default_encoder_path(), dim=128)
        >>> q = retriever.encode_queries(["first-line therapy for hypertension"], precision="fp32")
        >>> d = retriever.encode_documents(
        ...     ["Thiazide diuretics are first-line therapy for hypertension.", "Metformin treats diabetes."],
        ...     precision="fp32",
        ... )
        >>> q.embeddings.shape  # [queries, query_length tokens, dim]
        torch.Size([1, 32, 128])
        >>> scores = retriever.score(q, d)  # MaxSim, [queries, documents]
        >>> scores.shape, bool(scores[0, 0] > scores[0, 1])
        (torch.Size([1, 2]), True)
    """

    config_class = JMLRRetrieverConfig
    config: JMLRRetrieverConfig
    base_model_prefix = "encoder"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules: list[str] = []

    def __init__(self, config: JMLRRetrieverConfig, *inputs: Any, **kwargs: Any) -> None:
        super().__init__(config, *inputs, **kwargs)
        self.encoder = AutoModel.from_config(config.encoder_config)
        self.linear = nn.Linear(config.encoder_config.hidden_size, config.dim, bias=False)
        if config.projection_layers is not None:
            self._build_projection_chain(config.encoder_config.hidden_size, config.projection_layers)
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self._skiplist_ids: torch.Tensor | None = None
        self.post_init()

    def _build_projection_chain(self, in_features: int, layers: list[dict]) -> None:
        """``config.projection_layers``: layer 0 is ``self.linear``, the others ``extra_projections``."""
        self.projection_activations = nn.ModuleList()
        self.extra_projections = nn.ModuleList()
        self.residual_projections = nn.ModuleDict()
        for i, spec in enumerate(layers):
            out_features = int(spec["out_features"])
            linear = nn.Linear(in_features, out_features, bias=bool(spec.get("bias", False)))
            if i == 0:
                self.linear = linear
            else:
                self.extra_projections.append(linear)
            self.projection_activations.append(_activation(spec.get("activation", "Identity")))
            if spec.get("residual") and in_features != out_features:
                self.residual_projections[str(i)] = nn.Linear(in_features, out_features, bias=False)
            in_features = out_features

    def _project(self, hidden: torch.Tensor) -> torch.Tensor:
        """The projection to ``config.dim`` (before normalisation): ``linear``, or the configured chain."""
        layers = self.config.projection_layers
        if layers is None:
            return self.linear(hidden)
        x = hidden
        for i, spec in enumerate(layers):
            linear = self.linear if i == 0 else self.extra_projections[i - 1]
            y = self.projection_activations[i](linear(x))
            if spec.get("residual"):
                y = y + (self.residual_projections[str(i)](x) if str(i) in self.residual_projections else x)
            x = y
        return x

    # ------------------------------------------------------------------ construction / IO
    @classmethod
    def from_encoder(
        cls,
        name_or_path: str | os.PathLike,
        dim: int = 128,
        tokenizer: PreTrainedTokenizerBase | None = None,
        **config_kwargs: Any,
    ) -> JMLRRetriever:
        """A retriever with a new (randomly initialised) ColBERT head on a pretrained encoder.

        Args:
            name_or_path: Hub id or local folder of any BERT-like ``AutoModel`` encoder.
            dim: size of the projected token vectors.
            tokenizer: the encoder's tokenizer (loaded from ``name_or_path`` when omitted).
            **config_kwargs: other :class:`JMLRRetrieverConfig` fields (``query_length``, ...).
        """
        encoder_config = AutoConfig.from_pretrained(name_or_path)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(name_or_path)
        config = JMLRRetrieverConfig(encoder_config=encoder_config, dim=dim, **config_kwargs)
        model = cls(config)
        model.encoder = AutoModel.from_pretrained(name_or_path)
        model.tokenizer = tokenizer
        model._ensure_marker_tokens()
        return model

    def _ensure_marker_tokens(self) -> None:
        """Add the [Q]/[D] markers to the vocabulary when the tokenizer lacks them (non-BERT vocabularies)."""
        tok = self._require_tokenizer()
        vocab = tok.get_vocab()
        missing = [m for m in (self.config.query_marker, self.config.document_marker) if m and m not in vocab]
        if missing:
            logger.info("Adding marker tokens %s to the tokenizer", missing)
            tok.add_tokens(missing, special_tokens=True)
            self.encoder.resize_token_embeddings(len(tok))
            self.config.encoder_config.vocab_size = len(tok)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """Save config, weights (safetensors) and the tokenizer into ``save_directory``."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any, **kwargs: Any
    ) -> JMLRRetriever:
        """Load a JMLR retriever, a Stanford ColBERT checkpoint or a PyLate ColBERT folder (with tokenizer)."""
        hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        fmt = _detect_checkpoint_format(pretrained_model_name_or_path, hub_kwargs)
        if fmt == "stanford":
            return _load_stanford(cls, pretrained_model_name_or_path, hub_kwargs)
        if fmt == "pylate":
            return _load_pylate(cls, pretrained_model_name_or_path, hub_kwargs)
        model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model.tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        return model

    # ------------------------------------------------------------------ tokenisation
    def _require_tokenizer(self) -> PreTrainedTokenizerBase:
        if self.tokenizer is None:
            raise ValueError(
                "This JMLRRetriever has no tokenizer: load it with from_pretrained/from_encoder "
                "or set `retriever.tokenizer`."
            )
        return self.tokenizer

    def _skiplist(self) -> torch.Tensor:
        if self._skiplist_ids is None:
            tok = self._require_tokenizer()
            vocab = tok.get_vocab()
            ids = set()
            for word in self.config.skiplist or ():
                if word in vocab:  # a vocabulary token (PyLate's rule)
                    ids.add(vocab[word])
                    continue
                # split into pieces: Stanford ColBERT keeps the first one
                pieces = tok.encode(word, add_special_tokens=False)
                if pieces:
                    ids.add(pieces[0])
            self._skiplist_ids = torch.tensor(sorted(ids), dtype=torch.long)
        return self._skiplist_ids

    def _token_ids(self, texts: Sequence[str], is_query: bool) -> list[list[int]]:
        """Token ids with [CLS] marker ... [SEP] (no marker when it is ``""``), truncated to the query/document length."""
        _check_texts(texts, "queries" if is_query else "documents")
        tok = self._require_tokenizer()
        length = self.config.max_query_tokens if is_query else self.config.document_length
        marker_token = self.config.query_marker if is_query else self.config.document_marker
        encoded = tok(
            list(texts),
            add_special_tokens=True,
            truncation=True,
            max_length=length - 1 if marker_token else length,
        )["input_ids"]
        if not marker_token:
            return encoded
        marker = tok.convert_tokens_to_ids(marker_token)
        return [ids[:1] + [marker] + ids[1:] for ids in encoded]

    def _collate(self, token_ids: Sequence[list[int]], is_query: bool) -> dict[str, torch.Tensor]:
        """Pad token ids into model inputs plus the ``output_mask`` of vectors used by MaxSim."""
        tok = self._require_tokenizer()
        cfg = self.config
        expand = is_query and cfg.query_expansion
        if tok.pad_token_id is None or (expand and tok.mask_token_id is None):
            raise ValueError(
                "The retriever's tokenizer needs a pad token (and a mask token for query expansion)"
            )
        # Each row is expanded on its own (to at least query_length), so that a query's vectors never
        # depend on the other queries of its batch; the batch is then padded with real padding.
        lengths = [max(len(ids), cfg.query_length) if expand else len(ids) for ids in token_ids]
        width = max(lengths)
        input_ids = torch.full((len(token_ids), width), tok.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(token_ids), width), dtype=torch.long)
        output_mask = torch.zeros((len(token_ids), width), dtype=torch.bool)
        for row, (ids, length) in enumerate(zip(token_ids, lengths)):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            input_ids[row, len(ids) : length] = tok.mask_token_id if expand else tok.pad_token_id
            attended = length if expand and cfg.attend_to_expansion_tokens else len(ids)
            attention_mask[row, :attended] = 1
            output_mask[row, :length] = True
        if not is_query:
            output_mask &= ~torch.isin(input_ids, self._skiplist())
        return {"input_ids": input_ids, "attention_mask": attention_mask, "output_mask": output_mask}

    def tokenize(self, texts: Sequence[str], is_query: bool) -> dict[str, torch.Tensor]:
        """Model inputs (``input_ids``, ``attention_mask``, ``output_mask``) for queries or documents."""
        return self._collate(self._token_ids(texts, is_query), is_query)

    # ------------------------------------------------------------------ model
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> JMLRRetrieverOutput:
        """Normalised token vectors for tokenised inputs (zeros where ``output_mask`` is false)."""
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        embeddings = F.normalize(self._project(hidden).float(), p=2, dim=-1)
        if output_mask is not None:
            embeddings = embeddings * output_mask.unsqueeze(-1).to(embeddings.dtype)
        return JMLRRetrieverOutput(embeddings=embeddings, mask=output_mask)

    def embed(self, texts: Sequence[str], is_query: bool) -> EncodedBatch:
        """Encode one batch *with* autograd (for training); see :meth:`encode_queries` for inference."""
        inputs = {k: v.to(self.device) for k, v in self.tokenize(texts, is_query).items()}
        out = self(**inputs)
        return EncodedBatch(out.embeddings, out.mask)

    def _encode_batches(
        self,
        texts: Sequence[str],
        is_query: bool,
        batch_size: int,
        show_progress_bar: bool | None,
        precision: Precision,
        batches: Container[int] | None = None,
        token_ids: list[list[int]] | None = None,
    ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        """Yield ``(original indices, embeddings, mask)`` for length-bucketed batches, no autograd.

        ``batches``: encode only the batches with these numbers (of the plan :func:`batch_plan` makes),
        as one process of a sharded encode does; ``token_ids``: the texts' :meth:`_token_ids` when the
        caller has them already."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if token_ids is None:
            token_ids = self._token_ids(texts, is_query)
        plan = batch_plan(token_ids, batch_size)
        if batches is not None:
            plan = [idx for b, idx in enumerate(plan) if b in batches]
        use_bf16 = precision == "bf16" or (precision == "auto" and self._auto_bf16(is_query))
        show = len(texts) >= _PROGRESS_THRESHOLD if show_progress_bar is None else show_progress_bar
        # eval() for encoding (and train() after it) walk every submodule, which costs more than
        # encoding a query: skip them when no module is in training mode.
        was_training = self.training
        switch_mode = any(module.training for module in self.modules())
        if switch_mode:
            self.eval()
        try:
            with torch.inference_mode(), torch.autocast(self.device.type, torch.bfloat16, enabled=use_bf16):
                what = "queries" if is_query else "passages"  # the bar counts texts, not batches
                total = sum(len(idx) for idx in plan)
                bar = tqdm(total=total, desc=f"Encoding {what}", unit=f" {what}", disable=not show)
                for idx in plan:
                    inputs = self._collate([token_ids[i] for i in idx], is_query)
                    inputs = {k: v.to(self.device) for k, v in inputs.items()}
                    out = self(**inputs)
                    bar.update(len(idx))
                    yield idx, out.embeddings.float(), inputs["output_mask"]
                bar.close()
        finally:
            if switch_mode:
                self.train(was_training)

    def _auto_bf16(self, is_query: bool) -> bool:
        """What ``precision="auto"`` picks: bf16 where the device has fast bf16 math, except for queries
        on a CPU. There a query's encoder matmuls are as fast in float32 (measured: 28 vs 27 ms for a
        full-length MedQA question, 12.6 vs 15.2 ms for a 32-token one), and bf16 builds and caches a
        oneDNN kernel for every new query length: a search process grew by 376 MiB over 200 questions."""
        if is_query and self.device.type == "cpu":
            return False
        return bf16_supported(self.device)

    def _encode(
        self,
        texts: Sequence[str],
        is_query: bool,
        batch_size: int,
        show_progress_bar: bool | None,
        precision: Precision,
    ) -> EncodedBatch:
        _check_texts(texts, "queries" if is_query else "documents")
        texts = list(texts)
        chunks = list(self._encode_batches(texts, is_query, batch_size, show_progress_bar, precision))
        width = max((emb.shape[1] for _, emb, _ in chunks), default=0)
        embeddings = torch.zeros(len(texts), width, self.config.dim)
        mask = torch.zeros(len(texts), width, dtype=torch.bool)
        for idx, emb, m in chunks:
            index = torch.tensor(idx)
            embeddings[index, : emb.shape[1]] = emb.cpu()
            mask[index, : m.shape[1]] = m.cpu()
        return EncodedBatch(embeddings, mask)

    def encode_queries(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        show_progress_bar: bool | None = None,
        precision: Precision = "auto",
    ) -> EncodedBatch:
        """Encode queries (no autograd): ``EncodedBatch`` of ``[n, length, dim]`` + mask, on CPU.

        A query keeps all its tokens up to ``config.max_query_tokens`` (512 for BERT encoders unless
        the config says otherwise); a shorter one than ``config.query_length`` is expanded with [MASK]
        tokens to that length. ``length`` is the longest query's; the mask marks each query's vectors.

        ``precision="auto"`` runs the encoder under bf16 autocast on GPUs with fast bf16 (Ampere+) and in
        float32 on CPUs (as fast for queries, and no kernel cached per query length); vectors are
        returned in float32. bf16 moves rankings slightly against PyLate / Stanford ColBERT (Kendall tau
        about 0.99); ``precision="fp32"`` gives their vectors exactly (to about 1e-6), ``"bf16"`` forces bf16.
        """
        return self._encode(texts, True, batch_size, show_progress_bar, precision)

    def encode_documents(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        precision: Precision = "auto",
    ) -> EncodedBatch:
        """Encode documents (no autograd): padded ``[n, max_len, dim]`` vectors + mask, on CPU.

        Batches are bucketed by length; punctuation vectors are masked out. ``precision`` as in
        :meth:`encode_queries` (``"fp32"``: exact; ``"auto"``: bf16 where the hardware is fast at it).
        """
        return self._encode(texts, False, batch_size, show_progress_bar, precision)

    def encode_documents_flat(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        precision: Precision = "auto",
        dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode documents into the index layout: the kept token vectors of all documents
        concatenated in input order (``[n_tokens, dim]``, ``dtype``) and each document's count.
        ``precision`` as in :meth:`encode_queries` (``"fp32"``: exact)."""
        _check_texts(texts, "documents")
        texts = list(texts)
        per_doc: list[torch.Tensor | None] = [None] * len(texts)
        for idx, emb, m in self._encode_batches(texts, False, batch_size, show_progress_bar, precision):
            emb, m = emb.cpu(), m.cpu()
            for row, i in enumerate(idx):
                per_doc[i] = emb[row][m[row]].to(dtype)
        empty = torch.zeros(0, self.config.dim, dtype=dtype)
        vectors = [v if v is not None else empty for v in per_doc]
        doclens = torch.tensor([v.shape[0] for v in vectors], dtype=torch.long)
        return (torch.cat(vectors) if vectors else empty), doclens

    def score(
        self, queries: EncodedBatch | torch.Tensor, documents: EncodedBatch | torch.Tensor
    ) -> torch.Tensor:
        """MaxSim scores ``[n_queries, n_documents]`` between encoded queries and documents."""
        q_emb, q_mask = _unpack(queries)
        d_emb, d_mask = _unpack(documents)
        return maxsim(
            q_emb, q_mask, d_emb.to(q_emb.device), None if d_mask is None else d_mask.to(q_emb.device)
        )

    def weights_fingerprint(self) -> str:
        """A hash of the current weights: the index records it to detect stale vectors."""
        import hashlib

        digest = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()[:32]


def _activation(name: str) -> nn.Module:
    """A ``torch.nn`` activation module from its class name (``"Tanh"``) or full path
    (``"torch.nn.modules.activation.Tanh"``, as sentence-transformers saves it)."""
    module, _, cls_name = name.rpartition(".")
    cls = getattr(nn, cls_name, None)
    if (module and not module.startswith("torch.nn")) or not (
        isinstance(cls, type) and issubclass(cls, nn.Module)
    ):
        raise ValueError(
            f"Unsupported projection activation {name!r}: only torch.nn modules (Identity, Tanh, GELU, ...)"
        )
    try:
        return cls()
    except TypeError as err:
        raise ValueError(
            f"Unsupported projection activation {name!r}: it cannot be built without arguments"
        ) from err


def _unpack(x: EncodedBatch | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(x, torch.Tensor):
        return x, None
    return x[0], x[1]


def _check_texts(texts: Sequence[str], what: str) -> None:
    if isinstance(texts, str):
        raise TypeError(f"Expected a list of {what}, got a single string; wrap it in a list")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] is {type(t).__name__}, expected str")


# ---------------------------------------------------------------------- foreign checkpoint formats
def _resolve_file(path: str | os.PathLike, filename: str, hub_kwargs: dict) -> str | None:
    from transformers.utils import cached_file

    return cached_file(
        path,
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **hub_kwargs,
    )


def _local_folder(path: str | os.PathLike, hub_kwargs: dict) -> Path:
    if os.path.isdir(path):
        return Path(path)
    from huggingface_hub import snapshot_download

    allowed = {
        k: v for k, v in hub_kwargs.items() if k in ("cache_dir", "revision", "token", "local_files_only")
    }
    return Path(snapshot_download(str(path), **allowed))


def _detect_checkpoint_format(path: str | os.PathLike, hub_kwargs: dict) -> str:
    config_file = _resolve_file(path, "config.json", hub_kwargs)
    if config_file is not None:
        with open(config_file, encoding="utf-8") as f:
            if json.load(f).get("model_type") == JMLRRetrieverConfig.model_type:
                return "jmlr"
    if _resolve_file(path, "artifact.metadata", hub_kwargs) is not None:
        return "stanford"
    if _resolve_file(path, "modules.json", hub_kwargs) is not None:
        return "pylate"
    if config_file is None:
        raise OSError(f"{path} has no config.json: it is not a JMLR, Stanford ColBERT or PyLate checkpoint")
    raise ValueError(
        f"{path} is a plain encoder, not a ColBERT retriever; use JMLRRetriever.from_encoder({str(path)!r}) "
        "to put a new ColBERT head on it"
    )


def _read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    st = folder / "model.safetensors"
    if st.is_file():
        return load_file(st)
    binary = folder / "pytorch_model.bin"
    if binary.is_file():  # legacy checkpoints; weights_only refuses arbitrary pickled objects
        return torch.load(binary, map_location="cpu", weights_only=True)
    raise OSError(f"{folder} holds neither model.safetensors nor pytorch_model.bin")


def _load_encoder_weights(model: JMLRRetriever, folder: Path) -> None:
    """Load the encoder's weights from ``folder`` through transformers' own ``from_pretrained``, so that
    its key conversions apply: a ``bert.`` prefix (Stanford ColBERT), legacy ``LayerNorm.gamma/beta`` names
    (written by transformers 5.3, among others), ``.bin`` or ``.safetensors``, sharded or not."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the ColBERT head's keys are "unexpected" for the encoder: expected
    try:
        loaded, info = AutoModel.from_pretrained(
            folder, config=model.config.encoder_config, output_loading_info=True
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = [k for k in info.get("missing_keys", ()) if "pooler" not in k and "position_ids" not in k]
    if missing:
        raise ValueError(f"{folder}: encoder weights are missing {missing[:5]} ({len(missing)} in all)")
    model.encoder.load_state_dict(loaded.state_dict())


def batch_plan(token_ids: Sequence[list[int]], batch_size: int) -> list[list[int]]:
    """The encoding batches of texts with these token ids: indices sorted by length, longest first
    (stable), cut every ``batch_size``. A sharded encode gives batch ``b`` to process ``b % N``."""
    order = sorted(range(len(token_ids)), key=lambda i: -len(token_ids[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _colbert_skiplist(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Stanford ColBERT's ``mask_punctuation``: the first piece of each ASCII punctuation mark (with
    SentencePiece-like tokenizers that piece is often the word-start marker, and ColBERT drops that)."""
    tokens: list[str] = []
    for symbol in DEFAULT_SKIPLIST:
        pieces = tokenizer.encode(symbol, add_special_tokens=False)
        token = tokenizer.convert_ids_to_tokens(pieces[0]) if pieces else None
        if token is not None and token not in tokens:
            tokens.append(token)
    return tokens


def _load_stanford(cls: type[JMLRRetriever], path: str | os.PathLike, hub_kwargs: dict) -> JMLRRetriever:
    folder = _local_folder(path, hub_kwargs)
    meta = json.loads((folder / "artifact.metadata").read_text(encoding="utf-8"))
    if meta.get("similarity", "cosine") != "cosine":
        raise ValueError(f"{folder}: similarity {meta['similarity']!r} is not supported (only cosine/MaxSim)")
    state = _read_state_dict(folder)
    if "linear.weight" not in state:
        raise ValueError(f"{folder}: a Stanford ColBERT checkpoint must hold 'linear.weight'")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = JMLRRetrieverConfig(
        encoder_config=AutoConfig.from_pretrained(folder),
        dim=int(state["linear.weight"].shape[0]),
        query_length=int(meta.get("query_maxlen", 32)),
        query_max_length=int(meta.get("query_maxlen", 32)),  # ColBERT's own: exact unless raised
        document_length=int(meta.get("doc_maxlen", 180)),
        query_marker=meta.get("query_token_id", "[unused0]"),
        document_marker=meta.get("doc_token_id", "[unused1]"),
        attend_to_expansion_tokens=bool(meta.get("attend_to_mask_tokens", False)),
        skiplist=_colbert_skiplist(tokenizer) if meta.get("mask_punctuation", True) else [],
    )
    model = cls(config)
    _load_encoder_weights(model, folder)
    with torch.no_grad():
        model.linear.weight.copy_(state["linear.weight"])
    model.tokenizer = tokenizer
    return model


def _pylate_dense_layers(
    folder: Path, modules: list[dict]
) -> list[tuple[Path, dict, dict[str, torch.Tensor]]]:
    """The Dense modules after the Transformer, in order: ``(folder, config, weights)`` each."""
    layers = []
    for module in modules[1:]:
        kind = module.get("type", "")
        if not kind.endswith("Dense"):
            raise ValueError(
                f"{folder}/modules.json: module {module.get('path')!r} of type {kind!r} is not supported "
                "(a PyLate ColBERT is a Transformer followed by Dense modules)"
            )
        dense_dir = folder / module["path"]
        dense_cfg = json.loads((dense_dir / "config.json").read_text(encoding="utf-8"))
        layers.append((dense_dir, dense_cfg, _read_state_dict(dense_dir)))
    return layers


def _pylate_projection(
    layers: list[tuple[Path, dict, dict[str, torch.Tensor]]], hidden_size: int
) -> list[dict] | None:
    """``JMLRRetrieverConfig.projection_layers`` for PyLate's Dense chain (``None``: one bias-free linear map)."""
    specs = []
    in_features = hidden_size
    for dense_dir, cfg, state in layers:
        out_features = int(cfg["out_features"])
        if int(cfg.get("in_features", in_features)) != in_features:
            raise ValueError(
                f"{dense_dir}: in_features {cfg['in_features']} does not follow the previous layer's {in_features}"
            )
        activation = cfg.get("activation_function") or "torch.nn.modules.linear.Identity"
        _activation(activation)  # a clear error for an unsupported one
        spec = {
            "out_features": out_features,
            "bias": bool(cfg.get("bias", "linear.bias" in state)),
            "activation": activation.rpartition(".")[2],
            "residual": bool(cfg.get("use_residual", False)),
        }
        specs.append(spec)
        in_features = out_features
    plain = {
        "out_features": specs[0]["out_features"],
        "bias": False,
        "activation": "Identity",
        "residual": False,
    }
    return None if specs == [plain] else specs


def _load_pylate(cls: type[JMLRRetriever], path: str | os.PathLike, hub_kwargs: dict) -> JMLRRetriever:
    folder = _local_folder(path, hub_kwargs)
    modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    if not any(m.get("type", "").endswith("Dense") for m in modules):
        raise ValueError(
            f"{folder}/modules.json has no Dense projection module: a plain sentence-transformers encoder, not "
            f"a ColBERT retriever; use JMLRRetriever.from_encoder({str(path)!r}) to put a new ColBERT head on it"
        )
    if not modules or not modules[0].get("type", "").endswith("Transformer"):
        raise ValueError(
            f"{folder}/modules.json: the first module must be a sentence-transformers Transformer"
        )
    transformer_dir = folder / modules[0].get("path", "")
    st_module_cfg_file = transformer_dir / "sentence_bert_config.json"
    if st_module_cfg_file.is_file():
        if json.loads(st_module_cfg_file.read_text(encoding="utf-8")).get("do_lower_case"):
            raise ValueError(
                f"{st_module_cfg_file}: do_lower_case (lower-casing texts before the tokenizer) is not supported"
            )
    st_cfg_file = folder / "config_sentence_transformers.json"
    st_cfg = json.loads(st_cfg_file.read_text(encoding="utf-8")) if st_cfg_file.is_file() else {}
    encoder_config = AutoConfig.from_pretrained(transformer_dir)
    layers = _pylate_dense_layers(folder, modules)
    projection = _pylate_projection(layers, encoder_config.hidden_size)
    tokenizer = AutoTokenizer.from_pretrained(transformer_dir)
    # PyLate's skiplist is tokenizer.convert_tokens_to_ids(word): a word that is not a vocabulary token
    # drops the unknown token (e.g. "..." with a WordPiece vocabulary), so keep exactly that.
    vocab = tokenizer.get_vocab()
    skiplist: list[str] = []
    for word in st_cfg.get("skiplist_words") or DEFAULT_SKIPLIST:
        token = word if word in vocab else tokenizer.unk_token
        if token is not None and token not in skiplist:
            skiplist.append(token)
    expansion = st_cfg.get("do_query_expansion")
    query_prefix, document_prefix = st_cfg.get("query_prefix"), st_cfg.get("document_prefix")
    config = JMLRRetrieverConfig(
        encoder_config=encoder_config,
        dim=int(layers[-1][1]["out_features"]),
        query_length=int(st_cfg.get("query_length") or 32),
        query_max_length=int(st_cfg.get("query_length") or 32),  # PyLate's own: exact unless raised
        document_length=int(st_cfg.get("document_length") or 180),
        # PyLate: a missing (null) prefix falls back to "[Q] "/"[D] "; an empty one means no marker
        query_marker="[Q] " if query_prefix is None else query_prefix,
        document_marker="[D] " if document_prefix is None else document_prefix,
        query_expansion=True if expansion is None else bool(expansion),
        attend_to_expansion_tokens=bool(st_cfg.get("attend_to_expansion_tokens", False)),
        skiplist=skiplist,
        projection_layers=projection,
    )
    model = cls(config)
    _load_encoder_weights(model, transformer_dir)
    with torch.no_grad():
        for i, (dense_dir, _, state) in enumerate(layers):
            linear = model.linear if i == 0 else model.extra_projections[i - 1]
            linear.weight.copy_(state["linear.weight"])
            if linear.bias is not None:
                linear.bias.copy_(state["linear.bias"])
            if projection is not None and str(i) in model.residual_projections:
                if "residual.weight" not in state:
                    raise ValueError(
                        f"{dense_dir}: use_residual changes the size but 'residual.weight' is missing"
                    )
                model.residual_projections[str(i)].weight.copy_(state["residual.weight"])
    model.tokenizer = tokenizer
    return model


__all__ = ["EncodedBatch", "JMLRRetriever", "JMLRRetrieverOutput", "maxsim", "maxsim_paired"]
