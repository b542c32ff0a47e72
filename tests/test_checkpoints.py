"""Checkpoints: exact resume whichever launcher loads the LLM, complete checkpoints only, quiet resumes,
and one hard-linked copy of an unchanged index."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from transformers import Trainer, TrainerCallback

from jmlr_hf import DocumentIndex, JMLRTrainer, JMLRTrainingArguments
from jmlr_hf.data import make_demo_task
from jmlr_hf.recipe import _resume_checkpoint
from jmlr_hf.retriever.index import IndexFileError
from jmlr_hf.trainer.checkpoints import newest_complete_checkpoint
from testing_utils import default_tokenizers, make_tiny_llm, make_tiny_retriever, make_trainer

MAX_STEPS = 5
# Checkpoints 1, 2 and 3 fall in one refresh interval (the index is re-encoded at step 3); a resume from
# checkpoint-3 crosses that refresh. (The other arguments are testing_utils.TRAINER_DEFAULTS.)
COMMON = dict(
    max_steps=MAX_STEPS,
    index_refresh_steps=3,
    candidate_sampling="sample",
    utility_precision="fp32",
    seed=0,
)


class StopAt(TrainerCallback):
    """Stop (and save) after ``step``: the straight run's schedule, interrupted."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = control.should_save = True
        return control


def build_trainer(output_dir: str | os.PathLike, **overrides) -> JMLRTrainer:
    """A tiny JMLR run on the demo task; the LLM's head is tied to its embeddings (saved once)."""
    llm_tokenizer, bert_tokenizer = default_tokenizers()
    return make_trainer(
        output_dir,
        llm_tokenizer,
        bert_tokenizer,
        make_demo_task(num_facts=24, seed=0),
        llm=make_tiny_llm(llm_tokenizer, tie_word_embeddings=True),
        **{**COMMON, "output_dir": str(output_dir), **overrides},
    )


