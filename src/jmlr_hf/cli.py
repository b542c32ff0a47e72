"""The ``jmlr`` command.

``jmlr demo`` currently runs the retrieval demo on the embedded defaults: it builds an index over
the synthetic demo corpus with the embedded MiniLM ColBERT retriever and reports recall@k of the
gold passage on held-out questions. (The joint-training demo replaces it when it lands.)
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

logger = logging.getLogger("jmlr_hf.cli")


def _demo(args: argparse.Namespace) -> int:
    from .data import make_demo_task
    from .models import load_default_retriever
    from .retriever import DocumentIndex

    task = make_demo_task(num_facts=args.num_facts, seed=args.seed)
    retriever = load_default_retriever()
    start = time.perf_counter()
    index = DocumentIndex.build(task.corpus, retriever, backend=args.backend, show_progress_bar=True)
    print(
        f"Indexed {len(index)} passages from {len(task.corpus)} synthetic guidelines in {time.perf_counter() - start:.1f}s"
    )
    questions = list(task.test)
    hits = index.search([q["question"] for q in questions], k=args.k)
    found = sum(any(h["doc_id"] == q["gold_doc_id"] for h in row) for q, row in zip(questions, hits))
    print(
        f"recall@{args.k} of the gold passage on {len(questions)} held-out questions: {found / len(questions):.3f}"
    )
    example, top = questions[0], hits[0][0]
    print(
        f"\nQ: {example['question']}\nTop passage ({top['doc_id']}, score {top['score']:.2f}): {top['text'][:200]}..."
    )
    print("\n(The demo data is synthetic and fictional: not medical advice.)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jmlr", description="Joint Medical LLM and Retrieval training (JMLR)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO level)")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the demo on the embedded default models (offline)")
    demo.add_argument("--num-facts", type=int, default=120, help="synthetic guideline passages to generate")
    demo.add_argument("--k", type=int, default=7, help="passages retrieved per question")
    demo.add_argument("--backend", default="auto", choices=["auto", "exact", "faiss"], help="index backend")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic task")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jmlr`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (ValueError, OSError) as err:
        print(f"jmlr {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def console_main() -> None:
    """Console-script wrapper: exit with :func:`main`'s status."""
    sys.exit(main())
