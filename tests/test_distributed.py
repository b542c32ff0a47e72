"""Multi-process training: 2 gloo processes on CPU (launched with accelerate), the retriever's own
optimizer (FSDP / DeepSpeed path), and the accelerate configs in examples/accelerate/."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from testing_utils import make_tiny_retriever

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
CONFIGS = ROOT / "examples" / "accelerate"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _require_defaults() -> None:
    from jmlr_hf.models import MissingDefaultModelError, default_encoder_path, default_llm_path

    try:
        default_llm_path(), default_encoder_path()
    except MissingDefaultModelError as err:
        pytest.skip(str(err))


@contextlib.contextmanager
def _one_thread():
    """Like the workers (one thread each): the same reduction order, and no oversubscribed cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Run tests/distributed_worker.py in 2 processes with examples/accelerate/cpu.yaml."""
    _require_defaults()
    out = tmp_path_factory.mktemp("two_processes")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIGS / "cpu.yaml"),
        "--main_process_port",
        str(_free_port()),
        str(WORKER),
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    ranks = [load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1)]
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return out, ranks, records


def test_two_processes_keep_identical_replicas_and_train_both_models(two_processes, bert_tokenizer):
    out, (r0, r1), (j0, j1) = two_processes
    assert j0["world_size"] == j1["world_size"] == 2
    # Each rank built its retriever from its own seed: the trainer broadcast rank 0's ...
    own_rank1 = make_tiny_retriever(bert_tokenizer, seed=101).state_dict()
    init0, init1 = _part(r0, "init.retriever."), _part(r1, "init.retriever.")
    assert init0.keys() == own_rank1.keys()
    assert any(not torch.equal(init1[n], own_rank1[n]) for n in own_rank1)
    for name in init0:
        assert torch.equal(init0[name], init1[name]), name
    # ... and rank 1 re-encoded its index with those weights.
    assert torch.equal(r0["init.index.vectors"], r1["init.index.vectors"])
    # After 4 steps (index refreshed at step 2): the same LLM, retriever and index on both ranks, bit for bit.
    assert j0["last_refresh_step"] == j1["last_refresh_step"] == 2
    for part in ("final.llm.", "final.retriever."):
        a, b = _part(r0, part), _part(r1, part)
        assert a and a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), f"{part}{name} differs across ranks"
    assert torch.equal(r0["final.index.vectors"], r1["final.index.vectors"])
    # The refresh was sharded: each rank encoded part of the passages into one shared, mapped store.
    counts = [j["refresh_stats"]["passages_encoded"] for j in (j0, j1)]
    assert sum(counts) == j0["num_passages"] and abs(counts[0] - counts[1]) <= 4, counts  # batches of 4
    assert [j["refresh_stats"]["world_size"] for j in (j0, j1)] == [2, 2]
    assert j0["index_folder"] == j1["index_folder"] == str(out / "run" / "index_store" / "refresh-2")
    assert not torch.equal(
        r0["final.index.vectors"], r0["init.index.vectors"]
    )  # the refresh used new weights
    # Both models trained: every LLM weight and every retriever weight but the pooler's changed.
    for name, before in _part(r0, "init.llm.").items():
        assert not torch.equal(before, r0[f"final.llm.{name}"]), f"LLM {name} did not change"
    for name, before in init0.items():
        if "pooler" not in name and "position_ids" not in name:
            assert not torch.equal(before, r0[f"final.retriever.{name}"]), f"retriever {name} did not change"
    assert j0["retriever_in_optimizer"] and j1["retriever_in_optimizer"]
    # Only the main process saved: one checkpoint folder per save step, each with the retriever and index.
    for step in (2, 4):
        ckpt = out / "run" / f"checkpoint-{step}"
        for name in ("model.safetensors", "retriever/model.safetensors", "index/vectors.npy"):
            assert (ckpt / name).is_file(), f"checkpoint-{step}/{name}"


def test_two_processes_resume_from_a_checkpoint(two_processes):
    _, ranks, records = two_processes
    for tensors, record in zip(ranks, records):
        assert len(record["resumed_losses"]) == 4
        assert record["resumed_losses"][2:] == pytest.approx(record["losses"][2:], rel=1e-5)
        for part in ("llm.", "retriever."):
            final, resumed = _part(tensors, f"final.{part}"), _part(tensors, f"resumed.{part}")
            for name in final:
                torch.testing.assert_close(resumed[name], final[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The workers' run (rank 0's seed) in this process: 2 rows x 2 gradient accumulation steps."""
    _require_defaults()
    from distributed_worker import GradRecorder, build_trainer

    recorder = GradRecorder()
    with _one_thread():
        trainer = build_trainer(
            tmp_path_factory.mktemp("one_process"),
            model_seed=100,
            callbacks=[recorder],
            gradient_accumulation_steps=2,
            save_strategy="no",
        )
        recorder.trainer = trainer
        trainer.train()
    return trainer, recorder.grads


