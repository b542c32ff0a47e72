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
    if args.max_eval_questions is not None:
        settings["max_eval_questions"] = args.max_eval_questions
    summary = demo_run.run_demo(demo_run.DemoConfig(**settings))
    out = args.output_dir
    print(summary.get("table") or results_to_markdown(summary["results"]))
    if summary.get("differences_table"):
        print(f"\nPaired differences (same questions, 95% intervals):\n{summary['differences_table']}")
    print(
        f"\n{summary['num_test_questions']} held-out questions, {summary['num_train_questions']} training "
        f"questions; trained in {summary['train_seconds']}s ({summary['total_seconds']}s in all)."
    )
    print(f"\nWritten to {out}/:")
    for name, what in (
        ("results.json", "all numbers, per-question scores, the training log and the settings"),
        ("results.md", "the tables above"),
        ("generations.jsonl", "each system's generated answer and rationale per question"),
        ("training_curves.png", "lm_loss, rank_loss, held-out recall; accuracy, hallucination, support"),
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
    """Encodes straight into ``--output``; under ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE`` > 1)
    every process encodes 1/N of the passages into it and rank 0 alone prints."""
    from ..recipe import load_retriever
    from ..retriever import DocumentIndex

    start = time.perf_counter()
    rank, owns_group = _init_process_group_from_env()
    try:
        on_device = _process_device(args.device)
        show = not args.quiet and rank == 0
        if args.refresh:
            if not (Path(args.output) / "index_config.json").is_file():
                raise FileNotFoundError(
                    f"{args.output} is not a saved index (no index_config.json) to refresh"
                )
            retriever = load_retriever(args.retriever).to(on_device).eval()
            index = DocumentIndex.load(args.output, retriever, allow_stale=True)
            index.refresh(retriever, show_progress_bar=show, folder=args.output)
            action = "Re-encoded"
        else:
            corpus = _load_corpus_files(args.corpus)
            retriever = load_retriever(args.retriever).to(on_device).eval()
            index = DocumentIndex.build(
                corpus,
                retriever,
                backend=args.backend,
                chunk_tokens=args.chunk_tokens,
                chunk_overlap=args.chunk_overlap,
                show_progress_bar=show,
                folder=args.output,
            )
            action = f"Indexed {len(corpus)} documents as"
        if rank == 0:
            index.save(args.output)  # the files are there already: only checks nothing is missing
            print(
                f"{action} {len(index)} passages ({index.backend.name} backend) in "
                f"{time.perf_counter() - start:.1f}s; saved to {args.output}"
            )
    finally:
        if owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


def _init_process_group_from_env() -> tuple[int, bool]:
    """Join the ``torch.distributed`` group a launcher describes (``WORLD_SIZE`` > 1 in the environment):
    nccl with CUDA, else gloo. Returns this process's rank and whether this call created the group."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return 0, False
    if dist.is_initialized():
        return dist.get_rank(), False
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), True


def _process_device(name: str | None) -> Any:
    """``--device`` for this process: a bare ``cuda`` means this process's GPU (``LOCAL_RANK``) under a launcher."""
    import torch

    chosen = device(name)
    if chosen.type == "cuda" and chosen.index is None and "LOCAL_RANK" in os.environ:
        chosen = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(chosen)  # nccl collectives run on the current device
    return chosen


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
    from ..evaluation import sample_questions

    if not os.path.isfile(args.data):
        raise FileNotFoundError(f"QA file not found: {args.data}")
    if args.format == "mirage":
        datasets = load_mirage(args.data, args.mirage_subset)
    else:
        datasets = {Path(args.data).stem: load_qa_dataset(args.data, args.format, split=args.split)}
    if args.limit is not None:  # a seeded sample stratified by answer: benchmark files are often sorted
        datasets = {name: sample_questions(ds, args.limit, seed=args.seed) for name, ds in datasets.items()}
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
    if args.judge_model is not None:
        del llm  # room for the judge
        _judge(args, results, details)
    print(results_to_markdown(results, row_header="dataset"))
    if args.output:
        settings = {
            "model": args.model or "default",
            "retriever": (retriever_name or "default") if mode == "rag" else None,
            "index": index_dir if mode == "rag" else None,
            "data": args.data,
            "format": args.format,
            "mode": mode,
            "k": k if mode == "rag" else 0,  # closed-book prompts hold no passages
            "method": args.method,
            "max_context_tokens": max_context_tokens,
            "limit": args.limit,
            "seed": args.seed if args.limit is not None else None,
        }
        if args.method == "generate":
            settings["max_new_tokens"] = args.max_new_tokens
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
        max_new_tokens=args.max_new_tokens,
        show_progress_bar=not args.quiet,
    )
    row = {
        "mode": "rag" if index is not None else "closed-book",
        "k": k if index is not None else None,
        "accuracy": result.accuracy,
        **({"acc_norm": result.accuracy_norm} if result.accuracy_norm is not None else {}),
        "questions": result.num_questions,
    }
    if result.grounding:  # generated answers: how well their rationales stand on the given passages
        keys = ("citing_rationales", "invalid_citations", "supported_sentences_any", "letter_agreement")
        row.update({key: result.grounding[key] for key in keys if key in result.grounding})
    details = result.to_dict()
    if passages is not None:
        details["passages"] = [[h["passage_id"] for h in hits] for hits in passages]
    return row, details


