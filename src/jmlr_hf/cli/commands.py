"""The ``jmlr`` commands: what each runs, and :data:`COMMANDS`, the registry ``jmlr`` is built from.

Each run function gets its parsed arguments dataclass (:mod:`jmlr_hf.cli.arguments`; ``jmlr train`` the
recipe's three) and returns the exit status. Results go to stdout; progress and what a command is doing go
to the ``jmlr_hf`` loggers (stderr).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..recipe import DataArguments, ModelArguments, build_arg_parser
from .arguments import AskArguments, DemoArguments, EvalArguments, IndexArguments
from .base import Command, TrainCommand
from .loading import device, index_source, load_index, load_llm, prompt_settings, retriever_source

__all__ = ["COMMANDS"]

NOT_MEDICAL_ADVICE = "(The demo data is synthetic and fictional: not medical advice.)"

# ---------------------------------------------------------------------------------------------------
# jmlr demo
# ---------------------------------------------------------------------------------------------------


def _retrieval_demo(args: DemoArguments) -> int:
    from ..data import make_demo_task
    from ..evaluation import recall_at_k
    from ..recipe import load_retriever
    from ..retriever import DocumentIndex

    task = make_demo_task(num_facts=args.num_facts or 120, seed=args.seed)
    retriever = load_retriever(None)
    start = time.perf_counter()
    index = DocumentIndex.build(task.corpus, retriever, backend=args.backend, show_progress_bar=True)
    print(
        f"Indexed {len(index)} passages from {len(task.corpus)} synthetic guidelines in "
        f"{time.perf_counter() - start:.1f}s"
    )
    recall = recall_at_k(index, task.test, ks=(args.k,))[f"recall@{args.k}"]
    print(f"recall@{args.k} of the gold passage on {len(task.test)} held-out questions: {recall:.3f}")
    example = task.test[0]
    top = index.search([example["question"]], k=1)[0][0]
    print(
        f"\nQ: {example['question']}\nTop passage ({top['doc_id']}, score {top['score']:.2f}): "
        f"{top['text'][:200]}..."
    )
    print(f"\n{NOT_MEDICAL_ADVICE}")
    return 0


def _demo(args: DemoArguments) -> int:
    if args.retrieval_only:
        return _retrieval_demo(args)
    from .. import demo_run
    from ..evaluation import results_to_markdown

    settings: dict[str, Any] = {"output_dir": args.output_dir, "seed": args.seed}
    if args.max_steps is not None:
        settings["max_steps"] = args.max_steps
    if args.num_facts is not None:
        settings["num_facts"] = args.num_facts
    summary = demo_run.run_demo(demo_run.DemoConfig(**settings))
    out = args.output_dir
    print(results_to_markdown(summary["results"]))
    print(
        f"\n{summary['num_test_questions']} held-out questions, {summary['num_train_questions']} training "
        f"questions; trained in {summary['train_seconds']}s ({summary['total_seconds']}s in all)."
    )
    print(f"\nWritten to {out}/:")
    for name, what in (
        ("results.json", "all numbers, the training log and the settings"),
        ("results.md", "the table above"),
        ("training_curves.png", "lm_loss, rank_loss and held-out recall against the step"),
        ("model/", "the trained LLM, model/retriever/ (the trained retriever), model/index/ (re-encoded)"),
    ):
        print(f"  {os.path.join(out, name)}  {what}")
    print(f'\nTry it: jmlr ask "<a question>" --model {os.path.join(out, "model")}')
    print(f"\n{NOT_MEDICAL_ADVICE}")
    return 0


# ---------------------------------------------------------------------------------------------------
# jmlr index
# ---------------------------------------------------------------------------------------------------


def _load_corpus_files(paths: list[str]) -> Any:
    """One corpus from several files (ids unique across them)."""
    from ..data import load_corpus

    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"corpus file not found: {path}")
    if len(paths) == 1:
        return load_corpus(paths[0])
    from datasets import concatenate_datasets

    return load_corpus(concatenate_datasets([load_corpus(p) for p in paths]))


def _index(args: IndexArguments) -> int:
    from ..recipe import load_retriever
    from ..retriever import DocumentIndex

    start = time.perf_counter()
    if args.refresh:
        if not (Path(args.output) / "index_config.json").is_file():
            raise FileNotFoundError(f"{args.output} is not a saved index (no index_config.json) to refresh")
        retriever = load_retriever(args.retriever).to(device(args.device)).eval()
        index = DocumentIndex.load(args.output, retriever, allow_stale=True)
        index.refresh(retriever, show_progress_bar=not args.quiet)
        action = "Re-encoded"
    else:
        corpus = _load_corpus_files(args.corpus)
        retriever = load_retriever(args.retriever).to(device(args.device)).eval()
        index = DocumentIndex.build(
            corpus,
            retriever,
            backend=args.backend,
            chunk_tokens=args.chunk_tokens,
            chunk_overlap=args.chunk_overlap,
            show_progress_bar=not args.quiet,
        )
        action = f"Indexed {len(corpus)} documents as"
    index.save(args.output)
    print(
        f"{action} {len(index)} passages ({index.backend.name} backend) in "
        f"{time.perf_counter() - start:.1f}s; saved to {args.output}"
    )
    return 0


# ---------------------------------------------------------------------------------------------------
# jmlr train
# ---------------------------------------------------------------------------------------------------


def _train(args: tuple[Any, Any, Any]) -> int:
    from ..recipe import run_training

    model_args, data_args, training_args = args
    trainer = run_training(model_args, data_args, training_args)
    if trainer.is_world_process_zero():
        out = training_args.output_dir
        saved = f"{out}/ (LLM), {out}/retriever/" + (f", {out}/index/" if data_args.save_index else "")
        print(f"Trained {trainer.state.global_step} steps; saved to {saved}")
        print(f"Evaluate: jmlr eval --model {out} --data <QA file> --format <format>")
    return 0


TRAIN_EPILOG = "\n".join(
    [
        "Also every JMLRTrainingArguments / TrainingArguments field is a flag and a config key (--output_dir, "
        "--max_steps, --learning_rate, --retriever_learning_rate, --num_candidate_docs, --num_scored_docs, "
        "--num_context_docs, --index_refresh_steps, --rank_loss, --bf16, ...): see --help-all.",
        "",
        "What it does, in order (each step is logged): load the QA data, the retriever and the corpus; build the "
        "index (every passage encoded by the retriever: about 31 passages/s on 2 CPU cores) or load index_path; "
        "load the LLM; train; save the LLM, retriever/ and jmlr_inference.json; re-encode the index with the "
        "trained retriever into index/. --save_index false skips that last re-encoding (`jmlr eval` / `jmlr ask` "
        "then need `jmlr index --refresh` or an --index of their own).",
        "",
        "Example: jmlr train --config examples/configs/cpu-demo.yaml --max_steps 5",
        "Multi-GPU: accelerate launch examples/train_medqa.py --config examples/configs/paper-13b.yaml",
    ]
)

# ---------------------------------------------------------------------------------------------------
# jmlr eval
# ---------------------------------------------------------------------------------------------------


def _eval_datasets(args: EvalArguments) -> dict[str, Any]:
    from ..data import load_mirage, load_qa_dataset

    if not os.path.isfile(args.data):
        raise FileNotFoundError(f"QA file not found: {args.data}")
    if args.format == "mirage":
        datasets = load_mirage(args.data, args.mirage_subset)
    else:
        datasets = {Path(args.data).stem: load_qa_dataset(args.data, args.format, split=args.split)}
    if args.limit is not None:
        datasets = {name: ds.select(range(min(args.limit, len(ds)))) for name, ds in datasets.items()}
    return datasets


def _eval(args: EvalArguments) -> int:
    from ..evaluation import results_to_markdown, save_results

    datasets = _eval_datasets(args)
    index_dir = index_source(args.index, args.model)
    mode = args.mode or ("rag" if index_dir else "closed-book")
    if mode == "rag" and index_dir is None:
        raise ValueError(
            "--mode rag needs --index DIR (or a --model folder from `jmlr train` holding index/)"
        )
    k, max_context_tokens, template = prompt_settings(args)
    on = device(args.device)
    retriever_name = retriever_source(args.retriever, args.model)
    index = load_index(index_dir, retriever_name, on) if mode == "rag" else None
    llm, tokenizer = load_llm(args.model, args.dtype)
    llm.to(on)
    results, details = {}, {}
    for name, dataset in datasets.items():
        results[name], details[name] = _evaluate(
            args, llm, tokenizer, dataset, index, k, max_context_tokens, template
        )
    print(results_to_markdown(results, row_header="dataset"))
    if args.output:
        settings = {
            "model": args.model or "default",
            "retriever": (retriever_name or "default") if mode == "rag" else None,
            "index": index_dir if mode == "rag" else None,
            "data": args.data,
            "format": args.format,
            "mode": mode,
            "k": k,
            "method": args.method,
            "max_context_tokens": max_context_tokens,
            "limit": args.limit,
        }
        save_results({"results": results, "details": details, "settings": settings}, args.output)
        print(f"\nWrote {args.output}")
    return 0


def _evaluate(
    args: EvalArguments,
    llm: Any,
    tokenizer: Any,
    dataset: Any,
    index: Any,
    k: int,
    budget: int,
    template: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One dataset's result row and details (predictions, and the passages used in RAG)."""
    from ..evaluation import evaluate_mcq, retrieve_passages

    passages = retrieve_passages(index, dataset, k=k) if index is not None else None
    result = evaluate_mcq(
        llm,
        tokenizer,
        dataset,
        passages=passages,
        prompt_template=template,
        max_context_tokens=budget,
        method=args.method,
        batch_size=args.batch_size,
        show_progress_bar=not args.quiet,
    )
    row = {
        "mode": "rag" if index is not None else "closed-book",
        "k": k if index is not None else None,
        "accuracy": result.accuracy,
        "questions": result.num_questions,
    }
    details = result.to_dict()
    if passages is not None:
        details["passages"] = [[h["passage_id"] for h in hits] for hits in passages]
    return row, details


