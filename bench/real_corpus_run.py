"""The real path at real size (issue 10, part 6): the whole NGC corpus, MIRAGE MedMCQA, `jmlr train`.

Steps (each a sub-command, so that the long ones can run one at a time on a 2-core machine):

    export HF_HUB_OFFLINE=1 JMLR_SHARED_DATA=../shared/data RUN=outputs/real_run
    python bench/real_corpus_run.py prepare --out $RUN            # train/held-out split + config.yaml
    /usr/bin/time -v jmlr index --corpus $JMLR_SHARED_DATA/ngc/ngc_guidelines.jsonl --output $RUN/index \
        2> $RUN/index_time.txt                                     # the whole corpus, peak RSS
    python bench/real_corpus_run.py evaluate --out $RUN --model default --index $RUN/index --name before
    /usr/bin/time -v jmlr train --config $RUN/config.yaml 2> $RUN/train_time.txt
    python bench/real_corpus_run.py evaluate --out $RUN --model $RUN/model --name after
    python bench/real_corpus_run.py report --out $RUN              # docs/benchmarks.md "Real corpus run"

MIRAGE MedMCQA questions are split by id (a stable hash: 1 in 10 held out); they have no explanation,
so they train on the answer letter and option text. Held-out metrics, before (base LLM, untrained
retriever, its index) and after (the trained folder: LLM + retriever/ + re-encoded index/): the
retriever-LLM rank agreement (Kendall tau over the top 10 passages) and the answer NLL with the top 7
passages in the training prompt.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import sys
import time
from pathlib import Path

import yaml
from retrieval import ROOT, data_dir, log, machine_description, write_section

SECTION = "## Real corpus run (issue 10)"


def held_out(qid: str) -> bool:
    return int(hashlib.sha1(qid.encode()).hexdigest(), 16) % 10 == 0


def prepare(args: argparse.Namespace) -> None:
    from jmlr_hf.data import load_mirage

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = load_mirage(data_dir() / "mirage" / "benchmark.json", ["medmcqa"])["medmcqa"].to_list()
    train = [r for r in rows if not held_out(r["id"])]
    test = [r for r in rows if held_out(r["id"])][: args.heldout]
    for name, part in (("train", train), ("heldout", test)):
        with (out / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for row in part:
                f.write(json.dumps(row) + "\n")
    config = {
        "train_file": str(out / "train.jsonl"),
        "data_format": "qa",
        "index_path": str(out / "index"),
        "use_lora": True,
        "lora_r": 16,
        "num_candidate_docs": 30,
        "num_scored_docs": 10,
        "num_context_docs": 7,
        "index_refresh_steps": args.refresh_steps,
        "learning_rate": 2.0e-4,
        "max_steps": args.steps,
        "per_device_train_batch_size": 1,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "dataloader_num_workers": 0,
        "seed": 0,
        "output_dir": str(out / "model"),
    }
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    log(f"{len(train)} train / {len(test)} held-out questions (of {len(rows)}); config in {out}/config.yaml")


def evaluate(args: argparse.Namespace) -> None:
    from jmlr_hf.cli import _load_index, _load_llm, _retriever_source
    from jmlr_hf.data import load_qa_dataset
    from jmlr_hf.evaluation import rag_answer_nll, retrieve_passages, retriever_llm_agreement
    from jmlr_hf.recipe import read_inference_settings

    out = Path(args.out)
    model_dir = None if args.model == "default" else args.model
    index_dir = args.index or str(Path(args.model) / "index")
    rows = load_qa_dataset(str(out / "heldout.jsonl"), "qa")
    settings = read_inference_settings(model_dir)
    index = _load_index(index_dir, _retriever_source(None, model_dir), "cpu")
    llm, tokenizer = _load_llm(args.model, None)
    t0 = time.perf_counter()
    tau = retriever_llm_agreement(llm, tokenizer, index, rows, k=10, show_progress_bar=True)
    passages = retrieve_passages(index, rows, k=7)
    nll = rag_answer_nll(llm, tokenizer, rows, passages, settings.get("prompt_template"), batch_size=2)
    res = {
        "questions": len(rows),
        "kendall_tau_top10": tau,
        "answer_nll_top7": statistics.fmean(nll),
        "answer_nll_sem": statistics.stdev(nll) / len(nll) ** 0.5,
        "seconds": time.perf_counter() - t0,
    }
    (out / f"eval_{args.name}.json").write_text(json.dumps(res, indent=2), encoding="utf-8")
    log(json.dumps(res))


def _time_v(path: Path) -> dict[str, float]:
    """Wall seconds and peak RSS (GiB) from a `/usr/bin/time -v` report."""
    text = path.read_text(encoding="utf-8", errors="replace")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text).group(1)
    seconds = 0.0
    for part in wall.split(":"):
        seconds = seconds * 60 + float(part)
    return {"wall_s": seconds, "peak_rss_gib": rss / 2**20}


def _clean_lines(out: Path) -> list[str]:
    """The dedicated re-measurements, when present: `jmlr index --refresh` of the trained folder's index
    (refresh_clean.txt) and a short `jmlr train` without refreshes (steps_clean.txt)."""
    lines = []
    if (out / "refresh_clean.txt").is_file():
        refresh = _time_v(out / "refresh_clean.txt")
        lines.append(
            f"- Refresh at full size on an otherwise idle machine (`jmlr index --refresh` of the trained index): "
            f"**{refresh['wall_s'] / 60:.1f} min**, peak RSS {refresh['peak_rss_gib']:.1f} GiB."
        )
    if (out / "steps_clean.txt").is_file():
        text = (out / "steps_clean.txt").read_text(encoding="utf-8", errors="replace")
        runtime = float(re.findall(r"'train_runtime': '([\d.]+)'", text)[-1])
        steps = int(re.search(r"Trained (\d+) steps", text).group(1))
        whole = _time_v(out / "steps_clean.txt")
        lines.append(
            f"- Seconds per joint step on an otherwise idle machine ({steps} steps of the same config, no refresh): "
            f"**{runtime / steps:.1f} s**; the whole `jmlr train` run {whole['wall_s']:.0f} s (start-up with "
            f"loading the {whole['peak_rss_gib']:.1f} GiB-peak process included)."
        )
    return lines


def report(args: argparse.Namespace) -> None:
    out = Path(args.out)
    config = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    index_cfg = json.loads((out / "index" / "index_config.json").read_text(encoding="utf-8"))
    build, train = _time_v(out / "index_time.txt"), _time_v(out / "train_time.txt")
    history = json.loads((out / "model" / "trainer_state.json").read_text(encoding="utf-8"))["log_history"]
    steps = [e for e in history if "lm_loss" in e]
    refresh = [e["index_refresh_seconds"] for e in history if "index_refresh_seconds" in e]
    summary = next(e for e in history if "train_runtime" in e)
    before, after = (json.loads((out / f"eval_{n}.json").read_text()) for n in ("before", "after"))
    per_step = (summary["train_runtime"] - sum(refresh)) / summary["step"]
    first, last = steps[: len(steps) // 4 or 1], steps[-(len(steps) // 4 or 1) :]

    def mean(entries: list[dict], key: str) -> float:
        return statistics.fmean(e[key] for e in entries)

    lines = [
        SECTION,
        "",
        f"Machine: {machine_description()}. Date: {time.strftime('%Y-%m-%d')}. Commands: the docstring of "
        "`bench/real_corpus_run.py` (`jmlr index` on the whole NGC corpus, `jmlr train` with the config it writes).",
        "",
        f"- Corpus: all 1,416 NGC guidelines -> **{index_cfg['num_passages']:,} passages** "
        f"({index_cfg['backend']} backend). `jmlr index`: **{build['wall_s'] / 60:.1f} min**, peak RSS "
        f"**{build['peak_rss_gib']:.1f} GiB**.",
        f"- Training: `jmlr train`, MIRAGE MedMCQA train split (by id), embedded SmolLM2-135M-Instruct with "
        f"LoRA r={config['lora_r']} (lr {config['learning_rate']}) + MiniLM ColBERT (lr 1e-5, the default), "
        f"30 candidates / 10 scored / 7 in context, full-length queries, batch 1, {summary['step']} steps, "
        f"index refreshed every {config['index_refresh_steps']} steps.",
        f"- **{per_step:.1f} s per step** (refreshes excluded); refresh at full size **"
        + ", ".join(f"{s / 60:.1f} min" for s in refresh)
        + f"**; whole `jmlr train` (with loading and the final re-encoding) {train['wall_s'] / 60:.1f} min, "
        f"peak RSS {train['peak_rss_gib']:.1f} GiB.",
        *_clean_lines(out),
        f"- Training curves (first vs last quarter of the steps): lm_loss {mean(first, 'lm_loss'):.3f} -> "
        f"{mean(last, 'lm_loss'):.3f}; rank_loss {mean(first, 'rank_loss'):.3f} -> {mean(last, 'rank_loss'):.3f}; "
        f"Kendall tau of the scored docs {mean(first, 'rank_agreement_kendall_tau'):.3f} -> "
        f"{mean(last, 'rank_agreement_kendall_tau'):.3f}.",
        "",
        f"Held-out MedMCQA questions ({before['questions']}), before (base LLM, untrained retriever and its index) "
        "and after (the `jmlr train` folder):",
        "",
        "| | retriever-LLM rank agreement (Kendall tau, top 10) | answer NLL with the top 7 passages |",
        "|---|---|---|",
        f"| before | {before['kendall_tau_top10']:.3f} | {before['answer_nll_top7']:.3f} ± {before['answer_nll_sem']:.3f} |",
        f"| after | {after['kendall_tau_top10']:.3f} | {after['answer_nll_top7']:.3f} ± {after['answer_nll_sem']:.3f} |",
        "",
    ]
    lines += [
        "The full run's times are wall-clock on the shared 2-core machine (other test suites ran beside it for "
        'much of it); the "otherwise idle" lines are the dedicated re-runs and the ones to plan with. '
        "Rank agreement is the mean Kendall tau between the retriever's order of its top 10 passages and the "
        "order of the LLM's answer NLL with each passage alone (eval mode); 0 = unrelated.",
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section(ROOT / "docs" / "benchmarks.md", section, SECTION)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", required=True)
    p.add_argument("--heldout", type=int, default=60, help="held-out questions evaluated")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--refresh-steps", type=int, default=30)
    p = sub.add_parser("evaluate")
    p.add_argument("--out", required=True)
    p.add_argument("--model", required=True, help="'default' or a `jmlr train` folder")
    p.add_argument("--index", help="index folder (default: MODEL/index)")
    p.add_argument("--name", required=True)
    p = sub.add_parser("report")
    p.add_argument("--out", required=True)
    p.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    {"prepare": prepare, "evaluate": evaluate, "report": report}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