def test_two_processes_average_gradients_like_one_process_with_accumulation(two_processes, one_process):
    """2 processes x 2 rows == 1 process x 2 rows x 2 accumulation steps: the retriever's gradients are the
    mean over processes (as DDP's are for the LLM), not the sum and not one rank's own."""
    _, (r0, _), (j0, _) = two_processes
    single, single_grads = one_process
    grads = {k: v for k, v in r0.items() if k.startswith("grad.")}
    assert any(k.startswith("grad.retriever.") for k in grads) and any(
        k.startswith("grad.llm.") for k in grads
    )
    assert grads.keys() == single_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, single_grads[name], rtol=1e-4, atol=1e-7, msg=name)
    losses = [h["loss"] for h in single.state.log_history if "loss" in h]
    assert j0["losses"] == pytest.approx(losses, rel=1e-4)
    for name, p in single.retriever.state_dict().items():
        torch.testing.assert_close(r0[f"final.retriever.{name}"], p, rtol=1e-4, atol=1e-5, msg=name)


def test_separate_retriever_optimizer_matches_the_shared_one_and_resumes(one_process, tmp_path):
    """The FSDP / DeepSpeed path (the retriever with its own optimizer and scheduler), in one CPU process:
    the same trajectory as the retriever's param groups in the Trainer's optimizer, saved and resumed."""
    from distributed_worker import build_trainer

    shared, _ = one_process
    common = dict(gradient_accumulation_steps=2)
    with _one_thread():
        separate = build_trainer(tmp_path, model_seed=100, save_strategy="steps", save_steps=2, **common)
        separate.separate_retriever_optimizer = True  # what FSDP / DeepSpeed set
        separate.train()
    assert not any(g.get("name") == "retriever" for g in separate.optimizer.param_groups)
    in_own = {id(p) for g in separate.retriever_optimizer.param_groups for p in g["params"]}
    assert in_own == {id(p) for p in separate.retriever.parameters() if p.requires_grad}
    assert all(g["initial_lr"] == 5e-3 for g in separate.retriever_optimizer.param_groups)
    for (name, a), b in zip(shared.retriever.state_dict().items(), separate.retriever.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    ckpt = tmp_path / "checkpoint-2"
    assert (ckpt / "retriever_optimizer.pt").is_file() and (ckpt / "retriever_scheduler.pt").is_file()

    with _one_thread():
        resumed = build_trainer(tmp_path, model_seed=1, save_strategy="no", **common)
        resumed.separate_retriever_optimizer = True
        resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.retriever_lr_scheduler.last_epoch == separate.retriever_lr_scheduler.last_epoch == 4
    for (name, a), b in zip(separate.retriever.state_dict().items(), resumed.retriever.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_gradient_buckets_keep_order_dtype_and_size():
    from jmlr_hf.trainer.distributed import _buckets

    tensors = [
        torch.zeros(10),
        torch.zeros(30),
        torch.zeros(5, dtype=torch.float64),
        torch.zeros(8),
        torch.zeros(2),
    ]
    buckets = _buckets(tensors, bucket_bytes=160)  # 40 float32
    assert [[t.numel() for t in b] for b in buckets] == [[10, 30], [5], [8, 2]]
    flat = [t for b in buckets for t in b]
    assert len(flat) == len(tensors) and all(a is b for a, b in zip(flat, tensors))
    assert [len(b) for b in _buckets([torch.zeros(100)], bucket_bytes=8)] == [1]  # an oversized tensor alone


# ---------------------------------------------------------------------- accelerate configs


def _launch_args(config: Path):
    """``accelerate launch --config_file config``'s resolved arguments (no process is started)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(config), "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    return args, defaults


@pytest.mark.parametrize(
    ("name", "distributed_type", "num_processes", "mixed_precision"),
    [
        ("cpu", "MULTI_GPU", 2, "no"),
        ("single_gpu", "NO", 1, "bf16"),
        ("multi_gpu_ddp", "MULTI_GPU", 8, "bf16"),
        ("fsdp", "FSDP", 8, "bf16"),
        ("deepspeed_zero3", "DEEPSPEED", 8, None),
    ],
)
def test_accelerate_configs_load(name, distributed_type, num_processes, mixed_precision):
    """Each YAML is accepted by accelerate's own config loader and launcher validation."""
    from accelerate.commands.config.config_args import load_config_from_file

    path = CONFIGS / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text())
    config = load_config_from_file(str(path))  # rejects unknown keys and bad enum values
    assert config.distributed_type.value == distributed_type
    assert config.num_processes == num_processes
    assert raw.get("mixed_precision") == mixed_precision
    args, _ = _launch_args(path)
    assert args.num_processes == num_processes
    if name == "cpu":  # several processes through torch.distributed.run (the MULTI_CPU launcher needs MPI)
        assert args.multi_gpu and not args.cpu
    if name == "deepspeed_zero3":
        assert args.use_deepspeed
        # accelerate refuses a mixed_precision key next to a deepspeed_config_file; the json sets bf16
        assert config.deepspeed_config["zero3_init_flag"] is False  # the retriever must not be partitioned
        ds = json.loads((ROOT / config.deepspeed_config["deepspeed_config_file"]).read_text())
        assert ds["zero_optimization"]["stage"] == 3
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
        assert ds["bf16"]["enabled"] == "auto" and "fp16" not in ds


def test_fsdp_config_builds_the_fsdp_plugin(monkeypatch):
    """The FSDP YAML, turned into the environment accelerate launch gives each process, yields an FSDP2
    plugin that wraps Llama decoder layers and saves full state dicts."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, _ = _launch_args(CONFIGS / "fsdp.yaml")
    assert args.use_fsdp
    env = prepare_multi_gpu_env(args)
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_USE_FSDP")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)
    assert plugin.cpu_ram_efficient_loading is False  # else ranks > 0 load the retriever without weights
