"""Benchmark S2-Attn against SDPA full causal attention (forward + backward, time and peak memory).

Two workloads at SmolLM2-135M's shapes (9 query heads, 3 key/value heads, head dim 64, hidden 576,
MLP 1536), batch 1, fp32, training mode:

- ``attention``: one attention-function call, ``s2_attention_forward`` against ``transformers``'
  ``sdpa_attention_forward`` (what ``attn_implementation="sdpa"`` runs: causal, no mask), and against the
  bound for ``G = N / 4``: the same tokens as 4 independent causal sequences of ``N / 4`` through SDPA.
- ``layer``: one ``LlamaDecoderLayer`` (norms, projections, RoPE, attention, MLP), ``s2_attn`` against ``sdpa``.

Time: the minimum over ``--repeats`` runs of forward + ``backward()``, after one warm-up run at the
smallest length. Peak memory: a separate run under ``torch.profiler`` with ``profile_memory=True``,
replaying its allocation timeline (tensors created and destroyed by the CPU allocator) and taking the
highest total above what was allocated before the call; the inputs themselves are not counted, their
gradients are.

Usage::

    python bench/s2_attn.py                      # 2k, 4k, 8k, 16k tokens
    python bench/s2_attn.py --lengths 1024 2048 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone

import torch
from torch.profiler import ProfilerActivity, profile
from torch.profiler._memory_profiler import Action
from transformers import LlamaConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

import jmlr_hf  # noqa: F401  (registers "s2_attn")
from jmlr_hf.attention import s2_attention_forward

HEADS, KV_HEADS, HEAD_DIM, HIDDEN, MLP = 9, 3, 64, 576, 1536
GROUP_SIZE_RATIO = 0.25


def smollm2_config(attn_implementation: str) -> LlamaConfig:
    """SmolLM2-135M's layer shapes (one layer, tiny vocabulary)."""
    config = LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=MLP,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        num_hidden_layers=1,
        vocab_size=128,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        max_position_embeddings=16384,
        attn_implementation=attn_implementation,
    )
    config.s2_group_size_ratio = GROUP_SIZE_RATIO
    return config


class _AttentionModule(torch.nn.Module):
    """What an attention function reads from its calling module."""

    def __init__(self) -> None:
        super().__init__()
        self.config = smollm2_config("s2_attn")
        self.num_key_value_groups = HEADS // KV_HEADS
        self.is_causal = True


def _qkv(batch: int, seq: int) -> list[torch.Tensor]:
    """q, k, v as Llama passes them: (b, heads, N, d) transposed views of (b, N, heads, d)."""
    return [
        torch.randn(batch, seq, heads, HEAD_DIM).transpose(1, 2).requires_grad_()
        for heads in (HEADS, KV_HEADS, KV_HEADS)
    ]


