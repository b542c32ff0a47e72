"""Tests of the synthetic demo task (jmlr_hf.data.demo)."""

from __future__ import annotations

import re
import time
from collections import Counter

import pytest

from jmlr_hf.data.demo import QUESTION_TYPES, DemoTask, make_demo_task
from jmlr_hf.data.qa import format_target, validate_qa_dataset


@pytest.fixture(scope="module")
def task() -> DemoTask:
    return make_demo_task(num_facts=400, num_distractor_docs=50, test_fraction=0.25, seed=3)


def _rows(task: DemoTask) -> list[dict]:
    return validate_qa_dataset(list(task.train) + list(task.test))


def test_shapes_and_columns(task: DemoTask) -> None:
    assert len(task.corpus) == 450
    assert task.corpus.column_names == ["id", "title", "text"]
    assert len(task.train) == 300 and len(task.test) == 100
    for split in (task.train, task.test):
        assert split.column_names == ["id", "question", "options", "answer", "explanation", "gold_doc_id"]
    rows = _rows(task)  # every row is a valid QA row, ids unique across splits
    assert all(list(row["options"]) == ["A", "B", "C", "D"] for row in rows)
    assert all(row["explanation"] for row in rows)


def test_deterministic_for_a_seed() -> None:
    a, b = make_demo_task(60, 10, seed=11), make_demo_task(60, 10, seed=11)
    for name in ("corpus", "train", "test"):
        assert getattr(a, name).to_list() == getattr(b, name).to_list()
    c = make_demo_task(60, 10, seed=12)
    assert list(c.corpus["text"]) != list(a.corpus["text"])


def test_split_by_fact(task: DemoTask) -> None:
    train_docs, test_docs = set(task.train["gold_doc_id"]), set(task.test["gold_doc_id"])
    assert not train_docs & test_docs
    corpus_ids = set(task.corpus["id"])
    assert train_docs | test_docs <= corpus_ids
    assert len(corpus_ids) == len(task.corpus)
    several = make_demo_task(40, questions_per_fact=3, seed=1)
    assert not set(several.train["gold_doc_id"]) & set(several.test["gold_doc_id"])
    assert len(several.train) + len(several.test) == 120
    assert Counter([*several.train["gold_doc_id"], *several.test["gold_doc_id"]]) == Counter(
        {doc: 3 for doc in several.corpus["id"]}
    )


def test_answer_recoverable_from_gold_passage(task: DemoTask) -> None:
    passages = {row["id"]: (row["title"] + "\n" + row["text"]).lower() for row in task.corpus}
    for row in _rows(task):
        gold = passages[row["gold_doc_id"]]
        for letter, text in row["options"].items():
            assert (text.lower() in gold) == (letter == row["answer"]), (row["id"], letter, text)


def test_question_names_condition_in_passage(task: DemoTask) -> None:
    titles = dict(zip(task.corpus["id"], task.corpus["title"]))
    texts = dict(zip(task.corpus["id"], task.corpus["text"]))
    for row in _rows(task):
        condition = re.sub(
            r"^(Management of |Guideline on the treatment of )|: clinical practice guideline$",
            "",
            titles[row["gold_doc_id"]],
        )
        assert condition in row["question"] and condition in texts[row["gold_doc_id"]]
        assert format_target(row).startswith(f"{row['answer']}. ")


def test_drug_distractors_appear_in_corpus(task: DemoTask) -> None:
    corpus_text = " ".join(task.corpus["text"]).lower()
    drug_questions = [
        r for r in _rows(task) if r["id"].rsplit("-", 1)[-1] in ("first_line", "alternative", "interaction")
    ]
    assert drug_questions
    for row in drug_questions:
        assert all(text.lower() in corpus_text for text in row["options"].values())


def test_answer_letters_roughly_uniform(task: DemoTask) -> None:
    counts = Counter(row["answer"] for row in _rows(task))
    assert set(counts) == {"A", "B", "C", "D"}
    assert all(0.15 * 400 <= n <= 0.35 * 400 for n in counts.values()), counts


def test_question_types_vary(task: DemoTask) -> None:
    types = Counter(row["id"].rsplit("-", 1)[-1] for row in _rows(task))
    assert set(types) == set(QUESTION_TYPES)
    assert len({row["question"].split()[0] for row in _rows(task)}) >= 5


def test_unique_condition_names(task: DemoTask) -> None:
    titles = task.corpus["title"]
    conditions = [
        re.sub(r"^(Management of |Guideline on the treatment of )|: clinical practice guideline$", "", t)
        for t in titles
    ]
    assert len(set(conditions)) == len(conditions)
    stems = [c.split()[0].lower().removesuffix("osis") for c in conditions]
    assert len(set(stems)) == len(stems)


def test_passage_length(task: DemoTask) -> None:
    lengths = [len(text.split()) for text in task.corpus["text"]]
    assert 60 <= min(lengths) and max(lengths) <= 120


def test_small_and_fast() -> None:
    start = time.perf_counter()
    big = make_demo_task(num_facts=500, seed=0)
    assert time.perf_counter() - start < 1.0
    assert len(big.corpus) == 500


def test_edge_arguments() -> None:
    no_test = make_demo_task(10, test_fraction=0.0)
    assert len(no_test.test) == 0 and "gold_doc_id" in no_test.test.column_names
    tiny = make_demo_task(2, test_fraction=0.5)
    assert len(tiny.train) == 1 and len(tiny.test) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_facts": 0}, "num_facts >= 1"),
        ({"num_facts": 1}, "at least 2 passages"),
        ({"test_fraction": 1.5}, r"test_fraction must be in \[0, 1\], got 1.5"),
        ({"questions_per_fact": 7}, r"questions_per_fact must be in 1..6, got 7"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_demo_task(**kwargs)
