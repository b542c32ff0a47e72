"""Shifted Sparse Attention (S2-Attn, LongLoRA) as a ``transformers`` attention implementation.

``import jmlr_hf`` calls :func:`register_s2_attn`, after which any model that dispatches through
``transformers.AttentionInterface`` (Llama, Mistral, Qwen2, SmolLM2, ...) accepts
``attn_implementation="s2_attn"``::

    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="s2_attn")
    model.set_attn_implementation("s2_attn")  # or on an existing model
    configure_s2_attn(model, group_size_ratio=0.25)  # optional: validates and sets the group size

Semantics
---------
When the attention module is in training mode, no KV cache is attended (``q_len == kv_len``) and the
sequence is longer than the group size ``G``, the sequence is cut into groups of ``G`` tokens with
causal attention inside each group. The second half of the heads (``num_heads // 2`` onwards, as in
LongLoRA) uses groups shifted by ``G / 2``, in the segment form: its group boundaries sit at
``G/2 + k*G``, so its first group holds the first ``G/2`` tokens and nothing wraps around; no position
ever sees a later one. Lengths that are not a multiple of ``G`` give a shorter last group. The padding
(or any other) mask that ``transformers`` builds is applied inside each group, so padded keys are never
attended; a query with no key left to attend outputs zeros.

In every other case (eval mode, decoding with a cache, short sequences) the call is forwarded to
``transformers``' own SDPA attention with the mask built exactly as for ``"sdpa"``, so the output is
bit-for-bit that of ``attn_implementation="sdpa"``.

Configuration (attributes read from the model config, ``module.config``)
-----------------------------------------------------------------------
``s2_group_size_ratio`` (float in (0, 1], default 0.25)
    ``G = int(s2_group_size_ratio * q_len)``, rounded up to an even number. A sequence with ``G < 2`` or
    ``q_len <= G`` (e.g. a ratio of 1) runs plain causal SDPA.
``s2_group_size`` (even int >= 2, optional)
    A fixed group size that overrides the ratio.

Set them with :func:`configure_s2_attn` (which validates them) or directly on ``model.config``; they are
saved in ``config.json`` by ``save_pretrained``, and once there ``from_pretrained(...,
s2_group_size_ratio=0.125)`` overrides them.

Kernels
-------
On CUDA with ``flash_attn`` installed (fp16/bf16, head dim <= 256, no mask or a causal padding mask) the
groups are packed as sequences for ``flash_attn_varlen_func``. Otherwise every run of groups of equal
length goes through one batched ``torch.nn.functional.scaled_dot_product_attention`` call with
``is_causal=True`` (or the mask's diagonal blocks when there is padding): a constant number of kernel
calls, never a Python loop over the groups.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_GROUP_SIZE_RATIO",
    "S2_ATTN_NAME",
    "configure_s2_attn",
    "register_s2_attn",
    "resolve_group_size",
    "s2_attention_forward",
]

S2_ATTN_NAME = "s2_attn"
"""The ``attn_implementation`` name under which S2-Attn is registered."""

DEFAULT_GROUP_SIZE_RATIO = 0.25
"""LongLoRA's default: groups of a quarter of the sequence."""

_HALF_PRECISION = (torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------


def _check_group_size(group_size: Any) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2 or group_size % 2:
        raise ValueError(
            f"S2-Attn `s2_group_size` must be an even integer >= 2 (its half is the shift), got {group_size!r}."
        )
    return group_size


def _check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) <= 1.0:
        raise ValueError(f"S2-Attn `s2_group_size_ratio` must be a number in (0, 1], got {ratio!r}.")
    return float(ratio)


