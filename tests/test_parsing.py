"""JMLRParser (TRL's TrlParser + typed config values) and the Literal choice types, without loading models."""

from __future__ import annotations

import argparse
import typing
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from jmlr_hf.choices import DType, IndexBackend, MCQMethod, QAFormat, invalid_choices
from jmlr_hf.parsing import JMLRParser, UnknownArgumentsError
from jmlr_hf.recipe import DataArguments, ModelArguments, parse_args


@dataclass
class Options:
    max_steps: int = 10
    rate: float = 0.5
    backend: IndexBackend = "auto"
    corpus: list[str] | None = None
    modules: list[str] = field(default_factory=lambda: ["all-linear"])
    use_lora: bool = False
    limit: int | None = 3
    name: str | None = None


def _parse(tmp_path: Path, yaml_text: str, *argv: str) -> Options:
    config = tmp_path / "run.yaml"
    config.write_text(yaml_text)
    return JMLRParser(Options).parse_args_and_config(["--config", str(config), *argv])[0]


# ---------------------------------------------------------------------------------------------------
# config values go through the flags' typed parsing; errors name the file and the key
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("max_steps: 2.5\n", r"run\.yaml: max_steps: invalid int value 2\.5"),
        ("max_steps: [1, 2]\n", r"run\.yaml: max_steps: expected one int value, got \[1, 2\]"),
        ("max_steps: ten\n", r"run\.yaml: max_steps: invalid int value 'ten'"),
        ("max_steps: true\n", r"run\.yaml: max_steps: invalid int value True; YAML reads unquoted yes/no"),
        ("backend: annoy\n", r"run\.yaml: backend: 'annoy' is not one of auto, exact, faiss"),
        ("use_lora: maybe\n", r"run\.yaml: use_lora: invalid bool value 'maybe'"),
        ("rate: {a: 1}\n", r"run\.yaml: rate: expected one float value"),
        ("max_steps: null\n", r"run\.yaml: max_steps: invalid int value 'null'"),
        (
            "max_stepz: 3\n",
            r"run\.yaml: unknown key 'max_stepz' \(not an option of Options\); did you mean 'max_steps'",
        ),
    ],
)
def test_bad_config_values_name_the_file_and_the_key(tmp_path, yaml_text, message):
    with pytest.raises(ValueError, match=message):
        _parse(tmp_path, yaml_text)


def test_config_values_are_converted_like_flags(tmp_path):
    args = _parse(
        tmp_path,
        "max-steps: 3\nrate: 1\nbackend: exact\ncorpus: a.jsonl\nmodules: [q_proj, v_proj]\nuse_lora: yes\n"
        "limit: null\nname: 123\n",
    )
    assert args == Options(3, 1.0, "exact", ["a.jsonl"], ["q_proj", "v_proj"], True, None, "123")
    assert isinstance(args.rate, float) and isinstance(args.max_steps, int)
    # flags win over the config, in either spelling
    args = _parse(tmp_path, "max_steps: 3\nrate: 0.1\n", "--max-steps", "4", "--rate=0.2")
    assert (args.max_steps, args.rate) == (4, 0.2)


def test_list_options_take_several_values_or_repeats_and_replace_the_default(tmp_path):
    parser_args = ["--corpus", "a", "b", "--corpus", "c", "--modules", "o_proj"]
    args = JMLRParser(Options).parse_args_and_config(parser_args)[0]
    assert args.corpus == ["a", "b", "c"] and args.modules == ["o_proj"]
    args = _parse(tmp_path, "corpus: [x]\n", "--corpus", "y")
    assert args.corpus == ["y"]  # a flag replaces the config's list


def test_unknown_flag_is_refused_before_the_dataclasses_check_their_values():
    @dataclass
    class Strict:
        output: str = "x"

        def __post_init__(self):
            raise AssertionError("must not be built")

    with pytest.raises(UnknownArgumentsError, match=r"--outptu x; did you mean --output\?"):
        JMLRParser(Strict).parse_args_and_config(["--outptu", "x"])


def test_env_section_sets_environment_variables(tmp_path, monkeypatch):
    monkeypatch.delenv("JMLR_TEST_VARIABLE", raising=False)
    _parse(tmp_path, "env:\n  JMLR_TEST_VARIABLE: 7\nmax_steps: 1\n")
    import os

    assert os.environ.pop("JMLR_TEST_VARIABLE") == "7"
    with pytest.raises(ValueError, match=r"run\.yaml: env must be a mapping"):
        _parse(tmp_path, "env: [1]\n")


def test_config_field_is_reserved_by_trl():
    @dataclass
    class WithConfig:
        config: str = "x"

    with pytest.raises(ValueError, match="reserved"):
        JMLRParser(WithConfig)