def attention_cases(seq: int) -> dict[str, tuple[Callable[[], None], list[torch.Tensor]]]:
    module = _AttentionModule().train()
    full = _qkv(1, seq)
    groups = _qkv(4, seq // 4)

    def s2() -> None:
        s2_attention_forward(module, *full, None)[0].sum().backward()

    def sdpa() -> None:
        sdpa_attention_forward(module, *full, None)[0].sum().backward()

    def bound() -> None:
        sdpa_attention_forward(module, *groups, None)[0].sum().backward()

    return {"s2": (s2, full), "sdpa": (sdpa, full), "bound": (bound, groups)}


def layer_cases(seq: int) -> dict[str, tuple[Callable[[], None], list[torch.Tensor]]]:
    torch.manual_seed(0)
    config = smollm2_config("sdpa")
    layer = LlamaDecoderLayer(config, layer_idx=0).train()
    hidden = torch.randn(1, seq, HIDDEN, requires_grad=True)
    position_ids = torch.arange(seq)[None]
    with torch.no_grad():
        position_embeddings = LlamaRotaryEmbedding(config)(hidden, position_ids)

    def run(implementation: str) -> Callable[[], None]:
        def call() -> None:
            config._attn_implementation = implementation
            out = layer(
                hidden,
                attention_mask=None,
                position_ids=position_ids,
                position_embeddings=position_embeddings,
            )
            out.sum().backward()

        return call

    tensors = [hidden, *layer.parameters()]
    return {"s2": (run("s2_attn"), tensors), "sdpa": (run("sdpa"), tensors)}


def _clear_grads(tensors: list[torch.Tensor]) -> None:
    for tensor in tensors:
        tensor.grad = None


def time_call(fn: Callable[[], None], tensors: list[torch.Tensor]) -> float:
    _clear_grads(tensors)
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    _clear_grads(tensors)
    return elapsed


def peak_memory(fn: Callable[[], None], tensors: list[torch.Tensor]) -> int:
    """Peak bytes allocated by the call above what existed before it (allocation timeline replay)."""
    _clear_grads(tensors)
    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        fn()
    _clear_grads(tensors)
    current = peak = 0
    for _, action, (key, _), size in prof._memory_profile().timeline:
        if key.device.type != "cpu" or action == Action.PREEXISTING:
            continue
        if action == Action.CREATE:
            current += size
        elif action == Action.DESTROY:
            current -= size
        peak = max(peak, current)
    return peak


def run(lengths: list[int], repeats: dict[int, int]) -> list[dict]:
    rows = []
    warm = min(lengths)
    for make in (attention_cases, layer_cases):
        for fn, tensors in make(warm).values():  # warm-up: kernels, thread pool
            time_call(fn, tensors)
    for seq in lengths:
        for workload, make in (("attention", attention_cases), ("layer", layer_cases)):
            cases = make(seq)
            times: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(repeats[seq]):
                for name, (fn, tensors) in cases.items():  # interleaved, so load changes hit all alike
                    times[name].append(time_call(fn, tensors))
            for name, (fn, tensors) in cases.items():
                rows.append(
                    {
                        "workload": workload,
                        "tokens": seq,
                        "method": name,
                        "seconds": min(times[name]),
                        "all_seconds": times[name],
                        "peak_bytes": peak_memory(fn, tensors),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
            del cases
    return rows


def markdown(rows: list[dict]) -> str:
    by_key = {(r["workload"], r["tokens"], r["method"]): r for r in rows}
    lines = [
        "| workload | tokens | SDPA s | S2 s | 4-group bound s | S2 speed-up vs SDPA | S2 / bound speed | "
        "SDPA peak MiB | S2 peak MiB | bound peak MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    mib = 2**20
    for workload, tokens, method in by_key:
        if method != "s2":
            continue
        s2, sdpa = by_key[workload, tokens, "s2"], by_key[workload, tokens, "sdpa"]
        bound = by_key.get((workload, tokens, "bound"))
        lines.append(
            f"| {workload} | {tokens} | {sdpa['seconds']:.3f} | {s2['seconds']:.3f} | "
            + (f"{bound['seconds']:.3f}" if bound else "-")
            + f" | {sdpa['seconds'] / s2['seconds']:.2f}x | "
            + (f"{bound['seconds'] / s2['seconds']:.2f}" if bound else "-")
            + f" | {sdpa['peak_bytes'] / mib:.0f} | {s2['peak_bytes'] / mib:.0f} | "
            + (f"{bound['peak_bytes'] / mib:.0f}" if bound else "-")
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs per length (default: 5, 3 at >= 16k)"
    )
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args()
    if any(n % 4 for n in args.lengths):
        parser.error("lengths must be multiples of 4 (the bound splits them into 4 groups)")
    repeats = {n: args.repeats or (3 if n >= 16384 else 5) for n in args.lengths}

    started, load_before = datetime.now(timezone.utc), os.getloadavg()[0]
    rows = run(args.lengths, repeats)
    header = (
        f"{started:%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), 1-min load average before/after "
        f"{load_before:.2f}/{os.getloadavg()[0]:.2f}, repeats {repeats}, G = N * {GROUP_SIZE_RATIO}"
    )
    print()
    print(header)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
