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


def search_latency(index, queries: list[str], lengths: dict[str, int | None], k: int) -> dict:
    """p50/p95 of index.search([q], k) for each query_max_length setting, alternating per query."""
    config = index.retriever.config
    lat: dict[str, list[float]] = {name: [] for name in lengths}
    names = list(lengths)
    for name in names:  # warm-up
        config.query_max_length = lengths[name]
        index.search(queries[:3], k=k)
    for i, q in enumerate(queries):
        for name in names if i % 2 == 0 else names[::-1]:
            config.query_max_length = lengths[name]
            t0 = time.perf_counter()
            index.search([q], k=k)
            lat[name].append(time.perf_counter() - t0)
    return {
        name: {"p50_ms": 1000 * float(np.median(v)), "p95_ms": 1000 * float(np.percentile(v, 95))}
        for name, v in lat.items()
    }


def recall(index, queries: list[str], length: int | None, k: int) -> dict:
    """recall@k of the faiss search against exact MaxSim on the same (bf16) vectors."""
    index.retriever.config.query_max_length = length
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
    settings = {"32": 32, "full": None}
    res["latency"] = search_latency(index, questions[: args.queries], settings, args.k)
    res["recall"] = {
        name: recall(index, questions[: args.recall_queries], length, args.k)
        for name, length in settings.items()
    }
    res["faiss"] = {
        "nprobe": index.backend.nprobe,
        "tokens_per_query_token": index.backend.tokens_per_query_token,
    }
    log(json.dumps(res, indent=1))
    section = render(res, args, started)
    print(section)
    if not args.no_write:
        write_section(ROOT / "docs" / "benchmarks.md", section, SECTION)


def render(res: dict, args: argparse.Namespace, started: dt.datetime) -> str:
    lat, rec, c32, cfull = res["latency"], res["recall"], res["coverage_32"], res["coverage_full"]
    ratio = lat["full"]["p50_ms"] / lat["32"]["p50_ms"]
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
            f"search p50 (ms) | p95 (ms) | recall@{args.k} vs exact | query vectors (mean) |",
            "|---|---|---|---|---|---|---|",
            f"| 32 tokens (ColBERT's `query_maxlen`, before) | {c32['whole']:.1%} | {c32['whole_of_fitting']:.1%} | "
            f"{lat['32']['p50_ms']:.1f} | {lat['32']['p95_ms']:.1f} | {rec['32']['recall']:.3f} | "
            f"{rec['32']['tokens']:.0f} |",
            f"| full length (default now) | {cfull['whole']:.1%} | {cfull['whole_of_fitting']:.1%} | "
            f"{lat['full']['p50_ms']:.1f} | {lat['full']['p95_ms']:.1f} | {rec['full']['recall']:.3f} | "
            f"{rec['full']['tokens']:.0f} |",
            "",
            f"Full-length search p50 = **{ratio:.2f}x** the 32-token p50 (goal: at most 2x) at "
            f"{res['build']['n']:,} NGC passages ({res['build']['tokens']:,} token vectors, faiss nprobe "
            f"{res['faiss']['nprobe']}, tokens_per_query_token {res['faiss']['tokens_per_query_token']}); "
            f"{args.queries} latency queries alternating between the two settings, {args.recall_queries} for recall.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
