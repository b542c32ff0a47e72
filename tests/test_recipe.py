"""jmlr_hf.recipe: YAML + command-line parsing, data and model loading, run_training (resume, LoRA)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from transformers import BertConfig, BertModel, TrainerCallback

from jmlr_hf.cli import main
from jmlr_hf.data import make_demo_task
from jmlr_hf.recipe import (
    DataArguments,
    ModelArguments,
    _resume_checkpoint,
    load_llm_and_tokenizer,
    load_retriever,
    load_training_data,
    lora_config,
    parse_args,
    run_training,
)
from testing_utils import save_tiny_models

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "configs"


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory, llm_tokenizer, bert_tokenizer):
    root = tmp_path_factory.mktemp("recipe")
    llm_dir, retriever_dir = save_tiny_models(root, llm_tokenizer, bert_tokenizer)
    task = make_demo_task(num_facts=8, seed=0, related_docs_per_fact=1)
    keep = ("id", "question", "options", "answer", "explanation")
    return {
        "root": root,
        "llm": llm_dir,
        "retriever": retriever_dir,
        "corpus": _write_jsonl(root / "corpus.jsonl", task.corpus.to_list()),
        "train": _write_jsonl(root / "train.jsonl", [{k: r[k] for k in keep} for r in task.train]),
        "task": task,
    }


def _config(tmp_path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------------------


def test_yaml_values_with_command_line_overrides(tmp_path):
    config = _config(
        tmp_path,
        "demo: true\noutput_dir: out\nmax_steps: 3\nlearning_rate: 1.0e-4\nuse_lora: true\n"
        "lora_target_modules: [q_proj, v_proj]\ntorch_dtype: float32\nnum_context_docs: 5\nuse_cpu: true\n",
    )
    model_args, data_args, training_args = parse_args([], config_file=config)
    assert (training_args.max_steps, training_args.learning_rate, training_args.num_context_docs) == (
        3,
        1e-4,
        5,
    )
    assert model_args.use_lora and model_args.lora_target_modules == ["q_proj", "v_proj"]
    assert model_args.dtype == "float32" and data_args.demo and training_args.output_dir == "out"

    # flags win over the file; --config inside argv works like config_file
    model_args, data_args, training_args = parse_args(
        [
            "--config",
            str(config),
            "--max_steps",
            "7",
            "--use_lora",
            "false",
            "--lora_target_modules",
            "o_proj",
        ]
        + ["--torch_dtype", "bfloat16", "--output_dir", "other"]
    )
    assert training_args.max_steps == 7 and training_args.learning_rate == 1e-4  # untouched keys stay
    assert not model_args.use_lora and model_args.lora_target_modules == ["o_proj"]
    assert model_args.dtype == "bfloat16" and training_args.output_dir == "other"


def test_unknown_config_key_names_the_key_and_the_file(tmp_path):
    config = _config(tmp_path, "demo: true\nnum_candidate_doc: 30\n")
    with pytest.raises(
        ValueError, match=r"config\.yaml: unknown key 'num_candidate_doc'.*'num_candidate_docs'"
    ):
        parse_args([], config_file=config)


def test_bad_config_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        parse_args([], config_file=tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="config.yaml: invalid YAML"):
        parse_args([], config_file=_config(tmp_path, "demo: [true\n"))
    with pytest.raises(ValueError, match="config.yaml: a config must be a mapping"):
        parse_args([], config_file=_config(tmp_path, "- demo\n- true\n"))
    # an unknown flag is named, with the closest real one
    with pytest.raises(
        ValueError, match=r"unknown command-line argument\(s\) --max_stepz 2; did you mean --max_steps"
    ):
        parse_args(["--max_stepz", "2"], config_file=_config(tmp_path, "demo: true\n"))
    # dataclass validation errors name the config
    with pytest.raises(ValueError, match=r"num_context_docs.*config\.yaml"):
        parse_args([], config_file=_config(tmp_path, "demo: true\nnum_context_docs: 40\n"))


def test_data_arguments_validation():
    with pytest.raises(ValueError, match="give train_file or dataset_name"):
        DataArguments(corpus_files=["c.jsonl"])
    with pytest.raises(ValueError, match="give corpus_files"):
        DataArguments(train_file="t.jsonl")
    with pytest.raises(ValueError, match="data_format must be one of"):
        DataArguments(train_file="t.jsonl", corpus_files=["c.jsonl"], data_format="medqa2")
    with pytest.raises(ValueError, match="demo uses the synthetic task"):
        DataArguments(demo=True, train_file="t.jsonl")
    with pytest.raises(ValueError, match="load_in_4bit .* needs use_lora"):
        ModelArguments(load_in_4bit=True)
    assert DataArguments(train_file="t.jsonl", corpus_files="c.jsonl").corpus_files == ["c.jsonl"]


@pytest.mark.parametrize("name", ["paper-13b", "paper-7b", "cpu-demo"])
def test_example_configs_parse(name):
    # bf16 needs a GPU (or a bf16 CPU) to validate; the configs' keys and values are what is checked here
    model_args, data_args, training_args = parse_args(
        ["--bf16", "false"], config_file=EXAMPLES / f"{name}.yaml"
    )
    if name.startswith("paper"):
        assert (training_args.num_candidate_docs, training_args.num_scored_docs) == (30, 10)
        assert training_args.num_context_docs == 7 and training_args.index_refresh_steps > 0
        assert model_args.use_lora and model_args.attn_implementation == "s2_attn"
        assert "Llama-2" in model_args.llm_name_or_path and data_args.data_format == "medqa"
        assert training_args.max_context_tokens >= 4096
    else:
        assert data_args.demo and model_args.llm_name_or_path is None and training_args.use_cpu


# ---------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------


def test_training_data_from_files_demo_and_several_corpora(assets, tmp_path):
    rows = assets["task"].corpus.to_list()
    a, b = _write_jsonl(tmp_path / "a.jsonl", rows[:4]), _write_jsonl(tmp_path / "b.jsonl", rows[4:])
    args = DataArguments(train_file=str(assets["train"]), corpus_files=[str(a), str(b)], max_train_samples=3)
    train, evaluation, corpus = load_training_data(args)
    assert len(train) == 3 and evaluation is None and corpus["id"] == [r["id"] for r in rows]
    # the same id in two files
    _write_jsonl(tmp_path / "b.jsonl", rows[3:])
    with pytest.raises(ValueError, match="duplicate id"):
        load_training_data(args)
    # the demo task: 3 related (hard negative) passages per fact, held-out questions as the eval set
    train, evaluation, corpus = load_training_data(DataArguments(demo=True, demo_num_facts=8), seed=1)
    assert len(corpus) == 8 * 4 and len(evaluation) > 0 and "gold_doc_id" in train.column_names


def test_load_retriever_layouts(assets, bert_tokenizer, tmp_path):
    # a plain encoder gets a seeded new head: the same name gives the same retriever
    encoder = tmp_path / "encoder"
    BertModel(
        BertConfig(
            vocab_size=bert_tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        )
    ).save_pretrained(encoder)
    bert_tokenizer.save_pretrained(encoder)
    first, second = load_retriever(str(encoder), dim=8), load_retriever(str(encoder), dim=8)
    assert first.config.dim == 8 and first.weights_fingerprint() == second.weights_fingerprint()
    # a folder written by JMLRTrainer.save_model: the LLM at the top, the retriever in retriever/
    trained = tmp_path / "trained"
    (trained / "retriever").mkdir(parents=True)
    (trained / "config.json").write_text(json.dumps({"model_type": "llama"}))
    load_retriever(assets["retriever"]).save_pretrained(trained / "retriever")
    assert (
        load_retriever(str(trained)).weights_fingerprint()
        == load_retriever(str(assets["retriever"])).weights_fingerprint()
    )
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        load_retriever(str(tmp_path / "no-such-dir"))


def test_lora_config_and_llm_loading(assets):
    model_args = ModelArguments(
        llm_name_or_path=str(assets["llm"]),
        attn_implementation="s2_attn",
        s2_group_size_ratio=0.5,
        use_lora=True,
        lora_train_embeddings_and_norms=True,
        context_length=4096,
    )
    model, tokenizer = load_llm_and_tokenizer(model_args)
    assert model.config._attn_implementation == "s2_attn" and model.config.s2_group_size_ratio == 0.5
    assert model.config.max_position_embeddings == 4096  # 2048 extended by linear RoPE scaling
    config = lora_config(model_args, model)
    assert config.target_modules == "all-linear" and "embed_tokens" in config.modules_to_save
    assert lora_config(ModelArguments(), model) is None


def test_resume_checkpoint_resolution(tmp_path):
    from jmlr_hf import JMLRTrainingArguments

    args = JMLRTrainingArguments(output_dir=str(tmp_path), resume_from_checkpoint="last", use_cpu=True)
    assert _resume_checkpoint(args) is None  # nothing to resume yet: start from scratch
    complete = [
        "trainer_state.json",
        "jmlr_state.json",
        "retriever/config.json",
        "retriever/model.safetensors",
    ]
    complete += [
        f"index/{name}" for name in ("index_config.json", "passages.arrow", "vectors.npy", "doclens.npy")
    ]
    for step in (2, 10):  # complete checkpoints: the files JMLRTrainer checks for
        for name in complete:
            (tmp_path / f"checkpoint-{step}" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / f"checkpoint-{step}" / name).write_text("{}")
    (tmp_path / "checkpoint-11").mkdir()  # interrupted while saving: skipped
    assert _resume_checkpoint(args) == str(tmp_path / "checkpoint-10")
    args.resume_from_checkpoint = str(tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match="gone"):
        _resume_checkpoint(args)


# ---------------------------------------------------------------------------------------------------
# run_training
# ---------------------------------------------------------------------------------------------------


def _train_config(tmp_path, assets, **extra) -> list[str]:
    values = {
        "llm_name_or_path": assets["llm"],
        "retriever_name_or_path": assets["retriever"],
        "train_file": assets["train"],
        "corpus_files": [assets["corpus"]],
        "index_backend": "exact",
        "output_dir": tmp_path / "run",
        "per_device_train_batch_size": 2,
        "num_candidate_docs": 4,
        "num_scored_docs": 2,
        "num_context_docs": 2,
        "max_context_tokens": 96,
        "learning_rate": 1e-3,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "dataloader_num_workers": 0,
        **extra,
    }
    values = {
        k: [str(x) for x in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v
        for k, v in values.items()
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(values))
    return ["--config", str(tmp_path / "run.yaml")]


class StepsSeen(TrainerCallback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def test_run_training_resumes_from_the_last_checkpoint(assets, tmp_path):
    argv = _train_config(
        tmp_path,
        assets,
        save_strategy="steps",
        save_steps=1,
        max_steps=1,
        save_index=False,
        per_device_train_batch_size=1,
    )
    trainer = run_training(*parse_args(argv))
    assert trainer.state.global_step == 1 and (tmp_path / "run" / "checkpoint-1" / "index").is_dir()
    assert not (tmp_path / "run" / "index").exists()  # save_index: false
    steps = StepsSeen()
    trainer = run_training(
        *parse_args([*argv, "--max_steps", "2", "--resume_from_checkpoint", "last"]), callbacks=[steps]
    )
    assert trainer.state.global_step == 2 and steps.steps == [2]  # step 1 was not redone


def test_lora_training_writes_an_adapter_that_jmlr_eval_loads(assets, tmp_path, capsys):
    argv = _train_config(tmp_path, assets, max_steps=1, use_lora=True, lora_r=4)
    trainer = run_training(*parse_args(argv))
    out = tmp_path / "run"
    assert (out / "adapter_config.json").is_file() and (out / "retriever" / "config.json").is_file()
    assert any(g.get("name") == "retriever" for g in trainer.optimizer.param_groups)
    test = _write_jsonl(tmp_path / "test.jsonl", [dict(r) for r in assets["task"].test][:2])
    code = main(
        ["eval", "--model", str(out), "--data", str(test), "--output", str(tmp_path / "r.json"), "-q"]
    )
    assert code == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["settings"]["mode"] == "rag" and saved["results"]["test"]["questions"] == 2
