"""Grounding metrics on hand-written rationales (and the demo task's known entities)."""

from __future__ import annotations

import math

import pytest

from jmlr_hf.data import make_demo_task
from jmlr_hf.evaluation.grounding import (
    cite_passages,
    content_words,
    extract_citations,
    grounding_summary,
    hallucinated_entities,
    hallucination_rate,
    invalid_citations,
    letter_agrees_with_rationale,
    sentence_support,
    split_answer,
    split_sentences,
    supported_sentence_share,
)

GOLD = {
    "title": "Management of Velorin syndrome",
    "text": "Recommendations: first-line therapy is zentorvane 25 mg twice daily, continued for 8 weeks. "
    "Concomitant use of kalimab is contraindicated because of the risk of major bleeding.",
}
OTHER = {"title": "Tramix disease", "text": "Screening for hearing loss is recommended every 2 years."}
OPTIONS = {"A": "kalimab", "B": "zentorvane", "C": "brodexin", "D": "sulavir"}
QUESTION = "What is the first-line treatment for Velorin syndrome?"
ENTITIES = {
    "condition": {"Velorin syndrome", "Tramix disease", "Drakosis"},
    "drug": {"zentorvane", "kalimab", "brodexin", "sulavir", "pruvane"},
    "dose": {"25 mg twice daily", "25 mg", "40 mg once daily", "40 mg"},
}


def record(rationale, stated="B", passages=(GOLD, OTHER)):
    return {
        "question": QUESTION,
        "options": OPTIONS,
        "passages": list(passages),
        "rationale": rationale,
        "stated_letter": stated,
    }


def slow_precision(sentence, passage_text):
    """Reference: a word-by-word loop over the same tokenisation."""
    words = content_words(sentence)
    passage = content_words(passage_text)
    hits = 0
    for word in words:
        hits += word in passage
    return hits / len(words)


# ---------------------------------------------------------------------------------------------------
# tokens, sentences, citations
# ---------------------------------------------------------------------------------------------------


def test_content_words_drop_stopwords_and_citations_and_keep_numbers_and_doses():
    words = content_words("The dose is 25mg of Zentorvane for 8 weeks [1].")
    assert words == {"dose", "25 mg", "zentorvane", "8", "weeks"}


def test_doses_with_different_amounts_do_not_match():
    assert sentence_support("Take zentorvane 40 mg.", GOLD) == pytest.approx(1 / 3)
    assert sentence_support("Take zentorvane 25 mg.", GOLD) == pytest.approx(2 / 3)


def test_sentence_support_is_content_word_precision_against_title_and_text():
    sentence = "Zentorvane is first-line for Velorin syndrome, unlike penicillin."
    expected = slow_precision(sentence, f"{GOLD['title']}\n{GOLD['text']}")
    assert sentence_support(sentence, GOLD) == pytest.approx(expected)
    assert 0 < expected < 1


def test_split_sentences_keeps_citations_with_their_sentence_and_decimals_whole():
    text = "Give 2.5 mg [1]. Avoid kalimab. [2] Screen every 2 years!"
    assert split_sentences(text) == ["Give 2.5 mg [1].", "Avoid kalimab. [2]", "Screen every 2 years!"]


def test_extract_and_invalid_citations():
    text = "Zentorvane [1]. Kalimab is contraindicated [2, 5]. See [0] and [3]."
    assert extract_citations(text) == [1, 2, 5, 0, 3]
    assert invalid_citations(text, num_passages=2) == [5, 0, 3]
    assert invalid_citations("No citation at all.", 2) == []


# ---------------------------------------------------------------------------------------------------
# supported sentences
# ---------------------------------------------------------------------------------------------------


def test_a_grounded_rationale_is_fully_supported():
    rationale = "First-line therapy is zentorvane 25 mg twice daily [1]. Kalimab is contraindicated [1]."
    assert supported_sentence_share(rationale, [GOLD, OTHER]) == 1.0
    assert supported_sentence_share(rationale, [GOLD, OTHER], against="any") == 1.0


def test_multi_sentence_share_counts_each_sentence():
    rationale = (
        "First-line therapy is zentorvane [1]. "  # supported by its citation
        "Zentorvane also cures migraine in children [1]. "  # cited but unsupported
        "Screening for hearing loss is recommended every 2 years."  # supported by [2] but uncited
    )
    assert supported_sentence_share(rationale, [GOLD, OTHER]) == pytest.approx(1 / 3)
    assert supported_sentence_share(rationale, [GOLD, OTHER], against="any") == pytest.approx(2 / 3)


def test_citing_the_wrong_passage_is_not_support():
    assert supported_sentence_share("First-line therapy is zentorvane [2].", [GOLD, OTHER]) == 0.0


