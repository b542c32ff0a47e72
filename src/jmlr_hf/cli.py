"""The ``jmlr`` command.

Subcommands (``jmlr <command> --help`` explains each option):

- ``jmlr demo``: the end-to-end demo on the embedded defaults (JMLR on the synthetic task; offline);
  ``jmlr demo --retrieval-only`` runs the quick retrieval demo (recall of the untrained retriever).
- ``jmlr index``: chunk and encode a corpus into a saved :class:`~jmlr_hf.DocumentIndex`
  (``--refresh`` re-encodes a saved index with a new retriever).
- ``jmlr train``: the training recipe (:mod:`jmlr_hf.recipe`) from a YAML config plus overrides.
- ``jmlr eval``: multiple-choice accuracy, closed-book or with retrieved passages (RAG / JMLR).
- ``jmlr ask``: answer one question with retrieved passages and show them.

Models: ``default`` (or leaving the option out) means the embedded ones (SmolLM2-135M-Instruct and
all-MiniLM-L6-v2 with a seeded ColBERT head). A folder written by ``jmlr train`` / ``JMLRTrainer.save_model``
holds the LLM, the trained retriever in ``retriever/`` and the re-encoded index in ``index/``:
``--model DIR`` picks all three up. Errors (a missing file, a malformed row, an unknown config key)
print one line naming the file or row on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("jmlr_hf.cli")

NOT_MEDICAL_ADVICE = "(The demo data is synthetic and fictional: not medical advice.)"
QA_FORMAT_CHOICES = ("qa", "medqa", "medmcqa", "mmlu", "pubmedqa", "mirage")


# ---------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------


def _device(name: str | None):
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _model_dir(model: str | None) -> Path | None:
    """The local folder of ``--model`` (None for the default or a Hub id)."""
    from .recipe import is_default

    if is_default(model) or not os.path.isdir(str(model)):
        return None
    return Path(str(model))


def _load_llm(model: str | None, dtype: str | None = None):
    """``(model, tokenizer)`` for inference: the default, a Hub id, a folder, or a LoRA adapter folder."""
    from transformers import AutoTokenizer

    from .models import load_llm
    from .recipe import _looks_like_local_path, _torch_dtype, is_default

    kwargs = {} if dtype is None else {"dtype": _torch_dtype(dtype)}
    if is_default(model):
        from .models import load_default_llm

        return load_default_llm(**kwargs)
    path = str(model)
    if not os.path.exists(path) and _looks_like_local_path(path):
        raise FileNotFoundError(f"model not found: {path}")
    if os.path.isdir(path) and not (
        os.path.isfile(os.path.join(path, "config.json"))
        or os.path.isfile(os.path.join(path, "adapter_config.json"))
    ):
        raise FileNotFoundError(f"{path} holds no config.json or adapter_config.json: not a model folder")
    tokenizer_source = path
    adapter_config = os.path.join(path, "adapter_config.json")
    if os.path.isfile(adapter_config) and not os.path.isfile(os.path.join(path, "tokenizer_config.json")):
        import json

        with open(adapter_config, encoding="utf-8") as f:
            tokenizer_source = json.load(f).get("base_model_name_or_path") or path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    llm = load_llm(path, **kwargs)  # adapter folders load their base model through PEFT
    return llm, tokenizer


def _retriever_source(retriever: str | None, model: str | None) -> str | None:
    """``--retriever``, else the trained retriever inside ``--model DIR`` (``DIR/retriever``), else default."""
    from .trainer.trainer import RETRIEVER_DIR

    if retriever is not None:
        return retriever
    model_dir = _model_dir(model)
    if model_dir is not None and (model_dir / RETRIEVER_DIR).is_dir():
        return str(model_dir / RETRIEVER_DIR)
    return None


def _index_source(index: str | None, model: str | None) -> str | None:
    """``--index``, else the index saved inside ``--model DIR`` (``DIR/index``)."""
    from .trainer.trainer import INDEX_DIR

    if index is not None:
        return index
    model_dir = _model_dir(model)
    if model_dir is not None and (model_dir / INDEX_DIR / "index_config.json").is_file():
        return str(model_dir / INDEX_DIR)
    return None


def _load_index(index_dir: str, retriever_name: str | None, device):
    from .recipe import load_retriever
    from .retriever import DocumentIndex, StaleIndexError

    if not os.path.isdir(index_dir):
        raise FileNotFoundError(f"index folder not found: {index_dir}")
    retriever = load_retriever(retriever_name).to(device).eval()
    try:
        return DocumentIndex.load(index_dir, retriever)
    except StaleIndexError as err:
        raise StaleIndexError(
            f"{err}. The index was built with another retriever than {retriever_name or 'default'!r}: pass "
            f"the retriever it was built with (--retriever), or re-encode it with `jmlr index --refresh "
            f"--output {index_dir} --retriever ...`"
        ) from None


# ---------------------------------------------------------------------------------------------------
# jmlr demo
# ---------------------------------------------------------------------------------------------------


def _retrieval_demo(args: argparse.Namespace) -> int:
    from .data import make_demo_task
    from .evaluation import recall_at_k
    from .recipe import load_retriever
    from .retriever import DocumentIndex

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


def _demo(args: argparse.Namespace) -> int:
    if args.retrieval_only:
        return _retrieval_demo(args)
    from .demo_run import DemoConfig, run_demo
    from .evaluation import results_to_markdown

    settings: dict[str, Any] = {"output_dir": args.output_dir, "seed": args.seed}
    if args.max_steps is not None:
        settings["max_steps"] = args.max_steps
    if args.num_facts is not None:
        settings["num_facts"] = args.num_facts
    summary = run_demo(DemoConfig(**settings))
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


def _index(args: argparse.Namespace) -> int:
    from .data import load_corpus
    from .recipe import load_retriever
    from .retriever import DocumentIndex

    start = time.perf_counter()
    device = _device(args.device)
    if args.refresh:
        if args.corpus:
            raise ValueError("--refresh re-encodes the saved index at --output: drop --corpus")
        if not (Path(args.output) / "index_config.json").is_file():
            raise FileNotFoundError(f"{args.output} is not a saved index (no index_config.json) to refresh")
        retriever = load_retriever(args.retriever).to(device).eval()
        index = DocumentIndex.load(args.output, retriever, allow_stale=True)
        index.refresh(retriever, show_progress_bar=not args.quiet)
        action = "Re-encoded"
    else:
        if not args.corpus:
            raise ValueError("give at least one --corpus FILE (or --refresh to re-encode a saved index)")
        for path in args.corpus:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"corpus file not found: {path}")
        if len(args.corpus) == 1:
            corpus = load_corpus(args.corpus[0])
        else:
            from datasets import concatenate_datasets

            corpus = load_corpus(concatenate_datasets([load_corpus(p) for p in args.corpus]))
        retriever = load_retriever(args.retriever).to(device).eval()
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


def _train(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    from .recipe import build_arg_parser, parse_args, run_training

    if args.help_all:
        print(build_arg_parser("jmlr train").format_help())
        return 0
    model_args, data_args, training_args = parse_args(
        list(overrides), config_file=args.config, prog="jmlr train"
    )
    trainer = run_training(model_args, data_args, training_args)
    if trainer.is_world_process_zero():
        out = training_args.output_dir
        saved = f"{out}/ (LLM), {out}/retriever/" + (f", {out}/index/" if data_args.save_index else "")
        print(f"Trained {trainer.state.global_step} steps; saved to {saved}")
        print(f"Evaluate: jmlr eval --model {out} --data <QA file> --format <format>")
    return 0


# ---------------------------------------------------------------------------------------------------
# jmlr eval
# ---------------------------------------------------------------------------------------------------


def _eval_datasets(args: argparse.Namespace) -> dict[str, Any]:
    from .data import load_mirage, load_qa_dataset

    if not os.path.isfile(args.data):
        raise FileNotFoundError(f"QA file not found: {args.data}")
    if args.format == "mirage":
        datasets = load_mirage(args.data, args.mirage_subset)
    else:
        if args.mirage_subset:
            raise ValueError("--mirage-subset only applies to --format mirage")
        datasets = {Path(args.data).stem: load_qa_dataset(args.data, args.format, split=args.split)}
    if args.limit is not None:
        datasets = {name: ds.select(range(min(args.limit, len(ds)))) for name, ds in datasets.items()}
    return datasets


def _eval(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_mcq, results_to_markdown, retrieve_passages, save_results
    from .recipe import read_inference_settings
    from .trainer.arguments import DEFAULT_MAX_CONTEXT_TOKENS

    if args.limit is not None and args.limit <= 0:
        raise ValueError(f"--limit must be positive, got {args.limit}")
    datasets = _eval_datasets(args)
    index_dir = _index_source(args.index, args.model)
    mode = args.mode or ("rag" if index_dir else "closed-book")
    if mode == "rag" and index_dir is None:
        raise ValueError(
            "--mode rag needs --index DIR (or a --model folder from `jmlr train` holding index/)"
        )
    settings = read_inference_settings(_model_dir(args.model))
    k = args.k if args.k is not None else settings.get("num_context_docs", 7)
    max_context_tokens = (
        args.max_context_tokens or settings.get("max_context_tokens") or DEFAULT_MAX_CONTEXT_TOKENS
    )
    device = _device(args.device)
    index = None
    retriever_name = _retriever_source(args.retriever, args.model)
    if mode == "rag":
        index = _load_index(index_dir, retriever_name, device)
    llm, tokenizer = _load_llm(args.model, args.dtype)
    llm.to(device)
    results: dict[str, dict[str, Any]] = {}
    details: dict[str, Any] = {}
    for name, dataset in datasets.items():
        passages = retrieve_passages(index, dataset, k=k) if index is not None else None
        result = evaluate_mcq(
            llm,
            tokenizer,
            dataset,
            passages=passages,
            prompt_template=settings.get("prompt_template"),
            max_context_tokens=max_context_tokens,
            method=args.method,
            batch_size=args.batch_size,
            show_progress_bar=not args.quiet,
        )
        results[name] = {
            "mode": mode,
            "k": k if mode == "rag" else None,
            "accuracy": result.accuracy,
            "questions": result.num_questions,
        }
        details[name] = result.to_dict()
        if passages is not None:
            details[name]["passages"] = [[h["passage_id"] for h in row] for row in passages]
    print(results_to_markdown(results, row_header="dataset"))
    if args.output:
        save_results(
            {
                "results": results,
                "details": details,
                "settings": {
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
                },
            },
            args.output,
        )
        print(f"\nWrote {args.output}")
    return 0


# ---------------------------------------------------------------------------------------------------
# jmlr ask
# ---------------------------------------------------------------------------------------------------


def _parse_options(items: Sequence[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    options = {}
    for item in items:
        letter, sep, text = item.partition("=")
        if not sep or not letter.strip() or not text.strip():
            raise ValueError(f"--option must look like A=text, got {item!r}")
        options[letter.strip().upper()] = text.strip()
    return options


def _ask(args: argparse.Namespace) -> int:
    import torch

    from .recipe import read_inference_settings
    from .trainer import PromptBuilder
    from .trainer.arguments import DEFAULT_MAX_CONTEXT_TOKENS

    if not args.question.strip():
        raise ValueError("the question is empty")
    if args.k <= 0:
        raise ValueError(f"--k must be positive, got {args.k}")
    index_dir = _index_source(args.index, args.model)
    if index_dir is None:
        raise ValueError("jmlr ask needs --index DIR (or a --model folder from `jmlr train` holding index/)")
    device = _device(args.device)
    index = _load_index(index_dir, _retriever_source(args.retriever, args.model), device)
    hits = index.search([args.question], k=args.k)[0]
    llm, tokenizer = _load_llm(args.model, args.dtype)
    llm.to(device).eval()
    settings = read_inference_settings(_model_dir(args.model))
    options = _parse_options(args.option)
    # The prompt ignores the answer; the QA schema needs one.
    row = {
        "id": "question",
        "question": args.question,
        "options": options,
        "answer": next(iter(options or {"?": ""})),
    }
    builder = PromptBuilder(
        tokenizer,
        settings.get("prompt_template"),
        args.max_context_tokens or settings.get("max_context_tokens") or DEFAULT_MAX_CONTEXT_TOKENS,
    )
    input_ids = torch.tensor([builder.prompt_ids(builder.prompt(row, hits))], device=device)
    with torch.no_grad():
        output = llm.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=args.max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    answer = tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True).strip()
    print(f"Q: {args.question}")
    for letter, text in (options or {}).items():
        print(f"   {letter}. {text}")
    print(f"\nA: {answer}\n\nPassages:")
    for rank, hit in enumerate(hits, 1):
        title = hit["title"] or "(untitled)"
        print(f"[{rank}] {title} ({hit['doc_id']}, {hit['score']:.2f})")
        text = " ".join(hit["text"].split())
        print(f"    {text[:240]}{'...' if len(text) > 240 else ''}")
    print("\n(Research model output: not medical advice.)")
    return 0


# ---------------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------------


def _recipe_epilog() -> str:
    import dataclasses
    import textwrap

    from .recipe import DataArguments, ModelArguments

    lines = [
        "Every field of the recipe is a flag (--name VALUE, or name: value in the YAML config); flags win",
        "over the config. ModelArguments and DataArguments:",
    ]
    for cls in (ModelArguments, DataArguments):
        for f in dataclasses.fields(cls):
            lines.append(
                textwrap.fill(
                    f"--{f.name:<32} {f.metadata.get('help', '')}",
                    width=100,
                    initial_indent="  ",
                    subsequent_indent=" " * 37,
                )
            )
    lines += [
        "and every JMLRTrainingArguments / TrainingArguments field (--output_dir, --max_steps, --learning_rate,",
        "--retriever_learning_rate, --num_candidate_docs, --index_refresh_steps, --bf16, ...): see --help-all.",
        "",
        "Example: jmlr train --config examples/configs/cpu-demo.yaml --max_steps 5",
        "Multi-GPU: accelerate launch examples/train_medqa.py --config examples/configs/paper-13b.yaml",
    ]
    return "\n".join(lines)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" only where there is a default worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jmlr",
        description="Joint Medical LLM and Retrieval training (JMLR): demo, index, train, eval, ask. "
        "'default' (or leaving a model option out) means the embedded offline models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO level)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = _HelpFormatter

    # demo
    demo = sub.add_parser(
        "demo",
        help="run the end-to-end demo on the embedded default models (offline, synthetic data)",
        description="Train SmolLM2-135M and a MiniLM ColBERT retriever together on the synthetic demo task "
        "(fictional guidelines, not medical advice) and compare closed-book, RAG and JMLR on held-out "
        "questions. With --retrieval-only: only index the demo corpus and report the retriever's recall.",
        formatter_class=fmt,
    )
    demo.add_argument("--output-dir", default="jmlr-demo", help="folder for results, plot, model and index")
    demo.add_argument("--max-steps", type=int, default=None, help="training steps (default: the demo's 100)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic task and of training")
    demo.add_argument(
        "--num-facts",
        type=int,
        default=None,
        help="synthetic guideline facts (default: 160; 120 retrieval-only)",
    )
    demo.add_argument(
        "--retrieval-only",
        action="store_true",
        help="only the retrieval demo (recall of the untrained retriever)",
    )
    demo.add_argument("--k", type=int, default=7, help="retrieval-only: passages retrieved per question")
    demo.add_argument(
        "--backend", default="auto", choices=["auto", "exact", "faiss"], help="retrieval-only: index backend"
    )
    demo.set_defaults(func=_demo)

    # index
    index = sub.add_parser(
        "index",
        help="build (or --refresh) a passage index from corpus files",
        description="Chunk corpus documents ({id, title, text} rows) into passages, encode them with the "
        "retriever and save the index to --output. With --refresh, re-encode the index saved at --output "
        "with --retriever (e.g. after training) and save it again.",
        formatter_class=fmt,
    )
    index.add_argument(
        "--corpus",
        action="append",
        metavar="FILE",
        help="corpus file (.jsonl[.gz], .json, .parquet) of {id, title, text} rows; repeat for several",
    )
    index.add_argument(
        "--retriever",
        default="default",
        help="retriever checkpoint, plain encoder (gets a new ColBERT head), a `jmlr train` output folder, or "
        "'default'",
    )
    index.add_argument("--output", required=True, metavar="DIR", help="folder the index is saved to")
    index.add_argument("--backend", default="auto", choices=["auto", "exact", "faiss"], help="search backend")
    index.add_argument("--chunk-tokens", type=int, default=150, help="passage length in retriever tokens")
    index.add_argument(
        "--chunk-overlap", type=int, default=32, help="overlap of consecutive passages (tokens)"
    )
    index.add_argument("--refresh", action="store_true", help="re-encode the saved index at --output instead")
    index.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda:0', ...")
    index.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    index.set_defaults(func=_index)

    # train
    train = sub.add_parser(
        "train",
        help="train LLM and retriever together from a YAML config (+ overrides)",
        description="Run the training recipe (jmlr_hf.recipe): load the models and data, build or load the\n"
        "index, train with JMLRTrainer, save the LLM, retriever/ and index/ to output_dir.",
        epilog=_recipe_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    train.add_argument("--config", metavar="YAML", help="recipe config (see examples/configs/)")
    train.add_argument(
        "--help-all", action="store_true", help="list every recipe and TrainingArguments option, then exit"
    )
    train.set_defaults(func=_train, takes_overrides=True)

    # eval
    evaluate = sub.add_parser(
        "eval",
        help="multiple-choice accuracy, closed-book or with retrieval (RAG / JMLR)",
        description="Accuracy of an LLM on multiple-choice QA with the training prompt. Closed-book, or RAG "
        "with the top-k passages from --index. JMLR = RAG with the trained model and retriever: pass the "
        "folder `jmlr train` wrote as --model; its retriever/ and index/ are used automatically.",
        formatter_class=fmt,
    )
    evaluate.add_argument(
        "--model", default="default", help="LLM folder, Hub id, LoRA adapter folder or 'default'"
    )
    evaluate.add_argument("--data", required=True, metavar="FILE", help="QA file (MIRAGE: benchmark.json)")
    evaluate.add_argument("--format", default="qa", choices=QA_FORMAT_CHOICES, help="layout of the QA file")
    evaluate.add_argument(
        "--mirage-subset",
        action="append",
        metavar="NAME",
        help="MIRAGE dataset(s) to evaluate (medqa, medmcqa, mmlu, pubmedqa, bioasq); repeat; default: all",
    )
    evaluate.add_argument("--split", default=None, help="split to use when the QA file holds several")
    evaluate.add_argument(
        "--mode",
        choices=["closed-book", "rag"],
        default=None,
        help="default: rag when an index is given (or in --model), else closed-book",
    )
    evaluate.add_argument("--index", metavar="DIR", help="saved index for rag (default: --model's index/)")
    evaluate.add_argument(
        "--retriever",
        default=None,
        help="retriever the index was built with (default: --model's retriever/, else 'default')",
    )
    evaluate.add_argument(
        "--k",
        type=int,
        default=None,
        help="passages in the prompt (default: the trained num_context_docs, else 7)",
    )
    evaluate.add_argument(
        "--method",
        choices=["loglik", "option", "generate"],
        default="loglik",
        help="how the answer is read: answer-letter log-likelihood, log-likelihood of the whole "
        "'<letter>. <option>' answer, or greedy generation parsed for a letter",
    )
    evaluate.add_argument(
        "--limit", type=int, default=None, metavar="N", help="first N questions per dataset"
    )
    evaluate.add_argument(
        "--max-context-tokens",
        type=int,
        default=None,
        help="context budget (default: the trained one, else 2048)",
    )
    evaluate.add_argument("--batch-size", type=int, default=8, help="questions per forward")
    evaluate.add_argument(
        "--dtype", choices=["auto", "bfloat16", "float16", "float32"], default=None, help="LLM dtype"
    )
    evaluate.add_argument(
        "--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda:0', ..."
    )
    evaluate.add_argument(
        "--output", metavar="FILE", help="write results (and per-question predictions) as JSON"
    )
    evaluate.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    evaluate.set_defaults(func=_eval)

    # ask
    ask = sub.add_parser(
        "ask",
        help="answer one question with retrieved passages",
        description="Retrieve the top-k passages for a question, prompt the LLM as in training, generate "
        "greedily, and print the answer with the passages it was given. Research output, not medical advice.",
        formatter_class=fmt,
    )
    ask.add_argument("question", help="the question (quote it)")
    ask.add_argument("--option", action="append", metavar="A=TEXT", help="an answer option; repeat for each")
    ask.add_argument(
        "--model", default="default", help="LLM folder, Hub id, LoRA adapter folder or 'default'"
    )
    ask.add_argument("--index", metavar="DIR", help="saved index (default: --model's index/)")
    ask.add_argument(
        "--retriever", default=None, help="retriever of the index (default: --model's retriever/)"
    )
    ask.add_argument("--k", type=int, default=7, help="passages in the prompt")
    ask.add_argument("--max-new-tokens", type=int, default=256, help="answer length limit")
    ask.add_argument(
        "--max-context-tokens", type=int, default=None, help="context budget (default: trained, else 2048)"
    )
    ask.add_argument(
        "--dtype", choices=["auto", "bfloat16", "float16", "float32"], default=None, help="LLM dtype"
    )
    ask.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda:0', ...")
    ask.set_defaults(func=_ask)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jmlr`` console script; returns the exit status."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    if getattr(args, "quiet", False):
        hf_logging.disable_progress_bar()
    try:
        if getattr(args, "takes_overrides", False):
            return args.func(args, extras)
        return args.func(args)
    except (ValueError, OSError, ImportError) as err:
        if args.verbose:
            logger.exception("jmlr %s failed", args.command)
        print(f"jmlr {args.command}: error: {err}", file=sys.stderr)
        return 2
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()


def console_main() -> None:
    """Console-script wrapper: exit with :func:`main`'s status."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    console_main()