def resolve_group_size(config: Any, q_len: int) -> int | None:
    """Return the S2-Attn group size for a sequence of ``q_len`` tokens, or ``None`` if it is too short.

    Args:
        config: The model config (or any object); ``s2_group_size`` and ``s2_group_size_ratio`` are read
            from it when present.
        q_len: The query length.

    Returns:
        The even group size ``G``, or ``None`` when the ratio gives fewer than 2 tokens.

    Raises:
        ValueError: If ``s2_group_size`` is not an even integer >= 2 or ``s2_group_size_ratio`` is
            outside (0, 1].
    """
    explicit = getattr(config, "s2_group_size", None)
    if explicit is not None:
        return _check_group_size(explicit)
    ratio = getattr(config, "s2_group_size_ratio", None)
    ratio = DEFAULT_GROUP_SIZE_RATIO if ratio is None else _check_ratio(ratio)
    group_size = int(ratio * q_len)
    group_size += group_size % 2
    return group_size if group_size >= 2 else None


def configure_s2_attn(
    model: torch.nn.Module,
    group_size_ratio: float | None = DEFAULT_GROUP_SIZE_RATIO,
    group_size: int | None = None,
    set_implementation: bool = True,
) -> torch.nn.Module:
    """Validate ``model`` for S2-Attn, store the group size in its config and switch it to ``"s2_attn"``.

    Args:
        model: A ``transformers.PreTrainedModel`` (a PEFT model is unwrapped through ``get_base_model``).
        group_size_ratio: Group size as a fraction of the sequence length, in (0, 1].
        group_size: A fixed even group size; overrides ``group_size_ratio`` when given.
        set_implementation: Also call ``model.set_attn_implementation("s2_attn")``.

    Returns:
        The same ``model``.

    Raises:
        ValueError: For an invalid group size or ratio, or a model S2-Attn cannot serve (no config, not a
            causal decoder, an encoder-decoder, or a model that does not dispatch through
            ``AttentionInterface``).
    """
    register_s2_attn()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None:
        raise ValueError(f"S2-Attn needs a transformers model with a config, got {type(model).__name__}.")
    name = type(base).__name__
    causal_flags = {m.is_causal for m in base.modules() if isinstance(getattr(m, "is_causal", None), bool)}
    if (
        getattr(config, "is_encoder_decoder", False)
        or not getattr(config, "is_causal", True)
        or causal_flags != {True}
    ):
        raise ValueError(
            f"S2-Attn only supports causal decoder-only models (every attention module with is_causal=True); "
            f"{name} is not one."
        )
    can_set = getattr(base, "_can_set_attn_implementation", None)
    if set_implementation and (not callable(can_set) or not can_set()):
        raise ValueError(
            f"{name} does not dispatch its attention through transformers' AttentionInterface, "
            "so attn_implementation='s2_attn' would have no effect."
        )
    if group_size is not None:
        config.s2_group_size = _check_group_size(group_size)
    else:
        config.s2_group_size = None
        config.s2_group_size_ratio = _check_ratio(
            DEFAULT_GROUP_SIZE_RATIO if group_size_ratio is None else group_size_ratio
        )
    if set_implementation:
        base.set_attn_implementation(S2_ATTN_NAME)
    return model


# ---------------------------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------------------------


def register_s2_attn() -> None:
    """Register ``"s2_attn"`` in ``AttentionInterface`` and its mask function in ``AttentionMaskInterface``.

    The mask function is ``transformers``' own ``sdpa_mask``: without an entry there, ``transformers``
    would build no mask at all for ``"s2_attn"`` and silently drop padding. Calling this again is a no-op.
    """
    AttentionInterface.register(S2_ATTN_NAME, s2_attention_forward)
    AttentionMaskInterface.register(S2_ATTN_NAME, sdpa_mask)


# ---------------------------------------------------------------------------------------------------------------
# Layout helpers
# ---------------------------------------------------------------------------------------------------------------


