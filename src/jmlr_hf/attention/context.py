"""LongLoRA-style context extension: linear RoPE scaling, plus trainable embeddings and norms beside LoRA.

LongLoRA extends a model from ``L`` to ``L'`` tokens by position interpolation (linear RoPE scaling with
``factor = ceil(L' / L)``), fine-tunes with S2-Attn and LoRA, and also trains the embeddings and the
normalization layers (its ``trainable_params="embed,norm"``), which it found necessary for long contexts::

    import jmlr_hf
    from jmlr_hf.attention.context import embedding_and_norm_module_names, extend_context

    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="s2_attn")
    extend_context(model, 8192)  # linear RoPE scaling through config.rope_parameters
    lora = LoraConfig(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      modules_to_save=embedding_and_norm_module_names(model))  # trained and saved
    model = get_peft_model(model, lora)

or, on an existing PEFT model, ``mark_embeddings_and_norms_trainable(peft_model)``.

With ``transformers`` 5.x the RoPE settings live in ``config.rope_parameters``, e.g.
``{"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}``; the rotary embedding modules of an
already built model are recomputed in place.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

logger = logging.getLogger(__name__)

__all__ = [
    "EMBED_NORM_PATTERNS",
    "apply_linear_rope_scaling",
    "embedding_and_norm_module_names",
    "extend_context",
    "mark_embeddings_and_norms_trainable",
]

EMBED_NORM_PATTERNS: tuple[str, ...] = ("embed", "norm")
"""Parameter-name fragments LongLoRA trains beside LoRA (``--trainable_params embed,norm``)."""


def _base_model(model: Any) -> Any:
    """Unwrap a PEFT model; leave anything else unchanged."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _config_of(model_or_config: Any) -> Any:
    config = getattr(_base_model(model_or_config), "config", model_or_config)
    if not hasattr(config, "rope_parameters"):
        raise ValueError(
            f"{type(model_or_config).__name__} has no `rope_parameters`: linear RoPE scaling needs a "
            "transformers 5.x config of a rotary-embedding model."
        )
    return config


def _rotary_embeddings(model: torch.nn.Module, config: Any) -> list[torch.nn.Module]:
    """The rotary-embedding modules (with an ``inv_freq`` buffer) built from ``config``."""
    return [
        module
        for module in model.modules()
        if getattr(module, "config", None) is config
        and isinstance(getattr(module, "inv_freq", None), torch.Tensor)
    ]


def _refresh_rotary_embeddings(modules: list[torch.nn.Module], config: Any) -> None:
    """Recompute ``inv_freq`` of rotary-embedding modules from the (now linear) ``config``."""
    for module in modules:
        inv_freq, attention_scaling = ROPE_INIT_FUNCTIONS["linear"](config, module.inv_freq.device)
        with torch.no_grad():
            module.inv_freq.copy_(inv_freq)
            if isinstance(getattr(module, "original_inv_freq", None), torch.Tensor):
                module.original_inv_freq.copy_(inv_freq)
        module.rope_type = "linear"
        module.attention_scaling = attention_scaling


def apply_linear_rope_scaling(model_or_config: Any, factor: float) -> float:
    """Scale the RoPE positions of a model (or config) linearly by ``factor`` (position interpolation).

    A ``"default"`` RoPE becomes ``{"rope_type": "linear", "factor": factor, ...}``; an existing
    ``"linear"`` one has its factor multiplied. The rotary-embedding modules of a built model are updated
    in place. ``max_position_embeddings`` is left unchanged (see :func:`extend_context`).

    Args:
        model_or_config: A ``PreTrainedModel`` (or PEFT model wrapping one), or its config.
        factor: The scaling factor, >= 1.

    Returns:
        The resulting total linear factor.

    Raises:
        ValueError: If ``factor`` is not a finite number >= 1, the config has no (flat) ``rope_parameters``,
            its RoPE type is neither ``"default"`` nor ``"linear"``, or a model has no rotary-embedding
            module built from its config.
    """
    if (
        isinstance(factor, bool)
        or not isinstance(factor, (int, float))
        or not math.isfinite(factor)
        or factor < 1
    ):
        raise ValueError(f"The RoPE scaling factor must be a finite number >= 1, got {factor!r}.")
    config = _config_of(model_or_config)
    rope = config.rope_parameters
    if not isinstance(rope, dict) or not rope or any(isinstance(value, dict) for value in rope.values()):
        raise ValueError(
            f"Linear RoPE scaling needs one flat `rope_parameters` dict, got {rope!r} "
            "(per-layer-type RoPE is not supported)."
        )
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "default":
        total = float(factor)
    elif rope_type == "linear":
        total = float(rope["factor"]) * float(factor)
    else:
        raise ValueError(
            f"The model already uses RoPE type {rope_type!r}; LongLoRA's linear scaling can only extend "
            "'default' or 'linear' RoPE."
        )
    model = _base_model(model_or_config)
    rotary = []
    if isinstance(model, torch.nn.Module):
        rotary = _rotary_embeddings(model, config)
        if not rotary:
            raise ValueError(
                f"{type(model).__name__} has no rotary-embedding module (with `inv_freq`) built from its config; "
                "cannot apply linear RoPE scaling to it."
            )
    new_rope = {key: value for key, value in rope.items() if key != "type"}
    new_rope.update(rope_type="linear", factor=total)
    config.rope_parameters = new_rope
    if hasattr(config, "validate_rope"):
        config.validate_rope()
    _refresh_rotary_embeddings(rotary, config)
    logger.info("Linear RoPE scaling: factor %s.", total)
    return total


