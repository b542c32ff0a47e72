"""Hub publishing: the two staged repos, their model cards, push_to_hub (no network) and loading back from a
Hub-cache layout offline."""

from __future__ import annotations

import shutil
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import HfApi, RepoUrl
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

import test_trainer
from jmlr_hf import JMLRRetriever, JMLRTrainer
from jmlr_hf.hub import (
    CARD_KINDS,
    STAGING_DIR,
    joint_step_arguments,
    llm_card_kind,
    prepare_hub_folders,
    push_jmlr_to_hub,
    render_model_card,
)
from testing_utils import make_tiny_llm, make_trainer

# test_trainer's module-scoped demo fixture, shared here (a plain assignment: pytest finds it by attribute)
demo = test_trainer.demo

REPO = "org/jmlr-13b"
BASE = "meta-llama/Llama-2-13b-hf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, llm_tokenizer, bert_tokenizer, demo):
    """A JMLRTrainer after one joint step, with a Hub id and a Hub-like base model name."""
    tmp = tmp_path_factory.mktemp("hub")
    trainer = make_trainer(tmp, llm_tokenizer, bert_tokenizer, demo, max_steps=1, hub_model_id=REPO)
    trainer.model.config._name_or_path = BASE
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def staged(trained, tmp_path_factory):
    """The two staged folders of ``trained``."""
    staging = tmp_path_factory.mktemp("staging")
    return prepare_hub_folders(trained, staging, datasets=["bigbio/med_qa"], corpus="demo guidelines")


def saved_tokenizer_files(tokenizer, tmp_path: Path) -> set[str]:
    folder = tmp_path / f"tok-{id(tokenizer)}"
    tokenizer.save_pretrained(folder)
    return {p.name for p in folder.iterdir()}


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def front_matter(card: str) -> tuple[dict, str]:
    assert card.startswith("---\n")
    head, body = card[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def fake_hub(monkeypatch) -> list[tuple[str, dict]]:
    """Record HfApi.create_repo / upload_folder calls (with the files each upload would send)."""
    calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls.append(
            (
                "upload_folder",
                {"repo_id": repo_id, "folder_path": folder_path, **kwargs, "files": files(Path(folder_path))},
            )
        )
        url = f"https://huggingface.co/{repo_id}/commit/{COMMIT}"
        if kwargs.get("run_as_future"):
            future: Future = Future()
            future.set_result(url)
            return future
        return url

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_staged_folders_hold_exactly_the_two_repos(trained, staged, llm_tokenizer, bert_tokenizer, tmp_path):
    llm_dir, retriever_dir = staged
    assert files(llm_dir) == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "README.md",
    } | saved_tokenizer_files(llm_tokenizer, tmp_path)
    assert files(retriever_dir) == {"config.json", "model.safetensors", "README.md"} | saved_tokenizer_files(
        bert_tokenizer, tmp_path
    )
    # the trained weights, not the initial ones
    llm_state = load_file(llm_dir / "model.safetensors")
    for name, param in trained.model.state_dict().items():
        if name in llm_state:
            torch.testing.assert_close(llm_state[name], param.detach().cpu(), msg=name)
    retriever_state = load_file(retriever_dir / "model.safetensors")
    torch.testing.assert_close(
        retriever_state["linear.weight"], trained.retriever.linear.weight.detach().cpu()
    )


def test_cards_carry_metadata_run_arguments_warning_and_paper_results(trained, staged):
    llm_dir, retriever_dir = staged
    meta, body = front_matter((llm_dir / "README.md").read_text())
    assert meta["base_model"] == BASE
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert meta["license"] == "llama2" and meta["datasets"] == ["bigbio/med_qa"]
    assert {"jmlr", "medical", "colbert"} <= set(meta["tags"])
    assert "JMLR-13B** recipe" in body and "Llama-2-13b" in body and BASE in body
    for name, value in joint_step_arguments(trained.args).items():
        assert f"| `{name}` | `{value}` |" in body, name
    assert "| `learning_rate (LLM)` | `0.001` |" in body
    assert "| `learning rate (retriever)` | `0.005` |" in body
    assert "| `optimizer steps done` | `1` |" in body
    assert "Not for clinical decisions" in body
    assert "70.5%" in body and "68.9%" in body and "42,630" in body and "not reproduced here" in body
    assert "@article{wang2024jmlr" in body and "demo guidelines" in body
    assert 'JMLRRetriever.from_pretrained("org/jmlr-13b-retriever")' in body
    assert "${" not in body and "training_args" not in body

    meta, body = front_matter((retriever_dir / "README.md").read_text())
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "sentence-similarity"
    assert "base_model" not in meta  # a randomly initialised encoder has no Hub id
    assert "colbert" in meta["tags"] and meta["datasets"] == ["bigbio/med_qa"]
    assert meta["license"] == "other"  # the retriever's licence follows its own base, not Llama-2's
    assert 'JMLRRetriever.from_pretrained("org/jmlr-13b-retriever")' in body
    assert "ColBERT" in body and "org/jmlr-13b" in body and "Not for clinical decisions" in body
    assert "| `num_candidate_docs` | `6` |" in body and "not reproduced here" in body


