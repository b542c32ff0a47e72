"""jmlr_hf.evaluation: log-likelihoods against unbatched references (chat and base tokenizers), answer parsing
on real generations, seeded stratified samples, recall, agreement, tables."""

from __future__ import annotations

import copy
import json
from collections import Counter

import pytest
import torch

from jmlr_hf import DocumentIndex
from jmlr_hf.data import format_target, load_mirage, make_demo_task, validate_qa_dataset
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
    sample_indices,
    sample_questions,
    save_results,
)
from jmlr_hf.evaluation.mcq import _letter_token_ids
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


@pytest.fixture(scope="module", params=["chat", "base"])
def any_tokenizer(request, llm_tokenizer):
    """SmolLM2's tokenizer with its chat template, and as a base model's (no template: "...Answer: ")."""
    if request.param == "chat":
        return llm_tokenizer
    base = copy.deepcopy(llm_tokenizer)
    base.chat_template = None
    return base


def _reference_letter_logprobs(model, prompts, row, passages):
    """One unpadded forward per question; each letter's token read off the tokenized prompt + answer."""
    prompt = prompts.prompt(row, passages)
    head = prompts.prompt_ids(prompt.rstrip(" "))
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([head])).logits[0, -1].float(), -1)
    out = {}
    for letter in row["options"]:
        full = prompts.prompt_ids(prompt + format_target({**row, "answer": letter, "explanation": ""}))
        assert full[: len(head)] == head
        out[letter] = float(logprobs[full[len(head)]])
    return out


def test_letter_log_likelihoods_match_unbatched_reference(tiny_llm, any_tokenizer, demo, index):
    rows = validate_qa_dataset(demo.test)[:5]
    prompts = PromptBuilder(any_tokenizer, max_context_tokens=200)
    passages = retrieve_passages(index, rows, k=2)
    passages[1] = passages[1][:1]  # rows of different lengths: left padding must not change the result
    batched = letter_log_likelihoods(tiny_llm, prompts, rows, passages, batch_size=3)
    for row, got, ctx in zip(rows, batched, passages):
        ref = _reference_letter_logprobs(tiny_llm, prompts, row, ctx)
        assert list(got) == list(row["options"])
        for letter in ref:
            assert got[letter] == pytest.approx(ref[letter], abs=1e-4)


def test_base_model_answer_is_scored_and_trained_as_the_tokenizer_writes_it(any_tokenizer):
    """After "Answer: " the letter is the one token " A" of ordinary text, not a lone " " then "A"."""
    row = {
        "id": "q",
        "question": "First-line drug?",
        "options": {"A": "Metformin", "B": "Aspirin"},
        "answer": "A",
    }
    prompts = PromptBuilder(any_tokenizer)
    prompt = prompts.prompt(row)
    full = prompts.prompt_ids(prompt + "A. Metformin")
    head, letter_ids = _letter_token_ids(prompts, prompt, row)
    assert head + letter_ids[:1] == full[: len(head) + 1]
    batch = prompts.batch([prompt], ["A. Metformin"])  # the training target
    assert batch["input_ids"][0].tolist() == full + [any_tokenizer.eos_token_id]
    assert batch["labels"][0, len(head) :].tolist() == full[len(head) :] + [any_tokenizer.eos_token_id]
    if not prompts.use_chat_template:
        assert prompt.endswith("Answer: ")
        assert any_tokenizer.convert_ids_to_tokens(letter_ids) == ["ĠA", "ĠB"]  # GPT-2-style " A"


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
        assert predicted == parse_answer_letter(text, row["options"])


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


def _reference_option_loglik(model, prompts, prompt, text):
    """lm-evaluation-harness style, one option at a time: context = the prompt without its trailing
    space, continuation = the rest of the tokenized prompt + option text; summed log-probability."""
    context = prompts.prompt_ids(prompt.rstrip(" "))
    whole = prompts.prompt_ids(prompt + text)
    assert whole[: len(context)] == context
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].float(), -1)
    return sum(float(logprobs[j - 1, whole[j]]) for j in range(len(context), len(whole)))