def _head_runs(h0: int, h1: int, n_rep: int) -> list[tuple[int, int, int, int]]:
    """Split query heads ``[h0, h1)`` into runs ``(qa, qb, ka, kb)`` whose key/value heads are a slice.

    Query head ``i`` reads key/value head ``i // n_rep``. A run either covers whole key/value heads
    (``qb - qa == n_rep * (kb - ka)``) or part of a single one, so no key/value copy is ever needed.
    """
    runs = []
    start = h0
    while start < h1:
        kv = start // n_rep
        whole = ((h1 - start) // n_rep) * n_rep if start % n_rep == 0 else 0
        stop = start + whole if whole else min(h1, (kv + 1) * n_rep)
        runs.append((start, stop, kv, (stop - 1) // n_rep + 1))
        start = stop
    return runs


def _segments(q_len: int, group_size: int, offset: int) -> list[tuple[int, int, int]]:
    """Cut ``[0, q_len)`` into runs ``(start, num_groups, group_len)`` of equal groups.

    ``offset`` is the shift: the first group is ``[0, offset)``, then groups of ``group_size`` start at
    ``offset``, and the last one holds what is left.
    """
    segments = []
    if offset:
        segments.append((0, 1, offset))
    full = (q_len - offset) // group_size
    if full:
        segments.append((offset, full, group_size))
    tail = offset + full * group_size
    if tail < q_len:
        segments.append((tail, 1, q_len - tail))
    return segments


def _head_halves(num_heads: int, group_size: int) -> list[tuple[int, int, int]]:
    """Return ``(h0, h1, shift)``: unshifted heads first, then the shifted second half."""
    half = num_heads // 2
    return [
        (h0, h1, shift) for h0, h1, shift in ((0, half, 0), (half, num_heads, group_size // 2)) if h1 > h0
    ]


def _to_groups(x: torch.Tensor, num_groups: int, group_len: int) -> torch.Tensor:
    """(b, h, num_groups * group_len, d) -> (b * num_groups, h, group_len, d); a view whenever possible."""
    return x.unflatten(2, (num_groups, group_len)).transpose(1, 2).flatten(0, 1)


def _diagonal_blocks(
    mask: torch.Tensor, qa: int, qb: int, start: int, num_groups: int, group_len: int, batch: int
) -> torch.Tensor:
    """The diagonal ``group_len`` blocks of a 4D mask, as a (batch * num_groups, heads, L, L) SDPA mask."""
    if mask.shape[1] > 1:
        mask = mask[:, qa:qb]
    stop = start + num_groups * group_len
    mask = mask[:, :, start:stop, start:stop]
    mask = mask.unflatten(3, (num_groups, group_len)).unflatten(2, (num_groups, group_len))
    # (mb, mh, n, L, n, L) -> (mb, mh, L, L, n) -> (mb, n, mh, L, L)
    mask = mask.diagonal(dim1=2, dim2=4).permute(0, 4, 1, 2, 3)
    mask = mask.expand(batch, *mask.shape[1:])
    return mask.flatten(0, 1)


# ---------------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------------


def _grouped_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    group_size: int,
    n_rep: int,
    dropout: float,
    scaling: float | None,
) -> torch.Tensor:
    """S2-Attn with batched SDPA calls. Inputs (b, heads, N, d); returns (b, N, heads, d_v).

    The inputs are cut with ``split`` (views, whose backward is a single ``cat``) rather than one slice per
    call, whose backward would materialise a zero-filled full-size gradient for every call.
    """
    batch, num_heads, q_len, _ = query.shape
    runs = [
        (run, shift)
        for h0, h1, shift in _head_halves(num_heads, group_size)
        for run in _head_runs(h0, h1, n_rep)
    ]
    q_runs = query.split([qb - qa for (qa, qb, _, _), _ in runs], dim=1)
    bounds = sorted({bound for (_, _, ka, kb), _ in runs for bound in (ka, kb)})
    sizes = [stop - start for start, stop in zip(bounds[:-1], bounds[1:])]
    k_parts = dict(zip(zip(bounds[:-1], bounds[1:]), key.split(sizes, dim=1)))
    v_parts = dict(zip(zip(bounds[:-1], bounds[1:]), value.split(sizes, dim=1)))

    head_outputs = []
    for ((qa, qb, ka, kb), shift), q_run in zip(runs, q_runs):
        segments = _segments(q_len, group_size, shift)
        lengths = [num_groups * group_len for _, num_groups, group_len in segments]
        pieces = zip(
            segments,
            q_run.split(lengths, dim=2),
            k_parts[ka, kb].split(lengths, dim=2),
            v_parts[ka, kb].split(lengths, dim=2),
        )
        seq_outputs = []
        for (start, num_groups, group_len), q, k, v in pieces:
            q = _to_groups(q, num_groups, group_len)
            k = _to_groups(k, num_groups, group_len)
            v = _to_groups(v, num_groups, group_len)
            block_mask = None
            if mask is not None:
                block_mask = _diagonal_blocks(mask, qa, qb, start, num_groups, group_len, batch)
            gqa = {}
            if qb - qa != kb - ka:
                if block_mask is None:
                    gqa["enable_gqa"] = True
                else:  # masked GQA can fall back to the math kernel on CUDA: expand instead
                    rep = (qb - qa) // (kb - ka)
                    k = k.repeat_interleave(rep, dim=1)
                    v = v.repeat_interleave(rep, dim=1)
            o = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=block_mask,
                dropout_p=dropout,
                is_causal=block_mask is None,
                scale=scaling,
                **gqa,
            )
            # (b * n, h, L, d) -> (b, n * L, h, d); a view for the kernels that store the output as (b, L, h, d)
            seq_outputs.append(o.transpose(1, 2).reshape(batch, num_groups * group_len, qb - qa, o.shape[-1]))
        head_outputs.append(torch.cat(seq_outputs, dim=1))
    return torch.cat(head_outputs, dim=2)


_FLASH_VARLEN: Any = False  # False: not looked up yet; None: flash_attn unavailable


def _flash_varlen_func() -> Callable[..., torch.Tensor] | None:
    """``flash_attn.flash_attn_varlen_func`` if flash-attn imports, else None (looked up once)."""
    global _FLASH_VARLEN
    if _FLASH_VARLEN is False:
        try:
            from flash_attn import flash_attn_varlen_func
        except Exception:  # ImportError, or a build that does not match the installed torch/CUDA
            flash_attn_varlen_func = None
        _FLASH_VARLEN = flash_attn_varlen_func
    return _FLASH_VARLEN


def _key_padding(mask: torch.Tensor | None) -> tuple[bool, torch.Tensor | None]:
    """Reduce a causal padding mask to per-key validity ``(b, N)``.

    Returns ``(ok, key_valid)``; ``ok`` is False when the mask is more than causal + padding (packed
    sequences, sliding windows, per-head or float masks), which the varlen kernel cannot express.
    """
    if mask is None:
        return True, None
    if mask.dtype != torch.bool or mask.shape[1] != 1:
        return False, None
    last_row = mask[:, 0, -1, :]
    # In a causal padding mask, query i sees key i exactly when key i is valid, and the last query sees
    # every valid key: packed or windowed masks break this.
    if not torch.equal(last_row, mask[:, 0].diagonal(dim1=-2, dim2=-1)):
        return False, None
    return True, (None if bool(last_row.all()) else last_row)


def _grouped_varlen(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_valid: torch.Tensor | None,
    group_size: int,
    n_rep: int,
    dropout: float,
    scaling: float | None,
    varlen_func: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """S2-Attn through a flash-attn style varlen kernel, each group (minus padding) one sequence.

    Inputs (b, heads, N, d) and ``key_valid`` (b, N) or None; returns (b, N, heads, d_v) with zeros on
    padded positions. ``varlen_func`` has ``flash_attn_varlen_func``'s signature.
    """
    batch, num_heads, q_len, _ = query.shape
    device = query.device
    q = query.transpose(1, 2).reshape(batch * q_len, num_heads, -1)
    k = key.transpose(1, 2).reshape(batch * q_len, key.shape[1], -1)
    v = value.transpose(1, 2).reshape(batch * q_len, value.shape[1], -1)
    positions = torch.arange(q_len, device=device).repeat(batch)
    rows = torch.arange(batch, device=device).repeat_interleave(q_len)
    keep = None
    if key_valid is not None:
        keep = key_valid.reshape(-1).nonzero().squeeze(1)
        q, k, v = q.index_select(0, keep), k.index_select(0, keep), v.index_select(0, keep)
        positions, rows = positions.index_select(0, keep), rows.index_select(0, keep)
        if keep.numel() == 0:  # nothing to attend anywhere
            return query.new_zeros(batch, q_len, num_heads, value.shape[-1])
    groups_per_row = q_len // group_size + 2
    outputs = []
    for h0, h1, shift in _head_halves(num_heads, group_size):
        group_ids = rows * groups_per_row + (positions + shift) // group_size
        counts = torch.unique_consecutive(group_ids, return_counts=True)[1]
        cu_seqlens = F.pad(counts.cumsum(0), (1, 0)).to(torch.int32)
        max_len = int(counts.max())
        for qa, qb, ka, kb in _head_runs(h0, h1, n_rep):
            outputs.append(
                varlen_func(
                    q[:, qa:qb],
                    k[:, ka:kb],
                    v[:, ka:kb],
                    cu_seqlens,
                    cu_seqlens,
                    max_len,
                    max_len,
                    dropout_p=dropout,
                    softmax_scale=scaling,
                    causal=True,
                )
            )
    out = torch.cat(outputs, dim=1)
    if keep is not None:
        out = out.new_zeros(batch * q_len, *out.shape[1:]).index_copy(0, keep, out)
    return out.view(batch, q_len, num_heads, -1)


# ---------------------------------------------------------------------------------------------------------------
# The attention function
# ---------------------------------------------------------------------------------------------------------------


def _check_s2_call(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, kwargs: dict) -> int:
    """Validate a training-mode S2 call; return the number of query heads per key/value head."""
    name = type(module).__name__
    if not kwargs.get("is_causal", getattr(module, "is_causal", True)):
        raise ValueError(f"S2-Attn needs causal self-attention, but {name} is not causal.")
    for unsupported in ("softcap", "position_bias", "sinks", "s_aux"):
        if kwargs.get(unsupported) is not None:
            raise ValueError(f"S2-Attn does not support `{unsupported}` (used by {name}).")
    num_heads, num_kv_heads = query.shape[1], key.shape[1]
    n_rep = getattr(module, "num_key_value_groups", num_heads // max(num_kv_heads, 1))
    if num_kv_heads * n_rep != num_heads:
        raise ValueError(
            f"S2-Attn: {name} has {num_heads} query heads and {num_kv_heads} key/value heads, "
            f"which does not match num_key_value_groups={n_rep}."
        )
    return n_rep


def s2_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Shifted Sparse Attention with ``transformers``' attention-function signature.

    Args:
        module: The calling attention module (its ``training`` flag, ``config`` and
            ``num_key_value_groups`` are read).
        query: ``(batch, heads, q_len, head_dim)``.
        key: ``(batch, kv_heads, kv_len, head_dim)``.
        value: ``(batch, kv_heads, kv_len, head_dim)``.
        attention_mask: The 4D mask built by the registered mask function (``sdpa_mask``), or None.
        dropout: Attention dropout probability.
        scaling: Softmax scale (default ``head_dim ** -0.5``).
        **kwargs: Passed on to SDPA outside the S2 path.

    Returns:
        ``(attn_output, None)`` with ``attn_output`` of shape ``(batch, q_len, heads, head_dim)``.
    """
    q_len, kv_len = query.shape[2], key.shape[2]
    group_size = resolve_group_size(getattr(module, "config", None), q_len)
    if not (module.training and q_len == kv_len and group_size is not None and q_len > group_size):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )

    n_rep = _check_s2_call(module, query, key, kwargs)
    if attention_mask is not None and tuple(attention_mask.shape[-2:]) != (q_len, kv_len):
        raise ValueError(
            f"S2-Attn expects a (batch, 1, {q_len}, {kv_len}) mask, got {tuple(attention_mask.shape)}."
        )

    varlen_func = _flash_varlen_func() if query.is_cuda else None
    if varlen_func is not None and query.dtype in _HALF_PRECISION and query.shape[-1] <= 256:
        ok, key_valid = _key_padding(attention_mask)
        if ok:
            out = _grouped_varlen(
                query, key, value, key_valid, group_size, n_rep, dropout, scaling, varlen_func
            )
            return out, None
        logger.debug("S2-Attn: mask is not a causal padding mask; using the SDPA path instead of flash-attn.")
    return _grouped_sdpa(query, key, value, attention_mask, group_size, n_rep, dropout, scaling), None