def test_render_model_card_and_kind_choice(trained, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="kind must be one of"):
        render_model_card("jmlr-70b")
    with pytest.raises(ValueError, match="needs the field"):
        render_model_card("jmlr-retriever", model_name="x")
    from jmlr_hf.hub import card_fields

    fields = card_fields(
        trained.card_values(),
        base_model="meta-llama/Llama-2-7b-hf",
        retriever_base_model="colbert-ir/colbertv2.0",
    )
    assert fields["llm"]["kind"] == "jmlr-7b"
    for kind in CARD_KINDS:
        part = "retriever" if kind == "jmlr-retriever" else "llm"
        meta, body = front_matter(render_model_card(kind, **fields[part]))
        assert "Not for clinical decisions" in body and "${" not in body
    meta, _ = front_matter(render_model_card("jmlr-7b", **fields["llm"]))
    assert meta["license"] == "llama2" and meta["base_model"] == "meta-llama/Llama-2-7b-hf"
    meta, _ = front_matter(render_model_card("jmlr-retriever", **fields["retriever"]))
    assert meta["base_model"] == "colbert-ir/colbertv2.0"
    # a base model from a local folder: no base_model metadata, and the card shows no local path
    monkeypatch.setattr(trained.model.config, "_name_or_path", str(tmp_path / "my-llm"))
    fields = card_fields(trained.card_values())["llm"]
    meta, body = front_matter(render_model_card(fields["kind"], **fields))
    assert "base_model" not in meta and meta["license"] == "other"
    assert "my-llm (local files)" in body and str(tmp_path) not in body
    assert llm_card_kind("meta-llama/Llama-2-13b-hf", "org/x-7b") == "jmlr-13b"
    assert llm_card_kind(None, "org/jmlr-7b") == "jmlr-7b"
    assert llm_card_kind("meta-llama/Llama-2-70b-hf", num_parameters=70_000_000_000) == "jmlr-13b"
    assert llm_card_kind("HuggingFaceTB/SmolLM2-135M-Instruct", num_parameters=135_000_000) == "jmlr-7b"