# ---------------------------------------------------------------------------------------------------
# the recipe: typed YAML values before anything loads, TRL's ModelConfig spellings
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, message",
    [
        ("num_context_docs: 2.5", r"cfg\.yaml: num_context_docs: invalid int value 2\.5"),
        ("max_steps: [1, 2]", r"cfg\.yaml: max_steps: expected one int value"),
        ("max_steps: ten", r"cfg\.yaml: max_steps: invalid int value 'ten'"),
        ("rank_loss: pairwise", r"cfg\.yaml: rank_loss: 'pairwise' is not one of llm_rank, pdist"),
        ("data_format: medqa2", r"cfg\.yaml: data_format: 'medqa2' is not one of qa, medqa"),
        ("save_strategy: no", r"cfg\.yaml: save_strategy: False is not one of .*quote it"),
    ],
)
def test_recipe_config_values_are_typed(tmp_path, line, message):
    config = tmp_path / "cfg.yaml"
    config.write_text(f"demo: true\n{line}\n")
    with pytest.raises(ValueError, match=message):
        parse_args([], config_file=config)


def test_trl_model_config_spellings_and_dashed_flags(tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text("demo: true\nmodel_name_or_path: my/llm\nuse_peft: true\ntorch_dtype: bfloat16\n")
    model_args, data_args, training_args = parse_args(
        ["--lora-target-modules", "q_proj,v_proj", "--max-steps", "3"], config_file=config
    )
    assert model_args.llm_name_or_path == "my/llm" and model_args.use_lora and model_args.dtype == "bfloat16"
    assert model_args.lora_target_modules == ["q_proj", "v_proj"] and training_args.max_steps == 3
    config.write_text("demo: true\ndtype: float32\ntorch_dtype: bfloat16\n")
    with pytest.raises(ValueError, match=r"'torch_dtype' is given twice"):
        parse_args([], config_file=config)


def test_lora_config_comes_from_trls_get_peft_config():
    import torch

    from jmlr_hf.recipe import lora_config

    model = torch.nn.Linear(2, 2)
    config = lora_config(ModelArguments(use_lora=True, lora_r=4, lora_target_modules=["q_proj"]), model)
    assert (
        config.target_modules == {"q_proj"} and config.r == 4 and config.bias == "none"
    )  # a set, not a regex
    assert lora_config(ModelArguments(use_lora=True), model).target_modules == "all-linear"


# ---------------------------------------------------------------------------------------------------
# Literal choices: --help lists them, dataclasses built in Python are checked, one definition each
# ---------------------------------------------------------------------------------------------------


def test_literal_fields_are_argparse_choices():
    from jmlr_hf import JMLRTrainingArguments

    parser = JMLRParser((ModelArguments, DataArguments, JMLRTrainingArguments))
    choices = {a.dest: a.choices for a in parser._actions if a.choices is not None}
    assert choices["rank_loss"] == ("llm_rank", "pdist") and choices["candidate_sampling"] == (
        "sample",
        "top",
    )
    assert choices["utility_precision"] == ("auto", "bf16", "fp32")
    assert choices["index_backend"] == typing.get_args(IndexBackend)
    assert choices["data_format"] == typing.get_args(QAFormat) and choices["dtype"] == typing.get_args(DType)
    help_text = parser.format_help()
    assert "{llm_rank,pdist}" in help_text and "{auto,exact,faiss}" in help_text


def test_dataclasses_built_in_python_check_their_choices():
    from jmlr_hf import JMLRTrainingArguments

    with pytest.raises(ValueError, match="rank_loss must be one of llm_rank, pdist, got 'x'"):
        JMLRTrainingArguments(output_dir="o", rank_loss="x", use_cpu=True)
    with pytest.raises(ValueError, match="dtype must be one of auto, bfloat16"):
        ModelArguments(dtype="fp8")
    assert invalid_choices(ModelArguments(dtype=None)) == []


def test_remove_unused_columns_is_declared_false_and_true_is_refused():
    from jmlr_hf import JMLRTrainingArguments

    assert JMLRTrainingArguments(output_dir="o", use_cpu=True).remove_unused_columns is False
    with pytest.raises(ValueError, match="remove_unused_columns must be False"):
        JMLRTrainingArguments(output_dir="o", use_cpu=True, remove_unused_columns=True)


def test_choice_types_match_the_library():
    from jmlr_hf.data.qa import QA_FORMATS
    from jmlr_hf.evaluation.mcq import METHODS
    from jmlr_hf.retriever import index

    assert set(typing.get_args(QAFormat)) == set(QA_FORMATS)
    assert typing.get_args(MCQMethod) == tuple(METHODS)
    assert typing.get_args(IndexBackend) == typing.get_args(index.Backend)


def test_help_formatter_keeps_paragraphs():
    parser = JMLRParser(Options, prog="x", epilog="first paragraph\n\nExample: x --max_steps 1")
    assert "first paragraph\n\nExample: x --max_steps 1" in parser.format_help()
    assert isinstance(parser, argparse.ArgumentParser)