def test_option_log_likelihoods_score_the_option_text_like_an_unbatched_reference(
    tiny_llm, any_tokenizer, demo, index
):
    rows = validate_qa_dataset(demo.test)[:3]
    prompts = PromptBuilder(any_tokenizer, max_context_tokens=200)
    passages = retrieve_passages(index, rows, k=2)
    got = option_log_likelihoods(tiny_llm, prompts, rows, passages, batch_size=2)
    normed = option_log_likelihoods(tiny_llm, prompts, rows, passages, batch_size=2, normalize=True)
    space = "" if prompts.use_chat_template else " "  # the continuation after "Answer:" is " <text>"
    for row, scores, norm, ctx in zip(rows, got, normed, passages):
        prompt = prompts.prompt(row, ctx)
        for letter, text in row["options"].items():  # the option text alone: no letter prior
            ref = _reference_option_loglik(tiny_llm, prompts, prompt, text)
            assert scores[letter] == pytest.approx(ref, abs=1e-3)
            assert norm[letter] == pytest.approx(ref / len((space + text).encode("utf-8")), abs=1e-4)
    result = evaluate_mcq(
        tiny_llm, any_tokenizer, rows, passages=passages, method="option", max_context_tokens=200
    )
    assert result.predictions == [max(s, key=s.get) for s in got]
    assert result.predictions_norm == [max(s, key=s.get) for s in normed]
    answers = [r["answer"] for r in rows]
    assert result.accuracy_norm == sum(p == a for p, a in zip(result.predictions_norm, answers)) / len(rows)


def test_generate_keeps_a_grounding_record_per_question(tiny_llm, llm_tokenizer, demo, index):
    rows = validate_qa_dataset(demo.test)[:3]
    passages = retrieve_passages(index, rows, k=3)
    result = evaluate_mcq(
        tiny_llm,
        llm_tokenizer,
        rows,
        passages=passages,
        method="generate",
        max_context_tokens=60,  # the budget cuts the least relevant passages
        max_new_tokens=5,
        show_progress_bar=False,
    )
    prompts = PromptBuilder(llm_tokenizer, max_context_tokens=60)
    assert len(result.generations) == len(rows)
    for row, record, ctx, predicted in zip(rows, result.generations, passages, result.predictions):
        placed = prompts.placed_passages(ctx)
        assert record["passages"] == [{"title": p["title"], "text": p["text"]} for p in placed]
        assert record["question"] == row["question"] and record["options"] == row["options"]
        assert (
            record["stated_letter"] == predicted == parse_answer_letter(record["rationale"], row["options"])
        )
        assert len(llm_tokenizer(record["rationale"], add_special_tokens=False)["input_ids"]) <= 6
    assert result.grounding is None or isinstance(result.grounding, dict)


# Real greedy outputs of the embedded SmolLM2-135M-Instruct on MIRAGE questions (closed-book prompt).
_REAL_GENERATIONS = [
    ("medqa-0788", "A. Goblet cells", "A"),
    (  # the leading letter is the answer asked for; the contradicting statement after it is not
        "medqa-0082",
        "A. Desmoplastic\n\nThe correct answer is D. Superficial spreading. This type of melanoma is a "
        "non-invasive form of skin cancer",
        "A",
    ),
    ("medqa-0559", "B. Reaction formation\n\nThe answer is D. Displacement.", "B"),
    (  # the prompt's option list copied back is no answer; the statement after it is
        "medqa-1047",
        "A. Inferior vena cava thrombosis\nB. Cutaneous xanthomas\nC. Increased CA 19-9 levels\nD. "
        'Kayser-Fleischer rings\n"The correct answer is C.',
        "C",
    ),
    (  # the article "A" is no answer; the one option named in the first sentence is
        "medqa-0861",
        "A 3-year-old boy with a history of yellowing of the skin and conjunctivae is at greatest risk for "
        "acute myelogenous leukemia (AML). This condition is a rare and aggressive form of leukemia",
        "A",
    ),
    (
        "medqa-0530",
        "A. Patent foramen ovale\nB. Mitral valve vegetation\nC. Atrial fibrillation\n"
        "D. Carotid artery dissection\n\nThe correct answer is D. Carotid artery dissection.",
        "D",
    ),
    ("pubmedqa-19481382", "B. no", "B"),
    ("mmlu-anatomy-082", "C. arachnoid and pia maters.", "C"),
    ("mmlu-college_biology-130", "C. vessel elements and companion cells", "C"),  # the letter wins
    ("bioasq-642d4c9b57b1c7a315000013", "A. no", "A"),
]
_OPTIONS = {
    "medqa-0559": ["Repression", "Reaction formation", "Denial", "Displacement"],
    "medqa-0788": [
        "Goblet cells",
        "Bronchial epithelial cells",
        "Type II pneumocytes",
        "Vascular smooth myocytes",
    ],
    "medqa-0082": ["Desmoplastic", "Nodular", "Acral lentiginous", "Superficial spreading"],
    "medqa-1047": [
        "Inferior vena cava thrombosis",
        "Cutaneous xanthomas",
        "Increased CA 19-9 levels",
        'Kayser-Fleischer rings\n"',
    ],
    "medqa-0861": [
        "Acute myelogenous leukemia",
        "Cholecystitis",
        "Renal papillary necrosis",
        "Splenic sequestration crisis",
    ],
    "medqa-0530": [
        "Patent foramen ovale",
        "Mitral valve vegetation",
        "Atrial fibrillation",
        "Carotid artery dissection",
    ],
    "pubmedqa-19481382": ["yes", "no", "maybe"],
    "mmlu-anatomy-082": [
        "skull and dura mater.",
        "dura mater and arachnoid mater.",
        "arachnoid and pia maters.",
        "pia mater and brain surface.",
    ],
    "mmlu-college_biology-130": [
        "collenchyma and sclerenchyma",
        "sieve tube members and companion cells",
        "tracheids and vessel elements",
        "vessel elements and companion cells",
    ],
    "bioasq-642d4c9b57b1c7a315000013": ["yes", "no"],
}


