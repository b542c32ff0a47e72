"""Full-length questions at the retriever (issue 10, part 1): coverage and search cost.

In one run on the current machine:

1. Coverage: for every MIRAGE MedQA question (1,273), whether every word-piece of the question
   reaches the retriever, with ColBERT's 32-token queries (``query_max_length=32``, what every
   question met before) and with the default (the encoder's limit, 512); question lengths.
2. Search cost at 10,000 NGC passages (faiss backend, k=30): p50/p95 latency of
   ``index.search([q], k)`` (query encoding included) with full-length and with 32-token queries,
   alternating query by query, and recall@30 of each against exact MaxSim on the same vectors.

    HF_HUB_OFFLINE=1 JMLR_SHARED_DATA=/work/shared/data python bench/query_length.py

writes the "## Full-length questions (issue 10)" section of docs/benchmarks.md (``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time

import numpy as np
import torch
from retrieval import (
    ROOT,
    bench_build,
    data_dir,
    exact_topk,
    log,
    machine_description,
    ngc_passages,
    write_section,
)

from jmlr_hf.recipe import load_retriever

SECTION = "## Full-length questions (issue 10)"


def coverage(retriever, questions: list[str]) -> dict:
    """Share of questions whose every word-piece reaches the retriever, at its current settings."""
    tok = retriever.tokenizer
    full = [len(ids) for ids in tok(questions)["input_ids"]]  # [CLS] ... [SEP]
    reached = [len(ids) - 1 for ids in retriever._token_ids(questions, is_query=True)]  # minus [Q]
    whole = [r == f for r, f in zip(reached, full)]
    fits = [f + 1 <= retriever.config.encoder_config.max_position_embeddings for f in full]
    return {
        "whole": float(np.mean(whole)),
        "whole_of_fitting": float(np.mean([w for w, f in zip(whole, fits) if f])),
        "fitting": int(sum(fits)),
    }


def _apply(index, setting: tuple[int | None, int]) -> None:
    """``(query_max_length, min_tokens_per_query_token)`` on the index's retriever and faiss backend."""
    index.retriever.config.query_max_length, index.backend.min_tokens_per_query_token = setting


def search_latency(index, queries: list[str], settings: dict[str, tuple[int | None, int]], k: int) -> dict:
    """p50/p95 of index.search([q], k) (query encoding included) and of the query encoding alone, for
    each setting, alternating query by query."""
    lat: dict[str, list[float]] = {name: [] for name in settings}
    enc: dict[str, list[float]] = {name: [] for name in settings}
    names = list(settings)
    for name in names:  # warm-up
        _apply(index, settings[name])
        index.search(queries[:3], k=k)
    for i, q in enumerate(queries):
        for name in names if i % 2 == 0 else names[::-1]:
            _apply(index, settings[name])
            t0 = time.perf_counter()
            index.search([q], k=k)
            t1 = time.perf_counter()
            index.retriever.encode_queries([q], show_progress_bar=False)
            lat[name].append(t1 - t0)
            enc[name].append(time.perf_counter() - t1)
    return {
        name: {
            "p50_ms": 1000 * float(np.median(v)),
            "p95_ms": 1000 * float(np.percentile(v, 95)),
            "encode_p50_ms": 1000 * float(np.median(enc[name])),
        }
        for name, v in lat.items()
    }


