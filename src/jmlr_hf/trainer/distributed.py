"""Keeping the retriever replicated across processes (DDP, FSDP, DeepSpeed).

``Trainer`` hands ``trainer.model`` (the LLM) to Accelerate, which wraps it in DDP / FSDP / DeepSpeed.
The retriever is a separate, small module (a BERT encoder and a linear head) that it never sees, so
:class:`~jmlr_hf.JMLRTrainer` keeps it *replicated* on every process by hand:

- at start, every replica gets the main process's weights (:func:`broadcast_module_`);
- at every optimizer step, the retriever gradients are averaged across processes
  (:func:`average_gradients_`) exactly as DDP averages the LLM's: summed, then divided by the number
  of processes, once per optimizer step (after the last micro-batch of gradient accumulation);
- with identical weights, identical gradients and identical optimizer states, the replicas stay
  bit-identical, so every process can re-encode the index on its own and get the same vectors.

All functions are no-ops in a single process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Gradients are all-reduced in flat buckets of about this many bytes (one copy of the bucket at a time).
_BUCKET_BYTES = 64 * 1024 * 1024


def world_size() -> int:
    """Number of processes of the default ``torch.distributed`` group (1 when not initialised)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def broadcast_module_(module: nn.Module, src: int = 0) -> bool:
    """Overwrite ``module``'s parameters and buffers with those of process ``src`` (in place).

    Every process must call it. Returns True on the processes whose tensors changed.
    """
    if world_size() == 1:
        return False
    changed = False
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            data = tensor.data
            buffer = data if data.is_contiguous() else data.contiguous()  # collectives need contiguous memory
            before = buffer.clone()
            torch.distributed.broadcast(buffer, src=src)
            if buffer is not data:
                tensor.data = buffer
            changed = changed or not torch.equal(before, buffer)
    return changed


def any_process(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every process when ``flag`` is True on at least one (a collective call)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item() > 0)


def average_gradients_(params: Iterable[nn.Parameter], bucket_bytes: int | None = None) -> None:
    """Average the gradients of ``params`` across processes, in place, as DDP does.

    A parameter that has a gradient on some processes only gets zeros on the others (DDP's
    ``find_unused_parameters`` semantics); one that has none anywhere keeps ``grad = None``, so the
    optimizer leaves it alone as it would in a single process. Every process must call it with the
    same parameters in the same order. Gradients travel in flat buckets of ``bucket_bytes`` (64 MiB).
    """
    n = world_size()
    if n == 1:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    device = params[0].device
    has_grad = torch.tensor([float(p.grad is not None) for p in params], device=device)
    torch.distributed.all_reduce(has_grad, op=torch.distributed.ReduceOp.MAX)
    reduced = []
    for p, flag in zip(params, has_grad.tolist()):
        if flag > 0:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            reduced.append(p.grad)
    for bucket in _buckets(reduced, bucket_bytes or _BUCKET_BYTES):
        flat = torch._utils._flatten_dense_tensors(bucket)
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        flat.div_(n)
        for grad, synced in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
            grad.copy_(synced)


def _buckets(tensors: list[torch.Tensor], bucket_bytes: int) -> list[list[torch.Tensor]]:
    """Consecutive groups of tensors of one dtype and device, each about ``bucket_bytes`` at most."""
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        last = buckets[-1] if buckets else None
        if (
            last is None
            or size + nbytes > bucket_bytes
            or (t.dtype, t.device) != (last[0].dtype, last[0].device)
        ):
            buckets.append([t])
            size = nbytes
        else:
            last.append(t)
            size += nbytes
    return buckets