# ---------------------------------------------------------------------------------------------------
# jmlr ask
# ---------------------------------------------------------------------------------------------------


def _parse_options(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    options = {}
    for item in items:
        letter, sep, text = item.partition("=")
        if not sep or not letter.strip() or not text.strip():
            raise ValueError(f"--option must look like A=text, got {item!r}")
        options[letter.strip().upper()] = text.strip()
    return options


def _ask(args: AskArguments) -> int:
    if not (args.question or "").strip():
        raise ValueError('give the question: jmlr ask "QUESTION" --model DIR')
    index_dir = index_source(args.index, args.model)
    if index_dir is None:
        raise ValueError("jmlr ask needs --index DIR (or a --model folder from `jmlr train` holding index/)")
    options = _parse_options(args.option)
    k, max_context_tokens, template = prompt_settings(args)
    on = device(args.device)
    hits = load_index(index_dir, retriever_source(args.retriever, args.model), on).search(
        [args.question], k=k
    )[0]
    llm, tokenizer = load_llm(args.model, args.dtype)
    answer = _generate(llm.to(on).eval(), tokenizer, args, options, hits, max_context_tokens, template)
    print(f"Q: {args.question}")
    for letter, text in (options or {}).items():
        print(f"   {letter}. {text}")
    print(f"\nA: {answer}\n\nPassages:")
    for rank, hit in enumerate(hits, 1):
        print(f"[{rank}] {hit['title'] or '(untitled)'} ({hit['doc_id']}, {hit['score']:.2f})")
        text = " ".join(hit["text"].split())
        print(f"    {text[:240]}{'...' if len(text) > 240 else ''}")
    print("\n(Research model output: not medical advice.)")
    return 0


def _generate(
    llm: Any, tokenizer: Any, args: AskArguments, options: Any, hits: Any, budget: int, template: Any
) -> str:
    """Greedy answer to the training prompt built from the question, its options and the passages."""
    import torch

    from ..prompting import PromptBuilder

    # The prompt ignores the answer; the QA schema needs one.
    row = {
        "id": "question",
        "question": args.question,
        "options": options,
        "answer": next(iter(options or {"?": ""})),
    }
    builder = PromptBuilder(tokenizer, template, budget)
    input_ids = torch.tensor([builder.prompt_ids(builder.prompt(row, hits))], device=llm.device)
    with torch.no_grad():
        output = llm.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=args.max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True).strip()


