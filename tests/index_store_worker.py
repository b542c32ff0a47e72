"""One process of the sharded-encoding tests (tests/test_index_store.py), started by ``torch.distributed.run``.

Every process builds the same tiny retriever and corpus, builds an index into a shared folder (each
encoding its share of the batches), refreshes it with changed weights into another folder, and writes
``rank{R}.json`` (what it encoded, its search results). Rank 0 also builds the 1-process reference in RAM
(same threads, same settings) and saves it, for the test to compare bit for bit.

    python -m torch.distributed.run --nproc_per_node 2 tests/index_store_worker.py OUT

With ``--fail-rank R``: rank R's encoder raises during the build; every process writes the error it got to
``error{rank}.txt`` (and exits 0, so the launcher does not kill the others first).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jmlr_hf import DocumentIndex  # noqa: E402
from testing_utils import default_tokenizers, make_tiny_retriever  # noqa: E402

QUERIES = ["aspirin dose daily", "sepsis fever", "warfarin and heparin"]
SETTINGS = dict(backend="faiss", batch_size=7, precision="fp32", nlist=8, nprobe=8)


def synthetic_corpus(n: int, seed: int = 0) -> list[dict]:
    from test_index import synthetic_corpus as corpus

    return corpus(n, seed)


def perturb_(retriever) -> None:
    """Deterministically change the retriever's weights (what training does between refreshes)."""
    with torch.no_grad():
        for p in retriever.parameters():
            p.add_(0.01 * torch.sin(torch.arange(p.numel(), dtype=p.dtype)).view_as(p))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--fail-rank", type=int, default=None)
    args = parser.parse_args()
    out = args.out
    if args.fail_rank is not None:
        fail(out, args.fail_rank)
        return
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    _, bert_tokenizer = default_tokenizers()
    retriever = make_tiny_retriever(bert_tokenizer, seed=0)
    corpus = synthetic_corpus(90)

    index = DocumentIndex.build(corpus, retriever, folder=out / "built", **SETTINGS)
    record = {"build": index.last_encode_stats, "build_hits": index.search(QUERIES, k=5)}
    if rank == 0:
        reference = DocumentIndex.build(corpus, retriever, **SETTINGS)
        reference.save(out / "reference")
    perturb_(retriever)
    index.refresh(retriever, folder=out / "refreshed")
    record["refresh"] = index.last_encode_stats
    record["refresh_hits"] = index.search(QUERIES, k=5)
    record["mapped"] = bool(index.store.is_mapped) and index.folder == out / "refreshed"
    if rank == 0:
        reference.refresh(retriever)
        reference.save(out / "reference_refreshed")
    (out / f"rank{rank}.json").write_text(json.dumps(record), encoding="utf-8")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def fail(out: Path, fail_rank: int) -> None:
    """A sharded build whose encoder fails on ``fail_rank``: what each process raises, and when."""
    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = torch.distributed.get_rank()
    _, bert_tokenizer = default_tokenizers()
    retriever = make_tiny_retriever(bert_tokenizer, seed=0)
    if rank == fail_rank:

        def broken(*args, **kwargs):
            raise RuntimeError("injected encoder failure")
            yield  # a generator, as the real one

        retriever._encode_batches = broken
    t0 = time.perf_counter()
    try:
        DocumentIndex.build(synthetic_corpus(40), retriever, folder=out / "built", **SETTINGS)
        message = "no error"
    except Exception as err:
        message = f"{type(err).__name__}: {err}"
    (out / f"error{rank}.txt").write_text(f"{time.perf_counter() - t0:.1f}\n{message}", encoding="utf-8")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