def losses(trainer: JMLRTrainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def weights(trainer: JMLRTrainer, prefix: str) -> dict[str, torch.Tensor]:
    """The final retriever and LLM weights, named ``prefix.{retriever,llm}.NAME``."""
    llm = trainer.accelerator.unwrap_model(trainer.model)
    out = {
        f"{prefix}.retriever.{n}": t.detach().cpu().clone() for n, t in trainer.retriever.state_dict().items()
    }
    out.update({f"{prefix}.llm.{n}": p.detach().cpu().clone() for n, p in llm.named_parameters()})
    return out


def assert_same_run(resumed: JMLRTrainer, straight: JMLRTrainer, resumed_from: int) -> None:
    assert losses(resumed)[resumed_from:] == pytest.approx(losses(straight)[resumed_from:], rel=1e-5)
    assert len(losses(resumed)) == MAX_STEPS
    ours, theirs = weights(resumed, "w"), weights(straight, "w")
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        torch.testing.assert_close(ours[name], value, rtol=1e-5, atol=1e-6, msg=name)


def vectors_file(checkpoint: Path) -> os.stat_result:
    return os.stat(checkpoint / "index" / "vectors.npy")


@pytest.fixture(scope="module")
def defaults_present():
    from jmlr_hf.models import MissingDefaultModelError, default_encoder_path, default_llm_path

    try:
        default_llm_path(), default_encoder_path()
    except MissingDefaultModelError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def straight(defaults_present, tmp_path_factory) -> JMLRTrainer:
    """Five steps without interruption."""
    trainer = build_trainer(tmp_path_factory.mktemp("straight"))
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def saved(defaults_present, tmp_path_factory) -> Path:
    """The same run with a checkpoint after every step, interrupted after step 3: its output folder."""
    out = tmp_path_factory.mktemp("saved")
    trainer = build_trainer(out, save_strategy="steps", save_steps=1)
    trainer.add_callback(StopAt(3))
    trainer.train()
    return out


# ---------------------------------------------------------------------------------------------------
# A. exact resume under every launcher
# ---------------------------------------------------------------------------------------------------


def test_resume_is_exact_when_the_launcher_loads_only_the_llm(saved, straight, tmp_path, monkeypatch):
    """Under DeepSpeed (and in any launcher that skips it) transformers never calls
    ``_load_from_checkpoint``: ``deepspeed_load_checkpoint`` loads the LLM alone. The retriever,
    ``index/`` and ``jmlr_state.json`` must be restored all the same."""
    monkeypatch.setattr(JMLRTrainer, "_load_from_checkpoint", Trainer._load_from_checkpoint)
    resumed = build_trainer(tmp_path)
    resumed.train(resume_from_checkpoint=str(saved / "checkpoint-3"))
    assert resumed._last_refresh_step == 3
    assert_same_run(resumed, straight, resumed_from=3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_resume_under_deepspeed_is_exact(defaults_present, tmp_path):
    """The real DeepSpeed path (ZeRO stage 0 on DeepSpeed's CPU accelerator, one process)."""
    pytest.importorskip("deepspeed")
    from safetensors.torch import load_file

    env = {
        **os.environ,
        "MASTER_PORT": str(_free_port()),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    worker = Path(__file__).resolve().parent / "deepspeed_worker.py"
    proc = subprocess.run(
        [sys.executable, str(worker), str(tmp_path)], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    result = json.loads((tmp_path / "result.json").read_text())
    assert len(result["resumed"]) == MAX_STEPS
    assert result["resumed"][3:] == pytest.approx(result["straight"][3:], rel=1e-5)
    tensors = load_file(str(tmp_path / "result.safetensors"))
    straight = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("straight.")}
    resumed = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("resumed.")}
    assert straight.keys() == resumed.keys() and any(k.startswith("retriever.") for k in straight)
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------------
# B. a checkpoint is used only when complete
# ---------------------------------------------------------------------------------------------------


class Killed(Exception):
    """Stands for the process being killed."""


def test_a_kill_while_saving_leaves_the_previous_checkpoint_and_last_skips_the_incomplete_one(
    straight, tmp_path, monkeypatch, caplog
):
    """Killed between Trainer's save and JMLR's at step 4 (save_total_limit=1): checkpoint-3 is still
    there and complete, "last" takes it (saying why checkpoint-4 was skipped), naming checkpoint-4 fails,
    and the resumed run is exact; a checkpoint kept alone by save_total_limit still loads its index."""
    save_checkpoint = Trainer._save_checkpoint

    def killed_at_step_4(self, model, trial):
        save_checkpoint(self, model, trial)
        if self.state.global_step == 4:
            raise Killed

    monkeypatch.setattr(Trainer, "_save_checkpoint", killed_at_step_4)
    first = build_trainer(tmp_path, save_strategy="steps", save_steps=1, save_total_limit=1)
    with pytest.raises(Killed):
        first.train()
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    assert not (tmp_path / "checkpoint-4" / "jmlr_state.json").exists()
    assert vectors_file(tmp_path / "checkpoint-3").st_nlink == 1  # its linked twins were rotated out
    DocumentIndex.load(tmp_path / "checkpoint-3" / "index", first.index.retriever, allow_stale=True)

    with caplog.at_level(logging.INFO, logger="jmlr_hf"):
        assert newest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-3")
    assert "Skipping" in caplog.text and "checkpoint-4" in caplog.text and "jmlr_state.json" in caplog.text
    args = JMLRTrainingArguments(output_dir=str(tmp_path), resume_from_checkpoint="last", use_cpu=True)
    assert _resume_checkpoint(args) == str(tmp_path / "checkpoint-3")
    for named in (str(tmp_path / "checkpoint-4"), "true"):
        args.resume_from_checkpoint = named
        with pytest.raises(
            ValueError, match=r"checkpoint-4 is not a complete JMLR checkpoint.*jmlr_state\.json"
        ):
            _resume_checkpoint(args)

    resumed = build_trainer(tmp_path, save_strategy="steps", save_steps=1, save_total_limit=1)
    for named in (str(tmp_path / "checkpoint-4"), True):
        with pytest.raises(ValueError, match=r"checkpoint-4 is not a complete JMLR checkpoint.*index/"):
            resumed.train(resume_from_checkpoint=named)
    args.resume_from_checkpoint = "last"
    resumed.train(resume_from_checkpoint=_resume_checkpoint(args))
    assert_same_run(resumed, straight, resumed_from=3)
    assert [p.name for p in tmp_path.glob("checkpoint-*")] == ["checkpoint-5"]
    assert newest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-5")


@pytest.mark.parametrize(
    "name",
    ["vectors.npy", "doclens.npy", "index_config.json", "passages.arrow", "faiss.index", "passage_means.npy"],
)
def test_a_truncated_index_file_is_named(name, tmp_path, bert_tokenizer):
    retriever = make_tiny_retriever(bert_tokenizer)
    demo = make_demo_task(num_facts=24, seed=0)
    DocumentIndex.build(demo.corpus, retriever, backend="faiss").save(tmp_path)
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFileError, match=rf"{name}: cannot be read, the file is truncated or corrupt"):
        DocumentIndex.load(tmp_path, retriever)
    (tmp_path / name).unlink()
    with pytest.raises(
        (IndexFileError, FileNotFoundError), match=name if name != "index_config.json" else "no index"
    ):
        DocumentIndex.load(tmp_path, retriever)


# ---------------------------------------------------------------------------------------------------
# C. a correct resume warns about nothing
# ---------------------------------------------------------------------------------------------------


def test_a_correct_resume_logs_no_warning(saved, tmp_path, caplog):
    """The checkpoint's index comes from the last refresh (older than its retriever) and the tied LM head
    is saved once: both are expected, so neither is a warning."""
    resumed = build_trainer(tmp_path)
    transformers.utils.logging.enable_propagation()
    try:
        with caplog.at_level(logging.INFO):
            resumed.train(resume_from_checkpoint=str(saved / "checkpoint-3"))
    finally:
        transformers.utils.logging.disable_propagation()
    ours = [r for r in caplog.records if r.name.startswith(("jmlr_hf", "transformers"))]
    warnings = [f"{r.name}: {r.getMessage()}" for r in ours if r.levelno >= logging.WARNING]
    assert warnings == []
    infos = " ".join(r.getMessage() for r in ours)
    assert "as expected" in infos and "lm_head.weight" in infos and "Restored the retriever" in infos


def test_an_unexpected_index_fingerprint_still_warns(saved, tmp_path, caplog, bert_tokenizer):
    checkpoint = tmp_path / "checkpoint-3"
    shutil.copytree(saved / "checkpoint-3", checkpoint)
    state = json.loads((checkpoint / "jmlr_state.json").read_text())
    retriever = make_tiny_retriever(bert_tokenizer, seed=5)
    with caplog.at_level(logging.WARNING, logger="jmlr_hf"):
        DocumentIndex.load(checkpoint / "index", retriever, allow_stale=True, expected_fingerprint="0" * 64)
    assert "fingerprint mismatch: expected 000000000000" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="jmlr_hf"):
        DocumentIndex.load(checkpoint / "index", retriever, expected_fingerprint=state["index_fingerprint"])
    assert "as expected" in caplog.text and "WARNING" not in caplog.text


