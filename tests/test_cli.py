"""The ``jmlr`` command: each subcommand on tiny random models saved to folders, help texts, and errors."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from jmlr_hf import DocumentIndex, JMLRRetriever
from jmlr_hf.cli import build_parser, main
from jmlr_hf.data import chunk_corpus, load_corpus, load_qa_dataset
from jmlr_hf.evaluation import evaluate_mcq, retrieve_passages, sample_indices
from jmlr_hf.retriever import StaleIndexError
from testing_utils import make_cli_assets, make_tiny_retriever
from testing_utils import run_cli as _run
from testing_utils import write_jsonl as _write_jsonl


@pytest.fixture(scope="module")
def assets(tmp_path_factory, llm_tokenizer, bert_tokenizer):
    """Tiny models saved to folders, a JSONL corpus and QA files (train with rationales, test), an index."""
    return make_cli_assets(tmp_path_factory.mktemp("cli"), llm_tokenizer, bert_tokenizer)


# ---------------------------------------------------------------------------------------------------
# help
# ---------------------------------------------------------------------------------------------------


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "index", "train", "eval", "ask"):
        assert command in out


@pytest.mark.parametrize(
    "command, expected",
    [
        ("demo", ["--output-dir", "--max-steps", "--seed", "--num-facts", "--retrieval-only"]),
        ("index", ["--corpus", "--retriever", "--output", "--backend", "--chunk-tokens", "--refresh"]),
        (
            "train",
            ["--config", "--help-all", "--llm_name_or_path", "--train_file", "--corpus_files", "--demo"],
        ),
        (
            "eval",
            ["--model", "--data", "--format", "--mirage-subset", "--mode", "--index", "--k", "--method"],
        ),
        ("ask", ["--model", "--index", "--retriever", "--k", "--max-new-tokens", "--option"]),
    ],
)
def test_help_of_each_subcommand(command, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in expected:
        assert option in out, f"{option} missing from `jmlr {command} --help`"


def test_train_help_all_lists_training_arguments(capsys):
    code, out, _ = _run(["train", "--help-all"], capsys)
    assert code == 0
    for option in ("--num_candidate_docs", "--index_refresh_steps", "--learning_rate", "--use_lora"):
        assert option in out


# ---------------------------------------------------------------------------------------------------
# index
# ---------------------------------------------------------------------------------------------------


def test_index_writes_a_loadable_searchable_index(assets, bert_tokenizer, capsys):
    retriever = JMLRRetriever.from_pretrained(assets["retriever"])
    index = DocumentIndex.load(assets["index"], retriever)
    expected = chunk_corpus(load_corpus(assets["corpus"]), bert_tokenizer, 32, 8)
    assert index.passages["passage_id"] == expected["passage_id"]
    assert len(index) > len(assets["task"].corpus)  # documents were chunked into several passages
    question = assets["task"].test[0]["question"]
    hits = index.search([question], k=3)[0]
    direct = DocumentIndex.build(
        assets["corpus"], retriever, backend="exact", chunk_tokens=32, chunk_overlap=8
    )
    assert [h["passage_id"] for h in hits] == [h["passage_id"] for h in direct.search([question], k=3)[0]]


def test_index_from_several_corpus_files(assets, tmp_path, capsys):
    rows = assets["task"].corpus.to_list()
    a = _write_jsonl(tmp_path / "a.jsonl", rows[:5])
    b = _write_jsonl(tmp_path / "b.jsonl", rows[5:9])
    code, out, _ = _run(
        [
            "index",
            "--corpus",
            a,
            "--corpus",
            b,
            "--retriever",
            assets["retriever"],
            "--output",
            tmp_path / "ix",
        ]
        + ["--backend", "exact", "-q"],
        capsys,
    )
    assert code == 0 and "Indexed 9 documents" in out
    index = DocumentIndex.load(tmp_path / "ix", JMLRRetriever.from_pretrained(assets["retriever"]))
    assert set(index.passages["doc_id"]) == {r["id"] for r in rows[:9]}


def test_index_refresh_reencodes_with_the_new_retriever(assets, bert_tokenizer, tmp_path, capsys):
    folder = tmp_path / "index"
    shutil.copytree(assets["index"], folder)
    other = tmp_path / "retriever2"
    make_tiny_retriever(bert_tokenizer, seed=1).save_pretrained(other)
    with pytest.raises(StaleIndexError):
        DocumentIndex.load(folder, JMLRRetriever.from_pretrained(other))
    code, out, _ = _run(["index", "--refresh", "--output", folder, "--retriever", other, "-q"], capsys)
    assert code == 0 and "Re-encoded" in out
    refreshed = DocumentIndex.load(folder, JMLRRetriever.from_pretrained(other))  # no longer stale
    original = DocumentIndex.load(assets["index"], JMLRRetriever.from_pretrained(assets["retriever"]))
    assert refreshed.passages == original.passages
    with pytest.raises(StaleIndexError):
        DocumentIndex.load(folder, JMLRRetriever.from_pretrained(assets["retriever"]))
    # a stale index is refused by `jmlr eval` with a hint, exit status 2
    code, _, err = _run(
        ["eval", "--model", assets["llm"], "--data", assets["test"], "--index", folder]
        + ["--retriever", assets["retriever"], "-q"],
        capsys,
    )
    assert code == 2 and "jmlr index --refresh" in err


# ---------------------------------------------------------------------------------------------------
# eval
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(assets):
    """The saved tiny LLM, its tokenizer and the test set, for direct evaluate_mcq calls."""
    llm = AutoModelForCausalLM.from_pretrained(assets["llm"])
    tokenizer = AutoTokenizer.from_pretrained(assets["llm"])
    return llm, tokenizer, load_qa_dataset(assets["test"], "qa")


def test_eval_closed_book_matches_evaluate_mcq(assets, reference, tmp_path, capsys):
    output = tmp_path / "closed.json"
    code, out, _ = _run(
        ["eval", "--model", assets["llm"], "--data", assets["test"], "--format", "qa"]
        + ["--mode", "closed-book", "--output", output, "-q"],
        capsys,
    )
    assert code == 0
    saved = json.loads(output.read_text())
    llm, tokenizer, test = reference
    expected = evaluate_mcq(llm, tokenizer, test, show_progress_bar=False)
    result = saved["results"]["test"]
    assert result["accuracy"] == expected.accuracy and result["mode"] == "closed-book"
    assert result["questions"] == len(test)
    assert result["k"] is None and saved["settings"]["k"] == 0  # no passages in a closed-book prompt
    assert saved["details"]["test"]["predictions"] == expected.predictions
    assert "| dataset | mode | k | accuracy | questions |" in out


def test_eval_rag_matches_evaluate_mcq_with_retrieved_passages(assets, reference, tmp_path, capsys):
    output = tmp_path / "rag.json"
    code, _, _ = _run(
        ["eval", "--model", assets["llm"], "--data", assets["test"], "--index", assets["index"]]
        + [
            "--retriever",
            assets["retriever"],
            "--k",
            "2",
            "--max-context-tokens",
            "200",
            "--output",
            output,
            "-q",
        ],
        capsys,
    )
    assert code == 0
    saved = json.loads(output.read_text())
    llm, tokenizer, test = reference
    index = DocumentIndex.load(assets["index"], JMLRRetriever.from_pretrained(assets["retriever"]))
    passages = retrieve_passages(index, test, k=2)
    expected = evaluate_mcq(
        llm, tokenizer, test, passages=passages, max_context_tokens=200, show_progress_bar=False
    )
    result = saved["results"]["test"]
    assert result["mode"] == "rag" and result["k"] == 2  # rag is the default when an index is given
    assert result["accuracy"] == expected.accuracy
    assert saved["details"]["test"]["predictions"] == expected.predictions
    assert saved["details"]["test"]["passages"] == [[h["passage_id"] for h in row] for row in passages]


def test_eval_mirage_subset_and_limit(assets, tmp_path, capsys):
    rows = [dict(r) for r in assets["task"].test]
    benchmark = {
        "medqa": {
            f"q{i}": {"question": r["question"], "options": r["options"], "answer": r["answer"]}
            for i, r in enumerate(rows)
        },
        "pubmedqa": {
            "p0": {
                "question": "Does it work?",
                "options": {"A": "yes", "B": "no", "C": "maybe"},
                "answer": "A",
            }
        },
    }
    path = tmp_path / "benchmark.json"
    path.write_text(json.dumps(benchmark))
    output = tmp_path / "mirage.json"
    code, out, _ = _run(
        ["eval", "--model", assets["llm"], "--data", path, "--format", "mirage", "--mirage-subset", "medqa"]
        + ["--limit", "3", "--output", output, "-q"],
        capsys,
    )
    assert code == 0
    saved = json.loads(output.read_text())
    assert list(saved["results"]) == ["medqa"] and saved["results"]["medqa"]["questions"] == 3
    # --limit: a seeded sample stratified by answer (jmlr_hf.evaluation.sample_indices), not the first 3
    picked = sample_indices(rows, 3, seed=0)
    assert saved["details"]["medqa"]["ids"] == [f"medqa-q{i}" for i in picked]
    assert saved["settings"]["seed"] == 0


# ---------------------------------------------------------------------------------------------------
# ask
# ---------------------------------------------------------------------------------------------------


def test_ask_prints_the_answer_and_the_cited_passages(assets, capsys):
    question = assets["task"].test[0]["question"]
    code, out, _ = _run(
        [
            "ask",
            question,
            "--model",
            assets["llm"],
            "--index",
            assets["index"],
            "--retriever",
            assets["retriever"],
        ]
        + ["--k", "3", "--max-new-tokens", "4"],
        capsys,
    )
    assert code == 0
    index = DocumentIndex.load(assets["index"], JMLRRetriever.from_pretrained(assets["retriever"]))
    hits = index.search([question], k=3)[0]
    assert f"Q: {question}" in out and "\nA: " in out
    for rank, hit in enumerate(hits, 1):
        assert re.search(rf"^\[{rank}\] .*\({re.escape(hit['doc_id'])}, -?[0-9.]+\)$", out, re.MULTILINE)


def test_ask_with_options(assets, capsys):
    code, out, _ = _run(
        ["ask", "Which drug?", "--option", "A=Velorin", "--option", "B=Tramix", "--model", assets["llm"]]
        + [
            "--index",
            assets["index"],
            "--retriever",
            assets["retriever"],
            "--k",
            "1",
            "--max-new-tokens",
            "2",
        ],
        capsys,
    )
    assert code == 0 and "   A. Velorin" in out and "[1] " in out


def _ask_hits(assets, question, k):
    index = DocumentIndex.load(assets["index"], JMLRRetriever.from_pretrained(assets["retriever"]))
    return index.search([question], k=k)[0]


def test_ask_lists_exactly_the_passages_that_fit_the_context_budget(assets, llm_tokenizer, capsys):
    from jmlr_hf.prompting import PromptBuilder

    question = assets["task"].test[0]["question"]
    argv = ["ask", question, "--model", assets["llm"], "--index", assets["index"]]
    argv += ["--retriever", assets["retriever"], "--k", "4", "--max-context-tokens", "40"]
    argv += ["--max-new-tokens", "2"]
    code, out, _ = _run(argv, capsys)
    assert code == 0
    hits = _ask_hits(assets, question, 4)
    placed = PromptBuilder(llm_tokenizer, max_context_tokens=40).placed_passages(hits)
    assert 0 < len(placed) < 4  # the budget dropped some of the 4 retrieved
    listed = re.findall(r"^\[(\d+)\] .*\((\S+), -?[0-9.]+\)$", out, re.MULTILINE)
    assert listed == [(str(rank), p["doc_id"]) for rank, p in enumerate(placed, 1)]
    assert f"{len(placed)} of the 4 retrieved fit the 40-token context budget" in out


def test_ask_k_defaults_to_the_trained_num_context_docs(assets, tmp_path, capsys):
    model = tmp_path / "trained"
    shutil.copytree(assets["llm"], model)
    (model / "jmlr_inference.json").write_text(json.dumps({"num_context_docs": 2}))
    question = assets["task"].test[0]["question"]
    argv = ["ask", question, "--model", model, "--index", assets["index"], "--retriever", assets["retriever"]]
    code, out, _ = _run(argv + ["--max-new-tokens", "2"], capsys)
    assert code == 0 and "2 of the 2 retrieved fit" in out
    assert re.search(r"^\[2\] ", out, re.MULTILINE) and not re.search(r"^\[3\] ", out, re.MULTILINE)


# ---------------------------------------------------------------------------------------------------
# train (then eval the trained folder: JMLR mode picks up retriever/ and index/)
# ---------------------------------------------------------------------------------------------------


def test_train_from_yaml_with_cli_override_then_eval_the_trained_folder(assets, tmp_path, capsys):
    output_dir = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(
        "\n".join(
            [
                f"llm_name_or_path: {assets['llm']}",
                f"retriever_name_or_path: {assets['retriever']}",
                f"train_file: {assets['train']}",
                f"corpus_files: [{assets['corpus']}]",
                "index_backend: exact",
                f"output_dir: {output_dir}",
                "max_steps: 50",  # overridden on the command line
                "per_device_train_batch_size: 2",
                "num_candidate_docs: 4",
                "num_scored_docs: 2",
                "num_context_docs: 2",
                "max_context_tokens: 128",
                "index_refresh_steps: 1",
                "learning_rate: 1.0e-3",
                "logging_steps: 1",
                "save_strategy: 'no'",
                "report_to: none",
                "use_cpu: true",
                "dataloader_num_workers: 0",
            ]
        )
    )
    code, out, err = _run(["train", "--config", config, "--max_steps", "2"], capsys)
    assert code == 0, err
    assert "Trained 2 steps" in out
    for name in ("config.json", "model.safetensors", "tokenizer.json", "jmlr_inference.json"):
        assert (output_dir / name).is_file(), name
    assert (output_dir / "retriever" / "config.json").is_file()
    assert (output_dir / "index" / "index_config.json").is_file()
    trained = JMLRRetriever.from_pretrained(output_dir / "retriever")
    original = JMLRRetriever.from_pretrained(assets["retriever"])
    assert not torch.equal(trained.linear.weight, original.linear.weight)  # the retriever was trained
    DocumentIndex.load(output_dir / "index", trained)  # re-encoded with the trained retriever: not stale
    assert json.loads((output_dir / "jmlr_inference.json").read_text())["max_context_tokens"] == 128

    # JMLR: the trained LLM with its trained retriever and index, found inside the folder
    result_file = tmp_path / "jmlr.json"
    code, out, err = _run(
        ["eval", "--model", output_dir, "--data", assets["test"], "--output", result_file, "-q"], capsys
    )
    assert code == 0, err
    saved = json.loads(result_file.read_text())
    assert saved["settings"]["mode"] == "rag" and saved["settings"]["k"] == 2
    assert saved["settings"]["retriever"] == str(output_dir / "retriever")
    assert saved["settings"]["max_context_tokens"] == 128


# ---------------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------------


def test_demo_runs_run_demo_and_prints_table_files_and_notice(monkeypatch, tmp_path, capsys):
    import jmlr_hf.demo_run as demo_run

    seen = {}

    def fake_run_demo(config):
        seen["config"] = config
        return {
            "results": {
                "closed-book (base LLM)": {"accuracy": 0.25},
                "JMLR (LLM + retriever trained)": {"accuracy": 0.5},
            },
            "num_test_questions": 4,
            "num_train_questions": 8,
            "train_seconds": 1.0,
            "total_seconds": 2.0,
        }

    monkeypatch.setattr(demo_run, "run_demo", fake_run_demo)
    code, out, _ = _run(
        ["demo", "--output-dir", tmp_path, "--max-steps", "3", "--seed", "5", "--num-facts", "20"], capsys
    )
    assert code == 0
    config = seen["config"]
    assert (config.output_dir, config.max_steps, config.seed, config.num_facts) == (str(tmp_path), 3, 5, 20)
    assert "| JMLR (LLM + retriever trained) | 0.500 |" in out
    assert str(tmp_path / "results.json") in out and "not medical advice" in out


@pytest.mark.slow
def test_retrieval_demo_on_embedded_defaults(capsys, encoder_path):
    assert main(["demo", "--retrieval-only", "--num-facts", "16", "--k", "3", "--backend", "exact"]) == 0
    out = capsys.readouterr().out
    recall = float(
        re.search(r"recall@3 of the gold passage on \d+ held-out questions: ([0-9.]+)", out).group(1)
    )
    assert recall >= 0.75  # the condition name is in the question and in its passage


# ---------------------------------------------------------------------------------------------------
# errors: one line naming the file / row / key on stderr, exit status 2
# ---------------------------------------------------------------------------------------------------


def test_missing_corpus_file(assets, tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    code, _, err = _run(
        ["index", "--corpus", missing, "--output", tmp_path / "ix", "--retriever", assets["retriever"]],
        capsys,
    )
    assert code == 2 and str(missing) in err and err.startswith("jmlr index: error:")


def test_malformed_jsonl_corpus_line(assets, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "title": "t", "text": "fine"}\n{"id": "b", "text": oops}\n')
    code, _, err = _run(
        ["index", "--corpus", bad, "--output", tmp_path / "ix", "--retriever", assets["retriever"]], capsys
    )
    assert code == 2 and str(bad) in err and "line 2" in err


def test_malformed_qa_row_in_eval_data(assets, tmp_path, capsys):
    bad = _write_jsonl(
        tmp_path / "qa.jsonl",
        [
            {"id": "ok", "question": "Q?", "options": {"A": "x", "B": "y"}, "answer": "A"},
            {"id": "broken", "question": "Q?", "options": {"A": "x", "B": "y"}, "answer": "Z"},
        ],
    )
    code, _, err = _run(["eval", "--model", assets["llm"], "--data", bad, "-q"], capsys)
    assert code == 2 and str(bad) in err and "broken" in err and "row 1" in err


def test_missing_paths_in_eval_and_ask(assets, tmp_path, capsys):
    code, _, err = _run(["eval", "--model", assets["llm"], "--data", tmp_path / "none.jsonl"], capsys)
    assert code == 2 and "none.jsonl" in err
    code, _, err = _run(["eval", "--model", tmp_path / "no-model", "--data", assets["test"]], capsys)
    assert code == 2 and "no-model" in err
    code, _, err = _run(["ask", "Q?", "--model", assets["llm"], "--index", tmp_path / "no-index"], capsys)
    assert code == 2 and "no-index" in err
    code, _, err = _run(["eval", "--model", assets["llm"], "--data", assets["test"], "--mode", "rag"], capsys)
    assert code == 2 and "--index" in err


def test_bad_train_config(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("demo: true\nlearning_rat: 1.0e-4\n")
    code, _, err = _run(["train", "--config", config], capsys)
    assert code == 2 and "learning_rat" in err and str(config) in err and "learning_rate" in err
    code, _, err = _run(["train", "--config", tmp_path / "missing.yaml"], capsys)
    assert code == 2 and "missing.yaml" in err
    config.write_text("demo: [true\n")
    code, _, err = _run(["train", "--config", config], capsys)
    assert code == 2 and str(config) in err and "YAML" in err


def test_unknown_flag_of_a_non_train_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["index", "--output", "x", "--bogus"])
    assert exit_info.value.code == 2
    assert "--bogus" in capsys.readouterr().err