def _judge(args: EvalArguments, results: dict[str, Any], details: dict[str, Any]) -> None:
    """Judge this run's rationales (system A) against ``--compare``'s (B), per dataset, questions matched by
    id; adds ``judge_win_rate`` and its interval to the results and the verdicts to the details."""
    import json

    from ..evaluation import pairwise_judge

    with open(args.compare, encoding="utf-8") as f:
        other = json.load(f).get("details", {})
    judge, tokenizer = load_llm(args.judge_model, args.dtype)
    judge.to(device(args.device))
    for name, mine in details.items():
        theirs = dict(zip(other.get(name, {}).get("ids", []), other.get(name, {}).get("generations") or []))
        pairs = [(g, theirs[i]) for i, g in zip(mine["ids"], mine.get("generations") or []) if i in theirs]
        if not pairs:
            raise ValueError(
                f"{args.compare} holds no generations for the questions of {name!r}: give the --output of a "
                "`jmlr eval --method generate` run on the same data"
            )
        verdict = pairwise_judge(
            judge, tokenizer, [a for a, _ in pairs], [b for _, b in pairs], batch_size=args.batch_size
        )
        results[name].update(
            judge_win_rate=verdict.win_rate, judge_ci_low=verdict.ci_low, judge_ci_high=verdict.ci_high
        )
        details[name]["judge"] = {
            "judge_model": args.judge_model,
            "compare": args.compare,
            **verdict.to_dict(),
        }


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
    answer, placed = _generate(
        llm.to(on).eval(), tokenizer, args, options, hits, max_context_tokens, template
    )
    print(f"Q: {args.question}")
    for letter, text in (options or {}).items():
        print(f"   {letter}. {text}")
    print(f"\nA: {answer}")
    _print_given_passages(answer, hits, placed, max_context_tokens)
    print("\n(Research model output: not medical advice.)")
    return 0


def _print_given_passages(
    answer: str, hits: list[dict[str, Any]], placed: list[dict[str, Any]], budget: int
) -> None:
    """The passages the prompt held after the context budget, numbered as there (so ``[n]`` matches)."""
    from ..evaluation import invalid_citations

    cut = sum(p["text"] != h["text"] for p, h in zip(placed, hits))
    fit = f"{len(placed)} of the {len(hits)} retrieved fit the {budget}-token context budget"
    print(f"\nPassages the model was given ({fit}{f', {cut} cut short' if cut else ''}):")
    for rank, (passage, hit) in enumerate(zip(placed, hits), 1):
        print(f"[{rank}] {passage['title'] or '(untitled)'} ({passage['doc_id']}, {passage['score']:.2f})")
        text = " ".join(passage["text"].split())
        more = len(text) > 240 or passage["text"] != hit["text"]
        print(f"    {text[:240]}{'...' if more else ''}")
    invalid = sorted(set(invalid_citations(answer, len(placed))))
    if invalid:
        print(f"(The answer cites {', '.join(f'[{n}]' for n in invalid)}: no passage it was given.)")


def _generate(
    llm: Any, tokenizer: Any, args: AskArguments, options: Any, hits: Any, budget: int, template: Any
) -> tuple[str, list[dict[str, Any]]]:
    """Greedy answer to the training prompt built from the question, its options and the passages, and
    the passages that prompt holds (the context budget cuts or drops the least relevant)."""
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
    # without the trailing space: the model writes " A" as one token, as training scored it
    prompt = builder.prompt(row, hits).rstrip(" ")
    input_ids = torch.tensor([builder.prompt_ids(prompt)], device=llm.device)
    with torch.no_grad():
        output = llm.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=args.max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    answer = tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True).strip()
    return answer, builder.placed_passages(hits)


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
            "used automatically. With --method generate, --judge-model NAME --compare OTHER.json has an LLM "
            "judge this run's rationales against another run's (both orders; win rate with a 95 percent "
            "bootstrap interval).",
            arguments=(EvalArguments,),
            run=_eval,
        ),
        Command(
            "ask",
            help="answer one question with retrieved passages",
            description="Retrieve the top-k passages for a question (k: the trained num_context_docs unless "
            "--k), prompt the LLM as in training, generate greedily, and print the answer with its rationale "
            "and exactly the passages the prompt held after the context budget, numbered as there so the "
            "rationale's [n] citations match. Research output, not medical advice.",
            arguments=(AskArguments,),
            run=_ask,
            positional="question",
        ),
    )
}
