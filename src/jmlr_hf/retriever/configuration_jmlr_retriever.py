"""Configuration of :class:`~jmlr_hf.JMLRRetriever` (ColBERT late interaction)."""

from __future__ import annotations

import string

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

DEFAULT_SKIPLIST: tuple[str, ...] = tuple(string.punctuation)


class JMLRRetrieverConfig(PretrainedConfig):
    r"""Configuration of a ColBERT retriever: a BERT-like encoder plus a linear projection.

    Args:
        encoder_config (`PretrainedConfig` or `dict`, defaults to a BERT config):
            Configuration of the token encoder (any BERT-like ``AutoModel``).
        dim (`int`, defaults to 128): size of each token vector after the projection (no bias).
        query_length (`int`, defaults to 32): the *minimum* query length: shorter queries are padded with
            the mask token ("query expansion") to this many tokens; longer ones keep their length.
        query_max_length (`int`, *optional*): queries are truncated to this many tokens. ``None`` (the
            default) means the encoder's limit (``max_position_embeddings``, 512 for BERT), so a MedQA
            vignette reaches the retriever whole, as in the paper's code (``query_maxlen=512``). Stanford
            ColBERT and PyLate checkpoints load with their own ``query_maxlen`` here (32 for most), which
            keeps their behaviour exact; ``JMLRTrainingArguments.retriever_query_max_length`` raises it.
        document_length (`int`, defaults to 180): documents are truncated to this many tokens.
        query_marker (`str`, defaults to ``"[unused0]"``): token inserted after ``[CLS]`` in queries ([Q]);
            ``""`` inserts none (PyLate's empty ``query_prefix``).
        document_marker (`str`, defaults to ``"[unused1]"``): token inserted after ``[CLS]`` in documents ([D]);
            ``""`` inserts none.
        query_expansion (`bool`, defaults to `True`): pad queries with the mask token to ``query_length``.
        attend_to_expansion_tokens (`bool`, defaults to `False`): whether the encoder attends to the
            expansion tokens (ColBERTv2's ``attend_to_mask_tokens``); their vectors are scored either way.
        skiplist (`list[str]`, defaults to the ASCII punctuation): document tokens whose vectors are dropped:
            a word that is a vocabulary token drops that token; any other word drops the first piece the
            tokenizer splits it into (Stanford ColBERT's rule).
        projection_layers (`list[dict]`, *optional*): the projection as a chain of dense layers, for PyLate
            models whose projection is more than one bias-free linear map. Each entry is
            ``{"out_features": int, "bias": bool, "activation": str, "residual": bool}`` (``activation``: the name
            of a ``torch.nn`` module built without arguments, e.g. ``"Identity"``, ``"Tanh"``, ``"GELU"``;
            ``residual`` adds the layer's input, through a bias-free linear map when the sizes differ). The last
            ``out_features`` must be ``dim``. ``None`` (the default): one bias-free linear map to ``dim``.
        similarity (`str`, defaults to ``"maxsim"``): the only supported late-interaction similarity.
    """

    model_type = "jmlr_retriever"
    sub_configs_defaults = {"encoder_config": SubConfigSpec(config_class=AutoConfig, model_type="bert")}

    encoder_config: PretrainedConfig | dict | None = None
    dim: int = 128
    query_length: int = 32
    query_max_length: int | None = None
    document_length: int = 180
    query_marker: str = "[unused0]"
    document_marker: str = "[unused1]"
    query_expansion: bool = True
    attend_to_expansion_tokens: bool = False
    skiplist: list[str] | None = None
    similarity: str = "maxsim"
    projection_layers: list[dict] | None = None

    @property
    def max_query_tokens(self) -> int:
        """Queries are truncated to this many tokens: ``query_max_length``, capped by the encoder's limit."""
        limit = getattr(self.encoder_config, "max_position_embeddings", None) or 512
        if self.query_max_length is None:
            return int(limit)
        return int(min(self.query_max_length, limit))

    def __post_init__(self, **kwargs):
        if self.skiplist is None:
            self.skiplist = list(DEFAULT_SKIPLIST)
        if self.dim <= 0:
            raise ValueError(f"dim must be positive, got {self.dim}")
        if self.query_length < 3 or self.document_length < 3:
            raise ValueError(
                "query_length and document_length must leave room for [CLS], the marker and [SEP]; "
                f"got query_length={self.query_length}, document_length={self.document_length}"
            )
        if self.query_max_length is not None and self.query_max_length < 3:
            raise ValueError(f"query_max_length must be at least 3 (or None), got {self.query_max_length}")
        if self.projection_layers is not None:
            if not self.projection_layers or int(self.projection_layers[-1]["out_features"]) != self.dim:
                raise ValueError(
                    f"projection_layers must end with out_features == dim ({self.dim}), got {self.projection_layers}"
                )
        if self.similarity != "maxsim":
            raise ValueError(
                f"similarity must be 'maxsim' (ColBERT late interaction), got {self.similarity!r}"
            )
        super().__post_init__(**kwargs)


__all__ = ["JMLRRetrieverConfig"]