def extend_context(
    model: Any,
    target_length: int,
    *,
    train_embeddings_and_norms: bool = False,
    original_length: int | None = None,
) -> float:
    """Extend a model's context to ``target_length`` tokens the LongLoRA way.

    ``factor = ceil(target_length / original_length)``; RoPE is scaled linearly by it and
    ``max_position_embeddings`` becomes ``original_length * factor``. Nothing changes when the target
    fits in the original context.

    Args:
        model: A ``PreTrainedModel`` or a PEFT model wrapping one.
        target_length: The context length to train and run at.
        train_embeddings_and_norms: Also set ``requires_grad=True`` on the embeddings and norms (for a
            PEFT model, where everything else is frozen); see :func:`mark_embeddings_and_norms_trainable`.
        original_length: The pre-trained context; defaults to ``config.max_position_embeddings``.

    Returns:
        The linear factor applied (1.0 when no scaling was needed).

    Raises:
        ValueError: If ``target_length`` or ``original_length`` is not a positive integer, or the model's
            RoPE cannot be scaled (see :func:`apply_linear_rope_scaling`).
    """
    config = _config_of(model)
    original = config.max_position_embeddings if original_length is None else original_length
    for name, value in (("target_length", target_length), ("original_length", original)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    factor = 1.0
    if target_length > original:
        factor = float(math.ceil(target_length / original))
        apply_linear_rope_scaling(model, factor)
        config.max_position_embeddings = int(original * factor)
        logger.info("Extended the context from %d to %d tokens.", original, config.max_position_embeddings)
    if train_embeddings_and_norms:
        mark_embeddings_and_norms_trainable(model)
    return factor


def mark_embeddings_and_norms_trainable(
    model: torch.nn.Module, patterns: tuple[str, ...] = EMBED_NORM_PATTERNS
) -> list[str]:
    """Set ``requires_grad=True`` on every parameter whose name contains one of ``patterns``.

    This is LongLoRA's ``trainable_params="embed,norm"`` for a model whose other weights are frozen by
    PEFT. PEFT's ``save_pretrained`` only saves adapter weights and ``modules_to_save``: to keep these
    parameters, list :func:`embedding_and_norm_module_names` in ``LoraConfig(modules_to_save=...)``
    instead, or save them yourself.

    Args:
        model: Any module, typically a ``peft.PeftModel``.
        patterns: Name fragments to match.

    Returns:
        The names of the parameters made trainable.

    Raises:
        ValueError: If no parameter name matches.
    """
    names = []
    for name, param in model.named_parameters():
        if any(pattern in name for pattern in patterns):
            param.requires_grad_(True)
            names.append(name)
    if not names:
        raise ValueError(f"No parameter of {type(model).__name__} matches {patterns!r}.")
    return names


def embedding_and_norm_module_names(model: torch.nn.Module) -> list[str]:
    """Names (last path component) of the embedding and normalization modules, for ``modules_to_save``.

    Args:
        model: A ``PreTrainedModel``.

    Returns:
        Sorted unique names such as ``["embed_tokens", "input_layernorm", "norm", ...]``.

    Raises:
        ValueError: If the model has neither embeddings nor norm layers.
    """
    names = set()
    for path, module in _base_model(model).named_modules():
        kind = type(module).__name__.lower()
        if path and (isinstance(module, torch.nn.Embedding) or "norm" in kind):
            names.add(path.rsplit(".", 1)[-1])
    if not names:
        raise ValueError(f"{type(model).__name__} has no embedding or normalization modules.")
    return sorted(names)
