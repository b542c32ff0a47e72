"""Shifted Sparse Attention (S2-Attn) and LongLoRA-style context extension."""

from .context import (
    apply_linear_rope_scaling,
    embedding_and_norm_module_names,
    extend_context,
    mark_embeddings_and_norms_trainable,
)
from .s2_attn import (
    DEFAULT_GROUP_SIZE_RATIO,
    S2_ATTN_NAME,
    configure_s2_attn,
    register_s2_attn,
    resolve_group_size,
    s2_attention_forward,
)

__all__ = [
    "DEFAULT_GROUP_SIZE_RATIO",
    "S2_ATTN_NAME",
    "apply_linear_rope_scaling",
    "configure_s2_attn",
    "embedding_and_norm_module_names",
    "extend_context",
    "mark_embeddings_and_norms_trainable",
    "register_s2_attn",
    "resolve_group_size",
    "s2_attention_forward",
]

register_s2_attn()  # importing the package registers "s2_attn" (idempotent)
