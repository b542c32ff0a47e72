"""The ColBERT retriever (a ``PreTrainedModel``) and the document index; registers the Auto classes."""

from transformers import AutoConfig, AutoModel

from .configuration_jmlr_retriever import JMLRRetrieverConfig
from .index import DocumentIndex, SearchHit, StaleIndexError
from .modeling_jmlr_retriever import EncodedBatch, JMLRRetriever, JMLRRetrieverOutput, maxsim, maxsim_paired


def _register_auto_classes() -> None:
    """Register ``jmlr_retriever`` with AutoConfig/AutoModel (idempotent)."""
    try:
        AutoConfig.register(JMLRRetrieverConfig.model_type, JMLRRetrieverConfig)
    except ValueError:  # already registered
        pass
    try:
        AutoModel.register(JMLRRetrieverConfig, JMLRRetriever)
    except ValueError:
        pass


_register_auto_classes()

__all__ = [
    "DocumentIndex",
    "EncodedBatch",
    "JMLRRetriever",
    "JMLRRetrieverConfig",
    "JMLRRetrieverOutput",
    "SearchHit",
    "StaleIndexError",
    "maxsim",
    "maxsim_paired",
]