def recall(index, queries: list[str], setting: tuple[int | None, int], k: int) -> dict:
    """recall@k of the faiss search against exact MaxSim on the same (bf16) vectors."""
    _apply(index, setting)
    q = index.retriever.encode_queries(queries)
    _, found = index.search_encoded(q, k)
    store = index.store
    ref = exact_topk(q.embeddings, q.mask, store.vectors, store.doclens, k)
    rec = [len(set(f) & set(r)) / k for f, r in zip(found.tolist(), ref)]
    return {"recall": float(np.mean(rec)), "tokens": float(q.mask.sum(1).float().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200, help="latency queries")
    parser.add_argument("--recall-queries", type=int, default=100)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    started = dt.datetime.now(dt.timezone.utc)
    retriever = load_retriever("default").eval()
    medqa = json.loads((data_dir() / "mirage" / "benchmark.json").read_text(encoding="utf-8"))["medqa"]
    questions = [medqa[qid]["question"] for qid in sorted(medqa)]
    lengths = np.array([len(ids) for ids in retriever.tokenizer(questions)["input_ids"]])
    res: dict = {"n_questions": len(questions), "median_len": float(np.median(lengths))}
    res["p95_len"], res["max_len"] = float(np.percentile(lengths, 95)), int(lengths.max())
    for name, length in (("32", 32), ("full", None)):
        retriever.config.query_max_length = length
        res[f"coverage_{name}"] = coverage(retriever, questions)
    log(f"coverage: {res['coverage_32']} (32) / {res['coverage_full']} (full)")

    passages = ngc_passages(retriever, data_dir() / "ngc" / "ngc_guidelines.jsonl", args.passages)
    index, res["build"] = bench_build(retriever, passages)
    log(f"built {index.num_passages} passages: {res['build']['total_s']:.0f}s")
    shared = index.backend.min_tokens_per_query_token
    every = index.backend.tokens_per_query_token
    settings = {"32": (32, shared), "full": (None, shared), "full_unshared": (None, every)}
    res["latency"] = search_latency(index, questions[: args.queries], settings, args.k)
    res["recall"] = {
        name: recall(index, questions[: args.recall_queries], setting, args.k)
        for name, setting in settings.items()
    }
    res["faiss"] = {"nprobe": index.backend.nprobe, "tokens_per_query_token": every, "min_tpq": shared}
    log(json.dumps(res, indent=1))
    section = render(res, args, started)
    print(section)
    if not args.no_write:
        write_section(ROOT / "docs" / "benchmarks.md", section, SECTION)


def render(res: dict, args: argparse.Namespace, started: dt.datetime) -> str:
    lat, rec, c32, cfull = res["latency"], res["recall"], res["coverage_32"], res["coverage_full"]
    ratio = lat["full"]["p50_ms"] / lat["32"]["p50_ms"]
    search_ratio = (lat["full"]["p50_ms"] - lat["full"]["encode_p50_ms"]) / (
        lat["32"]["p50_ms"] - lat["32"]["encode_p50_ms"]
    )
    f = res["faiss"]

    def row(label: str, name: str, cov: dict) -> str:
        return (
            f"| {label} | {cov['whole']:.1%} | {cov['whole_of_fitting']:.1%} | {lat[name]['p50_ms']:.1f} | "
            f"{lat[name]['p95_ms']:.1f} | {lat[name]['encode_p50_ms']:.1f} | {rec[name]['recall']:.3f} | "
            f"{rec[name]['tokens']:.0f} |"
        )

    return "\n".join(
        [
            SECTION,
            "",
            f"Machine: {machine_description()}. Date: {started:%Y-%m-%d %H:%M} UTC. Command: "
            "`HF_HUB_OFFLINE=1 JMLR_SHARED_DATA=../shared/data python bench/query_length.py`.",
            "",
            f"MIRAGE MedQA questions: {res['n_questions']}; retriever word-pieces per question (with [CLS]/[SEP]) "
            f"median {res['median_len']:.0f}, p95 {res['p95_len']:.0f}, max {res['max_len']}.",
            "",
            "| queries | questions whose every word-piece reaches the retriever | of those under 512 | "
            f"search p50 (ms) | p95 (ms) | query encoding alone, p50 (ms) | recall@{args.k} vs exact | "
            "query vectors (mean) |",
            "|---|---|---|---|---|---|---|---|",
            row("32 tokens (ColBERT's `query_maxlen`: what every question met before)", "32", c32),
            row(f"full length, {f['tokens_per_query_token']} hits for every token", "full_unshared", cfull),
            row(
                f"full length, a 32-token query's hits shared, at least {f['min_tpq']} a token (default)",
                "full",
                cfull,
            ),
            "",
            f"Full-length search p50 = **{ratio:.2f}x** the 32-token p50 with query encoding (goal: at most 2x — "
            f"{'met' if ratio <= 2 else 'not met'}); "
            f"the index search alone (p50 minus the encoding's) **{search_ratio:.2f}x**. "
            f"{res['build']['n']:,} NGC passages ({res['build']['tokens']:,} token vectors, faiss nprobe "
            f"{f['nprobe']}); {args.queries} latency queries alternating between the settings, "
            f"{args.recall_queries} for recall.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