# ---------------------------------------------------------------------------------------------------
# D. one copy of an unchanged index
# ---------------------------------------------------------------------------------------------------


def test_checkpoints_share_one_copy_of_an_unchanged_index(saved, tmp_path):
    """Checkpoints 1-3 (one refresh interval) hold one copy of the vectors; after the refresh at step 3,
    checkpoint-4 writes a new copy that checkpoint-5 shares."""
    first = [vectors_file(saved / f"checkpoint-{step}") for step in (1, 2, 3)]
    assert len({s.st_ino for s in first}) == 1 and first[0].st_nlink >= 3
    for name in ("index_config.json", "passages.arrow"):
        assert len({os.stat(saved / f"checkpoint-{s}" / "index" / name).st_ino for s in (1, 2, 3)}) == 1

    out = tmp_path / "out"
    shutil.copytree(saved, out)  # a copy: the other tests keep theirs
    resumed = build_trainer(out, save_strategy="steps", save_steps=1)
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-3"))
    four, five = vectors_file(out / "checkpoint-4"), vectors_file(out / "checkpoint-5")
    assert four.st_ino == five.st_ino != vectors_file(out / "checkpoint-3").st_ino
    shutil.rmtree(out / "checkpoint-4")  # what save_total_limit does: checkpoint-5 keeps its vectors
    index = DocumentIndex.load(out / "checkpoint-5" / "index", resumed.index.retriever, allow_stale=True)
    assert torch.equal(index.store.vectors, resumed.index.store.vectors)