def test_invalid_citation_supports_nothing_and_empty_rationale_is_none():
    assert supported_sentence_share("First-line therapy is zentorvane [7].", [GOLD]) == 0.0
    assert supported_sentence_share("", [GOLD]) is None


def test_threshold_decides():
    sentence = "Zentorvane twice daily cures migraine."  # 3 of 5 content words in GOLD
    assert sentence_support(sentence, GOLD) == pytest.approx(0.6)
    assert supported_sentence_share(sentence, [GOLD], against="any") == 1.0
    assert supported_sentence_share(sentence, [GOLD], threshold=0.61, against="any") == 0.0


# ---------------------------------------------------------------------------------------------------
# citing training targets
# ---------------------------------------------------------------------------------------------------


def test_cite_passages_cites_the_best_supporting_passage_of_each_sentence():
    explanation = (
        "The guideline recommends zentorvane 25 mg twice daily as first-line therapy. "
        "Screening for hearing loss is recommended every 2 years. "
        "This is an invented fact about unicorns."
    )
    cited = cite_passages(explanation, [OTHER, GOLD])
    assert cited == (
        "The guideline recommends zentorvane 25 mg twice daily as first-line therapy [2]. "
        "Screening for hearing loss is recommended every 2 years [1]. "
        "This is an invented fact about unicorns."
    )
    assert supported_sentence_share(cited, [OTHER, GOLD]) == pytest.approx(2 / 3)


def test_cite_passages_without_passages_or_with_citations_leaves_the_text():
    assert cite_passages("Zentorvane is first-line.", []) == "Zentorvane is first-line."
    assert cite_passages("Zentorvane is first-line [2].", [GOLD]) == "Zentorvane is first-line [2]."


def test_demo_explanations_are_cited_with_their_gold_passage():
    task = make_demo_task(num_facts=6, seed=0, related_docs_per_fact=1)
    corpus = {row["id"]: row for row in task.corpus}
    for row in task.train:
        related = corpus[f"{row['gold_doc_id']}-related-0"]
        cited = cite_passages(row["explanation"], [related, corpus[row["gold_doc_id"]]])
        assert cited.endswith("[2].")


def test_prompt_builder_target_cites_the_passages_as_numbered_in_the_prompt(llm_tokenizer):
    from jmlr_hf.data import format_target
    from jmlr_hf.prompting import PromptBuilder

    row = {
        "question": QUESTION,
        "options": OPTIONS,
        "answer": "B",
        "explanation": "First-line therapy is zentorvane 25 mg twice daily. Screening for hearing loss is "
        "recommended every 2 years.",
    }
    builder = PromptBuilder(llm_tokenizer, max_context_tokens=1000)
    target = builder.target(row, [GOLD, OTHER])
    assert target == (
        "B. zentorvane\nExplanation: First-line therapy is zentorvane 25 mg twice daily [1]. Screening for "
        "hearing loss is recommended every 2 years [2]."
    )
    prompt = builder.prompt(row, [GOLD, OTHER])
    assert "[1] Management of Velorin syndrome" in prompt and "[2] Tramix disease" in prompt
    assert builder.target(row) == format_target(row)  # closed-book: no citations
    # a passage the context budget drops is never cited
    tight = PromptBuilder(
        llm_tokenizer, max_context_tokens=len(llm_tokenizer(GOLD["text"])["input_ids"]) + 12
    )
    assert len(tight.placed_passages([GOLD, OTHER])) == 1
    assert "[2]" not in tight.target(row, [GOLD, OTHER])


# ---------------------------------------------------------------------------------------------------
# letter agreement, answer parsing
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rationale, stated, expected",
    [
        ("The guideline recommends zentorvane as first-line therapy [1].", "B", True),
        ("The guideline recommends zentorvane as first-line therapy [1].", "A", False),
        ("Kalimab is contraindicated [1]. Therefore zentorvane is the answer.", "B", True),
        ("So the answer is A.", "A", True),
        ("Option (C) fits best.", "B", False),
        ("Avoid kalimab and use zentorvane.", "B", None),  # two options in the conclusion
        ("The guideline is clear.", "B", None),  # no option named
        ("Zentorvane is first-line.", None, None),  # no stated letter
    ],
)
def test_letter_agrees_with_rationale(rationale, stated, expected):
    assert letter_agrees_with_rationale(rationale, OPTIONS, stated) is expected


def test_the_longer_option_text_wins():
    options = {"A": "25 mg", "B": "25 mg twice daily", "E": None}
    assert letter_agrees_with_rationale("Give 25 mg twice daily.", options, "B") is True


