"""The `jmlr` command as a new user meets it: fast --help, --config for every command, one-line errors that
name the file (config values, broken index files, non-UTF-8 data, truncated weights), training that says what
it does, progress bars that count passages, and the joint-step metrics split into train / eval."""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jmlr_hf.cli import main
from jmlr_hf.data import make_demo_task
from testing_utils import make_cli_assets
from testing_utils import run_cli as _run

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _error_line(err: str, command: str) -> str:
    """The one error line of stderr (progress bars may come before it), without a traceback."""
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1].split("\r")[-1]
    assert last.startswith(f"jmlr {command}: error: "), err
    return last


@pytest.fixture(scope="module")
def assets(tmp_path_factory, llm_tokenizer, bert_tokenizer):
    """The CLI test assets, and a `jmlr train`-style folder: the LLM with retriever/ and a faiss index/."""
    assets = make_cli_assets(tmp_path_factory.mktemp("usability"), llm_tokenizer, bert_tokenizer, "faiss")
    model = assets["model"] = assets["root"] / "model"
    shutil.copytree(assets["llm"], model)
    shutil.copytree(assets["retriever"], model / "retriever")
    shutil.copytree(assets["index"], model / "index")
    return assets


# ---------------------------------------------------------------------------------------------------
# --help: fast, without torch / transformers
# ---------------------------------------------------------------------------------------------------


def _python(code: str, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=120
    )