@pytest.mark.parametrize(("qid", "text", "letter"), _REAL_GENERATIONS, ids=[g[0] for g in _REAL_GENERATIONS])
def test_parse_answer_letter_reads_real_generations(qid, text, letter):
    options = dict(zip("ABCD", _OPTIONS[qid]))
    assert parse_answer_letter(text, options) == letter


_FOUR = {"A": "Metformin", "B": "Aspirin", "C": "Insulin glargine", "D": "Diet alone"}
_YES_NO_MAYBE = {"A": "yes", "B": "no", "C": "maybe"}


@pytest.mark.parametrize(
    ("text", "options", "letter"),
    [
        ("A 39-year-old man presents with chest pain.", _FOUR, None),  # an article, not an answer
        ("The correct answer is B", _FOUR, "B"),
        ("Option B", _FOUR, "B"),
        ("(B)", _FOUR, "B"),
        ("B.", _FOUR, "B"),
        ("**B**", _FOUR, "B"),
        ("**Answer:** (B)", _FOUR, "B"),
        ("Answer: C", _FOUR, "C"),
        ("the answer is option D", _FOUR, "D"),
        ("The best choice is C because it lasts", _FOUR, "C"),
        ("The answer is a matter of debate.", _FOUR, None),
        (
            "Answer with the letter of the correct option, then explain.",
            _FOUR,
            None,
        ),  # the instruction echoed
        ("B Aspirin", _FOUR, "B"),
        ('"Insulin glargine" is preferred here.', _FOUR, "C"),  # the option quoted without its letter
        ("The answer is Diet alone.", _FOUR, "D"),
        ("Yes", _YES_NO_MAYBE, "A"),
        ("No.", _YES_NO_MAYBE, "B"),
        ("Maybe, the evidence is mixed.", _YES_NO_MAYBE, "C"),
        ("B. nugrufuprex", _FOUR, "B"),
        (" (c) because", _FOUR, "C"),
        ("E. x", _FOUR, None),
        ("The drug", _FOUR, None),
    ],
)
def test_parse_answer_letter(text, options, letter):
    assert parse_answer_letter(text, options) == letter


def test_sample_is_seeded_and_stratified_by_answer():
    rows = [{"id": i, "answer": "A" if i < 60 else "B" if i < 90 else "C"} for i in range(100)]  # sorted
    picked = sample_indices(rows, 10, seed=3)
    assert picked == sorted(picked) == sample_indices(rows, 10, seed=3) != sample_indices(rows, 10, seed=4)
    assert [rows[i]["answer"] for i in picked].count("A") == 6 and sum(i >= 90 for i in picked) == 1
    assert sample_indices(rows, 500) == list(range(100))
    assert [r["id"] for r in sample_questions(rows, 10, seed=3)] == picked
    with pytest.raises(ValueError, match="positive"):
        sample_indices(rows, 0)


def test_sample_of_real_pubmedqa_keeps_the_answer_shares(shared_data):
    path = shared_data / "mirage" / "benchmark.json"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    pubmedqa = load_mirage(path, ["pubmedqa"])["pubmedqa"]
    answers = pubmedqa["answer"]
    assert set(answers[:100]) == {"A"}  # the file is sorted by answer: the first 100 are all "yes"
    sample = sample_questions(pubmedqa, 100, seed=0)
    counts = Counter(sample["answer"])
    assert counts == {"A": 55, "B": 34, "C": 11}  # 276 / 169 / 55 of 500, largest remainder
    assert sample["id"] == sample_questions(pubmedqa, 100, seed=0)["id"]
    assert sample["id"] != sample_questions(pubmedqa, 100, seed=1)["id"]
