"""jmlr_hf.evaluation: letter log-likelihood against an unbatched reference, recall, agreement, tables."""

from __future__ import annotations

import json

import pytest
import torch

from jmlr_hf import DocumentIndex
from jmlr_hf.data import format_target, make_demo_task, validate_qa_dataset
from jmlr_hf.evaluation import (
    evaluate_mcq,
    kendall_tau,
    letter_log_likelihoods,
    option_log_likelihoods,
    parse_answer_letter,
    rag_answer_nll,
    recall_at_k,
    results_to_markdown,
    retrieve_passages,
    retriever_llm_agreement,
    save_results,
)
from jmlr_hf.prompting import PromptBuilder
from testing_utils import make_tiny_llm, make_tiny_retriever


@pytest.fixture(scope="module")
def tiny_llm(llm_tokenizer):
    return make_tiny_llm(llm_tokenizer, hidden_size=64, intermediate_size=128).eval()


@pytest.fixture(scope="module")
def demo():
    return make_demo_task(num_facts=12, seed=1, related_docs_per_fact=2, test_fraction=0.5)


@pytest.fixture(scope="module")
def index(bert_tokenizer, demo):
    return DocumentIndex.build(demo.corpus, make_tiny_retriever(bert_tokenizer), backend="exact")


def _reference_letter_logprobs(model, prompts, row, passages):
    """One unpadded forward per question; the first token of the training target for each letter."""
    ids = torch.tensor([prompts.prompt_ids(prompts.prompt(row, passages))])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)
    out = {}
    for letter in row["options"]:
        first = prompts.target_ids(format_target({**row, "answer": letter}))[0]
        out[letter] = float(logprobs[first])
    return out


def test_letter_log_likelihoods_match_unbatched_reference(tiny_llm, llm_tokenizer, demo, index):
    rows = validate_qa_dataset(demo.test)[:5]
    prompts = PromptBuilder(llm_tokenizer, max_context_tokens=200)
    passages = retrieve_passages(index, rows, k=2)
    passages[1] = passages[1][:1]  # rows of different lengths: left padding must not change the result
    batched = letter_log_likelihoods(tiny_llm, prompts, rows, passages, batch_size=3)
    for row, got, ctx in zip(rows, batched, passages):
        ref = _reference_letter_logprobs(tiny_llm, prompts, row, ctx)
        assert list(got) == list(row["options"])
        for letter in ref:
            assert got[letter] == pytest.approx(ref[letter], abs=1e-4)


def test_evaluate_mcq_accuracy_is_argmax_of_the_reference(tiny_llm, llm_tokenizer, demo):
    rows = validate_qa_dataset(demo.test)
    result = evaluate_mcq(tiny_llm, llm_tokenizer, demo.test, batch_size=4, show_progress_bar=False)
    prompts = PromptBuilder(llm_tokenizer)
    expected = []
    for row in rows:
        ref = _reference_letter_logprobs(tiny_llm, prompts, row, ())
        expected.append(max(ref, key=ref.get))
    assert result.predictions == expected
    assert result.accuracy == pytest.approx(sum(p == r["answer"] for p, r in zip(expected, rows)) / len(rows))
    assert result.num_questions == len(rows) and result.ids == [r["id"] for r in rows]
    assert json.loads(json.dumps(result.to_dict()))["method"] == "loglik"


def test_evaluate_mcq_generate_parses_the_generated_letter(tiny_llm, llm_tokenizer, demo):
    rows = validate_qa_dataset(demo.test)[:3]
    result = evaluate_mcq(
        tiny_llm, llm_tokenizer, rows, method="generate", max_new_tokens=3, show_progress_bar=False
    )
    prompts = PromptBuilder(llm_tokenizer)
    for row, predicted in zip(rows, result.predictions):
        ids = torch.tensor([prompts.prompt_ids(prompts.prompt(row))])
        out = tiny_llm.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
        text = llm_tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        assert predicted == parse_answer_letter(text, list(row["options"]))


@pytest.mark.parametrize(
    ("bad_input", "message"),
    [
        pytest.param(
            lambda rows: {"dataset": [rows[0], {"id": "free-1", "question": "Why?", "answer": "because"}]},
            "free-1",
            id="free-text-row",
        ),
        pytest.param(lambda rows: {"dataset": rows, "passages": [[]]}, "passages for 1 rows", id="passages"),
        pytest.param(lambda rows: {"dataset": rows, "method": "vote"}, "method", id="method"),
    ],
)
def test_evaluate_mcq_bad_input_names_the_row(bad_input, message, tiny_llm, llm_tokenizer, demo):
    rows = validate_qa_dataset(demo.test)[:2]
    with pytest.raises(ValueError, match=message):
        evaluate_mcq(tiny_llm, llm_tokenizer, **bad_input(rows), show_progress_bar=False)