def test_building_every_parser_imports_neither_torch_nor_transformers():
    done = _python(
        "import sys\n"
        "from jmlr_hf.cli import build_parser\n"
        "from jmlr_hf.cli.commands import COMMANDS\n"
        "build_parser().format_help()\n"
        "for command in COMMANDS.values(): command.parser().format_help()\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["eval", "--help"], ["ask", "--help"]])
def test_every_help_answers_in_under_two_seconds(argv):
    start = time.perf_counter()
    done = _python("from jmlr_hf.cli import console_main; console_main()", *argv)
    seconds = time.perf_counter() - start
    assert done.returncode == 0 and "usage: jmlr" in done.stdout, done.stderr
    assert seconds < 2.0, f"jmlr {' '.join(argv)} took {seconds:.1f}s"


def test_import_jmlr_hf_registers_once_transformers_is_imported():
    done = _python(
        "import sys, jmlr_hf\n"
        "print('torch' in sys.modules)\n"
        "from transformers import AttentionInterface, AutoConfig\n"
        "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
        "print('s2_attn' in AttentionInterface._global_mapping, 'jmlr_retriever' in CONFIG_MAPPING)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True"]


def test_train_help_shows_the_recipe_and_how_to_skip_the_final_reencoding(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for text in ("--llm_name_or_path", "--data_format {qa,medqa,medmcqa,mmlu,pubmedqa}", "--help-all"):
        assert text in out
    assert "--save_index false skips" in " ".join(out.split())


# ---------------------------------------------------------------------------------------------------
# --config for every command; config values typed like flags, errors name the file and key
# ---------------------------------------------------------------------------------------------------


def test_every_command_takes_a_config_file_and_both_flag_spellings(assets, tmp_path, capsys):
    config = tmp_path / "index.yaml"
    config.write_text(
        f"corpus: [{assets['corpus']}]\nretriever: {assets['retriever']}\noutput: {tmp_path / 'ix'}\n"
        "backend: exact\nchunk-tokens: 32\nchunk_overlap: 8\nquiet: true\n"
    )
    code, out, err = _run(["index", "--config", config, "--chunk_tokens", "40"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "ix" / "index_config.json").read_text())["chunk_tokens"] == 40  # flag wins


@pytest.mark.parametrize(
    "command, line, key",
    [
        ("train", "num_context_docs: 2.5", "num_context_docs"),
        ("train", "max_steps: [1, 2]", "max_steps"),
        ("train", "max_steps: ten", "max_steps"),
        ("eval", "limit: ten", "limit"),
        ("index", "backend: annoy", "backend"),
        ("ask", "k: 1.5", "k"),
    ],
)
def test_bad_config_values_fail_before_anything_loads(command, line, key, tmp_path, capsys, monkeypatch):
    import jmlr_hf.recipe

    def must_not_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(jmlr_hf.recipe, "run_training", must_not_load)
    monkeypatch.setattr(jmlr_hf.recipe, "load_retriever", must_not_load)
    config = tmp_path / "bad.yaml"
    config.write_text(f"{line}\n")
    code, _, err = _run(
        [command, "--config", config, "--demo", "true"]
        if command == "train"
        else [command, "--config", config],
        capsys,
    )
    assert code == 2 and err.startswith(f"jmlr {command}: error: {config}: {key}:") and err.count("\n") == 1


def test_unknown_flag_is_a_usage_error_with_the_closest_one(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--demo", "--max_stepz", "2"])
    assert exit_info.value.code == 2
    assert "did you mean --max_steps?" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# broken files: one line naming the file, exit status 2
# ---------------------------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


@pytest.mark.parametrize(
    "name, damage, expected",
    [
        ("vectors.npy", _truncate, "vectors.npy: cannot be read"),
        ("faiss.index", _truncate, "faiss.index: cannot be read"),
        ("faiss.index", Path.unlink, "faiss.index: missing from the saved index"),
        ("index_config.json", _truncate, "index_config.json: cannot be read"),
        ("index_config.json", Path.unlink, "(no index_config.json)"),
        ("passages.arrow", Path.unlink, "passages.arrow: missing from the saved index"),
    ],
)
def test_broken_index_files_are_named_in_one_line(assets, tmp_path, capsys, name, damage, expected):
    model = tmp_path / "model"
    shutil.copytree(assets["model"], model)
    damage(model / "index" / name)
    code, out, err = _run(["ask", "Which drug?", "--model", model, "--max-new-tokens", "1"], capsys)
    line = _error_line(err, "ask")
    assert code == 2 and out == "" and expected in line and str(model / "index") in line


def test_truncated_weights_are_named_in_one_line(assets, tmp_path, capsys):
    retriever = tmp_path / "retriever"
    shutil.copytree(assets["retriever"], retriever)
    _truncate(retriever / "model.safetensors")
    code, _, err = _run(["ask", "Q?", "--model", assets["model"], "--retriever", retriever], capsys)
    assert code == 2 and f"{retriever / 'model.safetensors'}: cannot be read" in _error_line(err, "ask")


NOT_UTF8 = '{"id": "a", "title": "t", "text": "caf\xe9"}\n'.encode("latin-1")


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".jsonl.gz"])
def test_non_utf8_corpus_file_is_named_with_the_line(tmp_path, capsys, suffix):
    good = b'{"id": "b", "title": "t", "text": "fine"}\n'
    data = good + NOT_UTF8 if suffix != ".json" else b'[{"id": "a", "text": "caf\xe9"}]'
    bad = tmp_path / f"corpus{suffix}"
    bad.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    code, _, err = _run(["index", "--corpus", bad, "--output", tmp_path / "ix"], capsys)
    line = 1 if suffix == ".json" else 2
    assert code == 2 and f"{bad}, line {line}: byte 0xe9" in _error_line(err, "index") and "not UTF-8" in err


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_non_utf8_qa_file_is_named(assets, tmp_path, capsys, suffix):
    bad = tmp_path / f"qa{suffix}"
    bad.write_bytes(
        '{"id": "q", "question": "Caf\xe9?", "options": {"A": "x"}, "answer": "A"}\n'.encode("latin-1")
    )
    code, _, err = _run(["eval", "--model", assets["llm"], "--data", bad, "-q"], capsys)
    assert code == 2 and f"{bad}, line 1: byte 0xe9" in _error_line(err, "eval")


def test_truncated_parquet_qa_file_is_named(assets, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "qa.parquet"
    pq.write_table(pa.table({"id": ["q"], "question": ["Q?"], "answer": ["A"]}), bad)
    _truncate(bad)
    code, _, err = _run(["eval", "--model", assets["llm"], "--data", bad, "-q"], capsys)
    assert code == 2 and f"{bad}: not a readable Parquet file" in _error_line(err, "eval")


# ---------------------------------------------------------------------------------------------------
# ask: the question as the first argument or --question
# ---------------------------------------------------------------------------------------------------


def test_ask_takes_the_question_as_argument_or_flag_once(assets, capsys):
    base = ["--model", assets["model"], "--k", "1", "--max-new-tokens", "1"]
    code, out, err = _run(["ask", "--question", "Which drug?", *base], capsys)
    assert code == 0 and "Q: Which drug?" in out, err
    code, _, err = _run(["ask", "Which drug?", "--question", "Again?", *base], capsys)
    assert code == 2 and "give the question once" in err
    code, _, err = _run(["ask", *base], capsys)
    assert code == 2 and 'jmlr ask "QUESTION"' in err


# ---------------------------------------------------------------------------------------------------
# train: says what it does; --save_index false skips the final re-encoding
# ---------------------------------------------------------------------------------------------------


def test_train_logs_each_stage_and_can_skip_the_final_reencoding(assets, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="jmlr_hf")
    config = tmp_path / "run.yaml"
    config.write_text(
        f"llm_name_or_path: {assets['llm']}\nretriever_name_or_path: {assets['retriever']}\n"
        f"train_file: {assets['train']}\ncorpus_files: [{assets['corpus']}]\nindex_backend: exact\n"
        f"output_dir: {tmp_path / 'run'}\nmax_steps: 1\nper_device_train_batch_size: 1\nnum_candidate_docs: 4\n"
        "num_scored_docs: 2\nnum_context_docs: 2\nmax_context_tokens: 96\nsave_strategy: 'no'\nreport_to: none\n"
        "use_cpu: true\ndataloader_num_workers: 0\n"
    )
    code, out, err = _run(["train", "--config", config], capsys)
    assert code == 0, err
    text = caplog.text
    for stage in (
        "Loading the retriever",
        "Building the index the joint step retrieves from: 24 documents",
        "Indexed",
        "Loading the LLM",
        "Re-encoding the index",
    ):
        assert stage in text, stage
    assert (tmp_path / "run" / "index" / "index_config.json").is_file()
    caplog.clear()
    code, out, err = _run(
        ["train", "--config", config, "--save_index", "false", "--output_dir", tmp_path / "run2"], capsys
    )
    assert code == 0, err
    assert "Re-encoding the index" not in caplog.text and not (tmp_path / "run2" / "index").exists()
    assert (tmp_path / "run2" / "jmlr_inference.json").is_file()


def test_progress_bars_count_passages_not_batches(monkeypatch, tiny_retriever):
    import jmlr_hf.retriever.modeling_jmlr_retriever as modeling

    bars = []

    class Recorder:
        def __init__(self, total=None, desc=None, unit=None, disable=False):
            self.total, self.desc, self.unit, self.n = total, desc, unit, 0
            bars.append(self)

        def update(self, n):
            self.n += n

        def close(self):
            pass

    monkeypatch.setattr(modeling, "tqdm", Recorder)
    texts = [f"passage number {i} about drug {i}" for i in range(7)]
    tiny_retriever.encode_documents(texts, batch_size=3, show_progress_bar=True)
    tiny_retriever.encode_documents_flat(texts, batch_size=2, show_progress_bar=True)
    assert [(b.total, b.n, b.desc) for b in bars] == [(7, 7, "Encoding passages")] * 2


# ---------------------------------------------------------------------------------------------------
# the joint-step metrics: train and eval apart, eval keys prefixed, gathered across processes
# ---------------------------------------------------------------------------------------------------


def test_metrics_are_split_into_train_and_eval(tmp_path, llm_tokenizer, bert_tokenizer):
    from testing_utils import make_trainer

    demo = make_demo_task(num_facts=8, seed=0)
    trainer = make_trainer(tmp_path, llm_tokenizer, bert_tokenizer, demo, max_steps=2, logging_steps=1)
    gathered = []
    gather = trainer.accelerator.gather
    trainer.accelerator.gather = lambda tensor: gathered.append(tensor.shape) or gather(tensor)
    trainer.train()
    metrics = trainer.evaluate(eval_dataset=demo.test.select(range(2)))
    train_logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(train_logs) == 2 and all("lm_loss" in h and "rank_loss" in h for h in train_logs)
    assert not any(k.startswith("eval_") for h in train_logs for k in h)
    assert {"eval_loss", "eval_lm_loss", "eval_rank_loss", "eval_rank_agreement_kendall_tau"} <= set(metrics)
    assert "lm_loss" not in metrics
    from jmlr_hf.trainer.trainer import METRIC_NAMES

    # gathered once per log call that carries a loss (2 train, 1 eval), beside Trainer's own gathers
    assert [tuple(s) for s in gathered].count((1, len(METRIC_NAMES), 2)) == 3
    assert not trainer._metrics["train"] and not trainer._metrics["eval"]