def test_peft_adapter_repo(tmp_path, llm_tokenizer, bert_tokenizer, demo):
    from peft import LoraConfig

    base = make_trainer(tmp_path, llm_tokenizer, bert_tokenizer, demo, max_steps=1)
    llm = make_tiny_llm(llm_tokenizer)
    llm.config._name_or_path = "meta-llama/Llama-2-7b-hf"
    trainer = JMLRTrainer(
        model=llm,
        retriever=base.retriever,
        index=base.index,
        args=base.args,
        train_dataset=demo.train,
        processing_class=llm_tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    llm_dir, _ = prepare_hub_folders(trainer, tmp_path / "staging")
    assert files(llm_dir) == {"adapter_config.json", "adapter_model.safetensors", "README.md"} | (
        saved_tokenizer_files(llm_tokenizer, tmp_path)
    )
    meta, body = front_matter((llm_dir / "README.md").read_text())
    assert meta["library_name"] == "peft" and meta["base_model"] == "meta-llama/Llama-2-7b-hf"
    assert (
        "JMLR-7B** recipe" in body
        and "LORA adapter (PEFT) for **meta-llama/Llama-2-7b-hf**" in body
        and "AutoPeftModelForCausalLM" in body
    )
    assert "| `r` | `4` |" in body and "| `target_modules` | `['q_proj', 'v_proj']` |" in body


def test_push_to_hub_creates_and_uploads_two_repos(trained, monkeypatch):
    calls = fake_hub(monkeypatch)
    urls = trained.push_to_hub(commit_message="JMLR run", private=True, datasets=["bigbio/med_qa"])
    assert [u.repo_id for u in urls] == [REPO, REPO + "-retriever"]
    created = [kw for name, kw in calls if name == "create_repo"]
    assert [(c["repo_id"], c["exist_ok"], c["private"]) for c in created] == [
        (REPO, True, True),
        (REPO + "-retriever", True, True),
    ]
    uploads = [kw for name, kw in calls if name == "upload_folder"]
    staging = Path(trained.args.output_dir) / STAGING_DIR
    assert [(u["repo_id"], Path(u["folder_path"])) for u in uploads] == [
        (REPO, staging / "llm"),
        (REPO + "-retriever", staging / "retriever"),
    ]
    assert all(u["commit_message"] == "JMLR run" and u["run_as_future"] is False for u in uploads)
    assert "model.safetensors" in uploads[0]["files"] and "retriever" not in uploads[0]["files"]
    assert not any("checkpoint" in f or f == "training_args.bin" for u in uploads for f in u["files"])
    assert "tokenizer.json" in uploads[1]["files"]
    # in the background: the trainer tracks both uploads like its own pushes
    calls.clear()
    trained.push_to_hub(blocking=False)
    uploads = [kw for name, kw in calls if name == "upload_folder"]
    assert [u["run_as_future"] for u in uploads] == [True, True]
    assert len(trained.push_in_progress.jobs) == 2 and trained.push_in_progress.is_done()


def test_create_model_card_writes_the_llm_card(trained):
    trained.create_model_card(license="apache-2.0", dataset="bigbio/med_qa", tags=["demo"])
    meta, body = front_matter((Path(trained.args.output_dir) / "README.md").read_text())
    assert meta["license"] == "apache-2.0" and meta["datasets"] == ["bigbio/med_qa"]
    assert meta["base_model"] == BASE and "demo" in meta["tags"] and "jmlr" in meta["tags"]
    assert "| `num_scored_docs` | `3` |" in body


def test_push_needs_a_hub_model_id_and_save_model_pushes_once(
    tmp_path, llm_tokenizer, bert_tokenizer, demo, monkeypatch
):
    trainer = make_trainer(tmp_path, llm_tokenizer, bert_tokenizer, demo)
    with pytest.raises(ValueError, match="hub_model_id"):
        push_jmlr_to_hub(trainer)
    calls = fake_hub(monkeypatch)
    # args.push_to_hub: save_model() pushes both repos, once (no recursion through save_model)
    trainer = make_trainer(
        tmp_path, llm_tokenizer, bert_tokenizer, demo, push_to_hub=True, hub_model_id="org/tiny"
    )
    calls.clear()  # Trainer.__init__ already created the LLM repo
    trainer.save_model()
    assert [kw["repo_id"] for name, kw in calls if name == "upload_folder"] == [
        "org/tiny",
        "org/tiny-retriever",
    ]


def test_both_models_load_from_a_hub_cache_offline(trained, staged, tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hub-cache"
    for repo_id, folder in zip((REPO, REPO + "-retriever"), staged):
        repo = cache / ("models--" + repo_id.replace("/", "--"))
        shutil.copytree(folder, repo / "snapshots" / COMMIT)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # huggingface_hub reads HF_HUB_OFFLINE / HF_HUB_CACHE once, at import (constants.HF_HUB_OFFLINE is what
    # is_offline_mode() returns), so the env vars above only matter to a fresh process: patch the constant
    # and pass cache_dir and local_files_only=True as well, so nothing here can reach the network.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub = {"cache_dir": str(cache), "local_files_only": True}

    llm = AutoModelForCausalLM.from_pretrained(REPO, **hub)
    expected = trained.model.state_dict()
    for name, param in llm.state_dict().items():
        torch.testing.assert_close(param, expected[name].detach().cpu(), msg=name)
    assert AutoTokenizer.from_pretrained(REPO, **hub)("a question")["input_ids"]

    retriever = JMLRRetriever.from_pretrained(REPO + "-retriever", **hub)
    torch.testing.assert_close(retriever.linear.weight, trained.retriever.linear.weight.detach().cpu())
    query = ["which drug first?"]
    torch.testing.assert_close(
        retriever.encode_queries(query, precision="fp32").embeddings,
        trained.retriever.encode_queries(query, precision="fp32").embeddings,
    )
    auto = AutoModel.from_pretrained(REPO + "-retriever", **hub)  # registered by `import jmlr_hf`
    assert isinstance(auto, JMLRRetriever)
    torch.testing.assert_close(auto.linear.weight, retriever.linear.weight)