# ---------------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------------

COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (
        Command(
            "demo",
            help="run the end-to-end demo on the embedded default models (offline, synthetic data)",
            description="Train SmolLM2-135M and a MiniLM ColBERT retriever together on the synthetic demo "
            "task (fictional guidelines, not medical advice) and compare closed-book, RAG and JMLR on "
            "held-out questions. With --retrieval-only: only index the demo corpus and report the "
            "retriever's recall.",
            arguments=(DemoArguments,),
            run=_demo,
        ),
        Command(
            "index",
            help="build (or --refresh) a passage index from corpus files",
            description="Chunk corpus documents ({id, title, text} rows) into passages, encode them with "
            "the retriever and save the index to --output. With --refresh, re-encode the index saved at "
            "--output with --retriever (e.g. after training) and save it again.",
            arguments=(IndexArguments,),
            run=_index,
        ),
        TrainCommand(
            "train",
            help="train LLM and retriever together from a YAML config (+ overrides)",
            description="Run the training recipe (jmlr_hf.recipe): load the models and data, build or load "
            "the index, train with JMLRTrainer, save the LLM, retriever/ and index/ to output_dir.",
            arguments=(ModelArguments, DataArguments),
            run=_train,
            epilog=TRAIN_EPILOG,
            full_parser=build_arg_parser,
        ),
        Command(
            "eval",
            help="multiple-choice accuracy, closed-book or with retrieval (RAG / JMLR)",
            description="Accuracy of an LLM on multiple-choice QA with the training prompt. Closed-book, "
            "or RAG with the top-k passages from --index. JMLR = RAG with the trained model and retriever: "
            "pass the folder `jmlr train` wrote as --model; its retriever/, index/ and prompt settings are "
            "used automatically.",
            arguments=(EvalArguments,),
            run=_eval,
        ),
        Command(
            "ask",
            help="answer one question with retrieved passages",
            description="Retrieve the top-k passages for a question, prompt the LLM as in training, "
            "generate greedily, and print the answer with the passages it was given. Research output, not "
            "medical advice.",
            arguments=(AskArguments,),
            run=_ask,
            positional="question",
        ),
    )
}