@pytest.mark.parametrize(
    ("text", "letter"),
    [("B. nugrufuprex", "B"), (" (c) because", "C"), ("Answer: D", "D"), ("E. x", None), ("The drug", None)],
)
def test_parse_answer_letter(text, letter):
    assert parse_answer_letter(text, ["A", "B", "C", "D"]) == letter


def test_recall_at_k_matches_search(index, demo):
    rows = list(demo.test)
    got = recall_at_k(index, demo.test, ks=(1, 3))
    hits = index.search([r["question"] for r in rows], k=3)
    for k in (1, 3):
        found = [r["gold_doc_id"] in [h["doc_id"] for h in top[:k]] for r, top in zip(rows, hits)]
        assert got[f"recall@{k}"] == pytest.approx(sum(found) / len(rows))
    assert got["recall@1"] <= got["recall@3"]


def test_recall_at_k_bad_gold(index, demo):
    rows = list(demo.test)
    with pytest.raises(ValueError, match="not in the index"):
        recall_at_k(index, [{**rows[0], "gold_doc_id": "nope"}])
    with pytest.raises(ValueError, match="has no 'gold_doc_id'"):
        recall_at_k(index, [{k: v for k, v in rows[0].items() if k != "gold_doc_id"}])


def test_retriever_llm_agreement_matches_per_passage_nll(tiny_llm, llm_tokenizer, index, demo):
    rows = validate_qa_dataset(demo.test)[:3]
    got = retriever_llm_agreement(tiny_llm, llm_tokenizer, index, rows, k=4, show_progress_bar=False)
    prompts = PromptBuilder(llm_tokenizer)
    taus = []
    for row, top in zip(rows, retrieve_passages(index, rows, k=4)):
        nll = []
        for hit in top:  # one unbatched forward per passage
            batch = prompts.batch([prompts.prompt(row, [hit])], [format_target(row)])
            logits = tiny_llm(input_ids=batch["input_ids"]).logits[0, :-1]
            labels = batch["labels"][0, 1:]
            nll.append(float(torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100)))
        taus.append(kendall_tau(torch.tensor([h["score"] for h in top]), -torch.tensor(nll)))
    assert got == pytest.approx(sum(taus) / len(taus), abs=1e-6)


def test_rag_answer_nll_matches_unbatched_reference(tiny_llm, llm_tokenizer, index, demo):
    rows = validate_qa_dataset(demo.test)[:3]
    passages = retrieve_passages(index, rows, k=2)
    got = rag_answer_nll(tiny_llm, llm_tokenizer, rows, passages, batch_size=2, show_progress_bar=False)
    prompts = PromptBuilder(llm_tokenizer)
    for row, top, value in zip(rows, passages, got):  # one unpadded forward per row
        batch = prompts.batch([prompts.prompt(row, top)], [format_target(row)])
        logits = tiny_llm(input_ids=batch["input_ids"]).logits[0, :-1]
        expected = torch.nn.functional.cross_entropy(logits, batch["labels"][0, 1:], ignore_index=-100)
        assert value == pytest.approx(float(expected), abs=1e-4)
    with pytest.raises(ValueError, match="2 passage lists for 3 rows"):
        rag_answer_nll(tiny_llm, llm_tokenizer, rows, passages[:2])


def test_results_table_and_json(tmp_path):
    results = {"closed-book": {"accuracy": 0.25}, "JMLR": {"accuracy": 0.5, "recall@1": 0.875}}
    table = results_to_markdown(results)
    assert table.splitlines() == [
        "| system | accuracy | recall@1 |",
        "|---|---|---|",
        "| closed-book | 0.250 | - |",
        "| JMLR | 0.500 | 0.875 |",
    ]
    save_results(results, tmp_path / "sub" / "results.json")
    assert json.loads((tmp_path / "sub" / "results.json").read_text()) == results


def test_option_log_likelihoods_match_unbatched_reference(tiny_llm, llm_tokenizer, demo, index):
    rows = validate_qa_dataset(demo.test)[:3]
    prompts = PromptBuilder(llm_tokenizer, max_context_tokens=200)
    passages = retrieve_passages(index, rows, k=2)
    got = option_log_likelihoods(tiny_llm, prompts, rows, passages, batch_size=2)
    for row, scores, ctx in zip(rows, got, passages):
        prompt_ids = prompts.prompt_ids(prompts.prompt(row, ctx))
        for letter, text in row["options"].items():
            answer = llm_tokenizer(f"{letter}. {text}", add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt_ids + answer])
            logprobs = torch.log_softmax(tiny_llm(input_ids=ids).logits[0].float(), -1)
            ref = sum(float(logprobs[len(prompt_ids) - 1 + j, t]) for j, t in enumerate(answer))
            assert scores[letter] == pytest.approx(ref, abs=1e-3)
    result = evaluate_mcq(
        tiny_llm, llm_tokenizer, rows, passages=passages, method="option", max_context_tokens=200
    )
    assert result.predictions == [max(s, key=s.get) for s in got]