@pytest.mark.parametrize(
    "text, letter, rationale",
    [
        ("B. zentorvane\nExplanation: It is first-line [1].", "B", "It is first-line [1]."),
        ("B\nIt is first-line [1].", "B", "It is first-line [1]."),
        ("B. Zentorvane. It is first-line [1].", "B", "It is first-line [1]."),
        ("A patient should be referred [1].", None, "A patient should be referred [1]."),
        ("It is first-line [1].", None, "It is first-line [1]."),
    ],
)
def test_split_answer(text, letter, rationale):
    assert split_answer(text, OPTIONS) == (letter, rationale)


def test_metrics_of_a_whole_generated_answer_ignore_its_answer_head():
    whole = record("B. zentorvane\nExplanation: First-line therapy is zentorvane [1].")
    assert grounding_summary([whole]) == grounding_summary([record("First-line therapy is zentorvane [1].")])


# ---------------------------------------------------------------------------------------------------
# hallucination
# ---------------------------------------------------------------------------------------------------

GROUNDED = "Zentorvane 25 mg twice daily is first-line for Velorin syndrome [1]."
HALLUCINATED = "Pruvane 40 mg once daily is first-line for Drakosis."
MIXED = "Zentorvane is first-line [1]; pruvane is an alternative."


def test_hallucinated_entities_on_hand_written_rationales():
    assert hallucinated_entities(record(GROUNDED), ENTITIES) == set()
    assert hallucinated_entities(record(HALLUCINATED), ENTITIES) == {
        ("drug", "pruvane"),
        ("dose", "40 mg once daily"),
        ("dose", "40 mg"),
        ("condition", "Drakosis"),
    }
    assert hallucinated_entities(record(MIXED), ENTITIES) == {("drug", "pruvane")}


def test_entities_from_the_question_options_or_passages_are_not_hallucinations():
    # brodexin is a (wrong) option; Tramix disease is in the second passage
    assert hallucinated_entities(record("Brodexin treats Tramix disease."), ENTITIES) == set()
    # but without that passage Tramix disease is invented
    assert hallucinated_entities(record("Brodexin treats Tramix disease.", passages=[GOLD]), ENTITIES) == {
        ("condition", "Tramix disease")
    }


def test_hallucination_rate():
    records = [record(GROUNDED), record(HALLUCINATED), record(MIXED), record("")]
    assert hallucination_rate(records, ENTITIES) == 0.5
    assert hallucination_rate([], ENTITIES) == 0.0


def test_hallucination_rate_with_the_demo_tasks_entities():
    task = make_demo_task(num_facts=6, seed=0)
    corpus = {row["id"]: row for row in task.corpus}
    row = task.test[0]
    gold = corpus[row["gold_doc_id"]]
    options = [text for text in row["options"].values() if text]
    unused = [d for d in task.entities["drug"] if d not in gold["text"].lower() and d not in options]
    foreign = sorted(unused)[0]
    base = {"question": row["question"], "options": row["options"], "passages": [gold], "stated_letter": None}
    grounded = {**base, "rationale": row["explanation"]}
    invented = {**base, "rationale": f"{foreign.capitalize()} is preferred."}
    assert set(task.entities) == {"condition", "drug", "dose"}
    assert hallucination_rate([grounded], task.entities) == 0.0
    assert hallucination_rate([grounded, invented], task.entities) == 0.5
    # named in a given passage: grounded
    home = next(doc for doc in task.corpus if foreign in doc["text"].lower())
    assert hallucination_rate([{**invented, "passages": [gold, home]}], task.entities) == 0.0


# ---------------------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------------------


def test_grounding_summary():
    records = [
        record(GROUNDED, "B"),
        record("Zentorvane is first-line [3]. It cures all [1].", "B"),
        record(HALLUCINATED, "A"),
    ]
    summary = grounding_summary(records, known_entities=ENTITIES)
    assert summary["num_rationales"] == 3.0
    assert summary["citing_rationales"] == pytest.approx(2 / 3)
    assert summary["invalid_citations"] == pytest.approx(1 / 3)  # [3] of [1], [3], [1]
    assert summary["supported_sentences_cited"] == pytest.approx((1 + 0 + 0) / 3)
    assert summary["letter_agreement"] == pytest.approx(1.0)  # B/zentorvane twice; pruvane is no option
    assert summary["letter_parsed"] == pytest.approx(2 / 3)
    assert summary["hallucination_rate"] == pytest.approx(1 / 3)
    assert "hallucination_rate" not in grounding_summary(records)


def test_grounding_summary_of_no_rationales_is_nan_not_an_error():
    summary = grounding_summary([record("")])
    assert math.isnan(summary["supported_sentences_cited"]) and summary["invalid_citations"] == 0.0
