"""JMLRTrainer: the joint step, optimizer groups, logging, saving/resuming, bad input, learning."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from jmlr_hf import DocumentIndex, JMLRRetriever, JMLRTrainer, JMLRTrainingArguments
from jmlr_hf.data import format_target, make_demo_task
from jmlr_hf.layout import read_inference_settings
from jmlr_hf.trainer import PromptBuilder, llm_rank_loss, pdist_loss
from testing_utils import make_tiny_llm, make_tiny_retriever, make_trainer


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
            control.should_save = True
        return control


@pytest.fixture(scope="module")
def demo():
    return make_demo_task(num_facts=24, seed=0)


def test_rank_losses_prefer_the_useful_document():
    nll = torch.tensor([[0.5, 2.0, 1.0]])
    good = torch.tensor([[0.9, 0.1, 0.5]])  # same order as utility
    bad = torch.tensor([[0.1, 0.9, 0.5]])
    assert llm_rank_loss(good, nll) < llm_rank_loss(bad, nll)
    assert pdist_loss(good, nll) < pdist_loss(bad, nll)
    # equal scores and equal utilities: finite, no division by zero
    flat = torch.zeros(1, 3, requires_grad=True)
    for loss in (llm_rank_loss(flat, torch.ones(1, 3)), pdist_loss(flat, torch.ones(1, 3))):
        assert torch.isfinite(loss)
        loss.backward()
    # the pairwise loss equals its definition
    s, u = torch.randn(2, 4), torch.randn(2, 4)
    expected = []
    for b in range(2):
        for i in range(4):
            for j in range(4):
                if u[b, i] != u[b, j]:
                    x = (s[b, i] - s[b, j]) / 0.1
                    y = float(u[b, i] < u[b, j])
                    logsig = torch.nn.functional.logsigmoid
                    expected.append(-(y * logsig(x) + (1 - y) * logsig(-x)))
    torch.testing.assert_close(llm_rank_loss(s, u, 0.1), torch.stack(expected).mean(), rtol=1e-4, atol=1e-5)


def test_prompt_is_the_same_for_training_and_inference_and_context_truncates_as_a_whole(llm_tokenizer, demo):
    builder = PromptBuilder(llm_tokenizer, max_context_tokens=90)
    row = dict(demo.train[0])
    passages = [{"title": f"T{i}", "text": "word " * 60} for i in range(3)]
    prompt = builder.prompt(row, passages)
    assert row["question"] in prompt and prompt.endswith("assistant\n")
    batch = builder.batch([prompt], ["A. answer"])
    target = builder.target_ids("A. answer")
    assert batch["labels"][0, -len(target) :].tolist() == target
    assert (batch["labels"][0, : -len(target)] == -100).all()
    # the whole context is cut to its budget; the best passage ([1]) stays, the question is intact
    assert "[1] T0" in prompt and "[3] T2" not in prompt
    context = prompt.split("excerpts to answer the medical question.\n\n")[1].split("\n\nQuestion:")[0]
    assert len(llm_tokenizer(context, add_special_tokens=False)["input_ids"]) <= 92
    assert "[2] T1" in prompt  # the second passage is cut, not the best one


def test_joint_step_trains_both_models_with_their_learning_rates(
    tmp_path, llm_tokenizer, bert_tokenizer, demo
):
    trainer = make_trainer(tmp_path, llm_tokenizer, bert_tokenizer, demo)
    retriever_before = {n: p.detach().clone() for n, p in trainer.retriever.named_parameters()}
    llm_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    # every trainable retriever parameter is in the optimizer with retriever_learning_rate ...
    groups = [g for g in trainer.optimizer.param_groups if g.get("name") == "retriever"]
    in_groups = {id(p) for g in groups for p in g["params"]}
    named = dict(trainer.retriever.named_parameters())
    assert set(trainer.retriever_param_names) == {n for n, p in named.items() if p.requires_grad}
    for name in trainer.retriever_param_names:
        assert id(named[name]) in in_groups, name
    assert all(g["initial_lr"] == 5e-3 for g in groups)
    llm_groups = [g for g in trainer.optimizer.param_groups if g.get("name") != "retriever"]
    assert all(g["initial_lr"] == 1e-3 for g in llm_groups)
    # ... and changes after training (pooler weights get no gradient from token vectors)
    for name, before in retriever_before.items():
        if "pooler" in name:
            continue
        assert not torch.equal(before, named[name].detach()), f"retriever {name} did not change"
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(llm_before[n], p.detach())]
    assert len(changed) == len(llm_before)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all(k in logs[0] for k in ("lm_loss", "rank_loss", "rank_agreement_kendall_tau"))


def test_batch_output_shapes_and_context_order(tmp_path, llm_tokenizer, bert_tokenizer, demo):
    trainer = make_trainer(tmp_path, llm_tokenizer, bert_tokenizer, demo, utility_precision="fp32")
    rows = [dict(demo.train[i]) for i in range(3)]
    from jmlr_hf.data import validate_qa_row

    out = trainer.joint_step(trainer.model.train(), [validate_qa_row(r) for r in rows])
    assert (
        out.candidate_ids.shape == (3, 6)
        and out.scored_ids.shape == (3, 3)
        and out.context_ids.shape == (3, 2)
    )
    assert out.utility_nll.shape == (3, 3) and torch.isfinite(out.utility_nll).all()
    for b in range(3):  # scored and context docs are candidates, without repeats
        assert set(out.scored_ids[b].tolist()) <= set(out.candidate_ids[b].tolist())
        assert len(set(out.scored_ids[b].tolist())) == 3
    # the utility of one row does not depend on the other rows of the batch (padding is respected)
    single = trainer.prompts.batch(
        [trainer.prompts.prompt(rows[0], [trainer.index.passage(int(out.scored_ids[0, 0]))])],
        [format_target(rows[0])],
        "left",
    )
    from jmlr_hf.trainer import answer_nll

    torch.testing.assert_close(
        answer_nll(trainer.model, single)[0], out.utility_nll[0, 0], rtol=1e-4, atol=1e-4
    )


def test_save_layout_and_resume_is_identical(tmp_path, llm_tokenizer, bert_tokenizer, demo):
    common = dict(
        max_steps=4,
        candidate_sampling="sample",
        index_refresh_steps=2,
        logging_steps=1,
        utility_precision="fp32",
    )
    straight = make_trainer(tmp_path / "a", llm_tokenizer, bert_tokenizer, demo, **common)
    straight.train()
    losses_straight = [h["loss"] for h in straight.state.log_history if "loss" in h]

    first = make_trainer(
        tmp_path / "b", llm_tokenizer, bert_tokenizer, demo, save_strategy="steps", save_steps=2, **common
    )
    first.add_callback(StopAt(2))  # same schedule as the straight run, interrupted after step 2
    first.train()
    ckpt = tmp_path / "b" / "out" / "checkpoint-2"
    for name in (
        "model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "retriever/model.safetensors",
        "retriever/tokenizer.json",
        "index/vectors.npy",
        "jmlr_state.json",
        "tokenizer.json",
    ):
        assert (ckpt / name).exists(), name
    resumed = make_trainer(
        tmp_path / "b", llm_tokenizer, bert_tokenizer, demo, save_strategy="steps", save_steps=2, **common
    )
    resumed.train(resume_from_checkpoint=str(ckpt))
    losses_resumed = [h["loss"] for h in resumed.state.log_history if "loss" in h]
    assert len(losses_resumed) == 4
    assert losses_resumed[2:] == pytest.approx(losses_straight[2:], rel=1e-5)
    for (n, p), (_, q) in zip(straight.retriever.named_parameters(), resumed.retriever.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
    # final save: LLM + tokenizer at the top, retriever (with tokenizer) in retriever/
    resumed.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / "model.safetensors").is_file()
    loaded = JMLRRetriever.from_pretrained(tmp_path / "final" / "retriever")
    torch.testing.assert_close(loaded.linear.weight, resumed.retriever.linear.weight.cpu())
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "final").config.hidden_size == 32
    # ... and the prompt settings that `jmlr eval` / `jmlr ask` reuse
    assert read_inference_settings(tmp_path / "final") == {
        "prompt_template": None,
        "max_context_tokens": 256,
        "num_context_docs": 2,
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"num_candidate_docs": 6, "num_context_docs": 8},
            r"num_context_docs \(8\) > num_candidate_docs \(6\)",
        ),
        ({"rank_loss": "listwise"}, "rank_loss"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        JMLRTrainingArguments(output_dir=str(tmp_path), **kwargs)


def test_bad_inputs(tmp_path, llm_tokenizer, bert_tokenizer, demo):
    bad_rows = [dict(demo.train[0]), {**dict(demo.train[1]), "answer": "Z"}]
    with pytest.raises(ValueError, match="train_dataset.*index 1"):
        trainer = make_trainer(tmp_path, llm_tokenizer, bert_tokenizer, demo)
        JMLRTrainer(
            trainer.model,
            trainer.retriever,
            trainer.index,
            trainer.args,
            train_dataset=bad_rows,
            processing_class=llm_tokenizer,
        )
    with pytest.raises(ValueError, match="fewer than num_candidate_docs"):
        retriever = make_tiny_retriever(bert_tokenizer)
        small = DocumentIndex.build(["a b c", "d e f"], retriever)
        JMLRTrainer(
            make_tiny_llm(llm_tokenizer),
            retriever,
            small,
            trainer.args,
            train_dataset=demo.train,
            processing_class=llm_tokenizer,
        )


def test_non_finite_loss_is_skipped_without_corrupting_weights(
    tmp_path, llm_tokenizer, bert_tokenizer, demo, caplog
):
    trainer = make_trainer(tmp_path, llm_tokenizer, bert_tokenizer, demo, max_steps=1)
    original = trainer.joint_step

    def poisoned(model, rows):
        out = original(model, rows)
        out.loss = out.loss * float("nan")
        return out

    trainer.joint_step = poisoned
    with caplog.at_level("WARNING"):
        trainer.train()
    assert trainer.skipped_batches == 1 and "Non-finite loss" in caplog.text
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(torch.isfinite(p).all() for p in trainer.retriever.parameters())


def test_lm_target_cites_the_context_passage_that_supports_the_explanation(
    tmp_path, llm_tokenizer, bert_tokenizer, demo, monkeypatch
):
    """The joint step's LM loss is on ``PromptBuilder.target``: the explanation cites its passage as [n]."""
    from types import SimpleNamespace

    from jmlr_hf.data import validate_qa_row

    rows = [validate_qa_row(dict(demo.train[i])) for i in range(2)]
    # a corpus of the rows' gold passages and two others, all of them in every prompt: the gold one always is
    keep = {r["gold_doc_id"] for r in rows}
    keep |= set([d for d in demo.corpus["id"] if d not in keep][:2])
    corpus = demo.corpus.filter(lambda d: d["id"] in keep)
    trainer = make_trainer(
        tmp_path,
        llm_tokenizer,
        bert_tokenizer,
        SimpleNamespace(corpus=corpus, train=demo.train),
        utility_precision="fp32",
        num_candidate_docs=4,
        num_scored_docs=2,
        num_context_docs=4,
        max_context_tokens=1024,
    )
    seen: list[tuple[list[str], list[str]]] = []
    batch = trainer.prompts.batch

    def recording_batch(prompts, targets, *args, **kwargs):
        seen.append((list(prompts), list(targets)))
        return batch(prompts, targets, *args, **kwargs)

    monkeypatch.setattr(trainer.prompts, "batch", recording_batch)
    out = trainer.joint_step(trainer.model.train(), rows)
    prompts, targets = seen[-1]  # the LM loss batch (utility scoring builds its own)
    cited = 0
    for b, (row, target) in enumerate(zip(rows, targets)):
        context = [trainer.index.hit(int(i), 0.0)["doc_id"] for i in out.context_ids[b]]
        assert target.startswith(f"{row['answer']}.") and row["explanation"].rstrip(".") in target
        if row["gold_doc_id"] in context:  # the demo explanation restates its passage: it must cite it
            assert f"[{context.index(row['gold_doc_id']) + 1}]" in target
            cited += 1
    assert cited == len(rows)
