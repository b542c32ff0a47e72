"""Tests of the QA schema, adapters and loaders (jmlr_hf.data.qa)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict, concatenate_datasets

from jmlr_hf.data.qa import (
    answer_letters,
    format_question,
    format_target,
    from_medmcqa,
    from_medqa,
    from_mmlu,
    from_pubmedqa,
    load_mirage,
    load_qa_dataset,
    to_qa_dataset,
    validate_qa_dataset,
    validate_qa_row,
)

# Rows laid out exactly like the public releases.
MEDQA_ORIGINAL = {
    "question": "A 23-year-old pregnant woman at 22 weeks gestation presents with burning upon urination. "
    "Which of the following is the best treatment for this patient?",
    "answer": "Nitrofurantoin",
    "options": {"A": "Ampicillin", "B": "Ceftriaxone", "C": "Doxycycline", "D": "Nitrofurantoin"},
    "meta_info": "step2&3",
    "answer_idx": "D",
}
MEDQA_BIGBIO = {
    "meta_info": "step1",
    "question": "Which enzyme is deficient in classic galactosemia?",
    "answer_idx": "B",
    "answer": "Galactose-1-phosphate uridyltransferase",
    "options": [
        {"key": "A", "value": "Galactokinase"},
        {"key": "B", "value": "Galactose-1-phosphate uridyltransferase"},
        {"key": "C", "value": "Aldolase B"},
        {"key": "D", "value": "Hexokinase"},
        {"key": "E", "value": "Fructokinase"},
    ],
}
MEDMCQA = {
    "id": "e9ad821a-c438-4965-9f77-760819dfa155",
    "question": "Chronic urethral obstruction due to benign prismatic hyperplasia can lead to the following "
    "change in kidney parenchyma",
    "opa": "Hyperplasia",
    "opb": "Hyperophy",
    "opc": "Atrophy",
    "opd": "Dyplasia",
    "cop": 2,
    "choice_type": "single",
    "exp": "Chronic urethral obstruction leads to atrophy of the kidney parenchyma.",
    "subject_name": "Anatomy",
    "topic_name": "Urinary tract",
}
MMLU = {
    "question": "What is the embryological origin of the hyoid bone?",
    "subject": "anatomy",
    "choices": [
        "The first pharyngeal arch",
        "The first and second pharyngeal arches",
        "The second pharyngeal arch",
        "The second and third pharyngeal arches",
    ],
    "answer": 3,
}
PUBMEDQA = {
    "pubid": 21645374,
    "question": "Do mitochondria play a role in remodelling lace plant leaves during programmed cell death?",
    "context": {
        "contexts": ["Programmed cell death (PCD) is the regulated death of cells.", "The following..."],
        "labels": ["BACKGROUND", "RESULTS"],
        "meshes": ["Apoptosis", "Mitochondria"],
        "reasoning_required_pred": ["y", "e", "s"],
        "reasoning_free_pred": ["y", "e", "s"],
    },
    "long_answer": "Results depicted mitochondrial dynamics in vivo as PCD progresses.",
    "final_decision": "yes",
}


# ---------------------------------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------------------------------


def test_from_medqa_original_layout() -> None:
    row = from_medqa(MEDQA_ORIGINAL, index=7)
    assert row == {
        "id": "7",
        "question": MEDQA_ORIGINAL["question"],
        "options": MEDQA_ORIGINAL["options"],
        "answer": "D",
        "explanation": "",
    }


def test_from_medqa_bigbio_list_options() -> None:
    row = from_medqa(MEDQA_BIGBIO, index=0)
    assert list(row["options"]) == ["A", "B", "C", "D", "E"]
    assert row["answer"] == "B"
    assert row["options"]["B"] == "Galactose-1-phosphate uridyltransferase"


def test_from_medqa_without_answer_idx_uses_text() -> None:
    raw = {k: v for k, v in MEDQA_ORIGINAL.items() if k != "answer_idx"}
    assert from_medqa(raw, index=0)["answer"] == "D"


def test_from_medqa_inconsistent_answer_warns(caplog: pytest.LogCaptureFixture) -> None:
    raw = {**MEDQA_ORIGINAL, "answer": "Ampicillin"}
    assert from_medqa(raw, index=3)["answer"] == "D"
    assert "answer_idx" in caplog.text


def test_from_medqa_bad_option_list() -> None:
    with pytest.raises(ValueError, match=r"index 4.*key.*value"):
        from_medqa({**MEDQA_BIGBIO, "options": ["Galactokinase", "Aldolase B"]}, index=4)


def test_from_medmcqa() -> None:
    row = from_medmcqa(MEDMCQA, index=0)
    assert row == {
        "id": MEDMCQA["id"],
        "question": MEDMCQA["question"],
        "options": {"A": "Hyperplasia", "B": "Hyperophy", "C": "Atrophy", "D": "Dyplasia"},
        "answer": "C",
        "explanation": MEDMCQA["exp"],
    }


def test_from_medmcqa_null_exp_and_one_based_cop() -> None:
    row = from_medmcqa({**MEDMCQA, "exp": None, "cop": 1}, index=0)
    assert row["answer"] == "B" and row["explanation"] == ""
    assert from_medmcqa({**MEDMCQA, "cop": 4}, cop_base=1)["answer"] == "D"


@pytest.mark.parametrize(("cop", "message"), [(-1, "no usable answer"), (4, "out of range 0-3.*cop_base=1")])
def test_from_medmcqa_bad_cop(cop: int, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        from_medmcqa({**MEDMCQA, "cop": cop}, index=12)
    assert MEDMCQA["id"] in str(info.value) and "index 12" in str(info.value)


def test_from_mmlu() -> None:
    row = from_mmlu(MMLU, index=5)
    assert row["id"] == "5"
    assert row["answer"] == "D"
    assert row["options"]["D"] == "The second and third pharyngeal arches"
    assert row["explanation"] == ""


def test_from_mmlu_answer_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"index 2.*out of range 0-3"):
        from_mmlu({**MMLU, "answer": 4}, index=2)


def test_from_pubmedqa() -> None:
    row = from_pubmedqa(PUBMEDQA, index=0)
    assert row == {
        "id": "21645374",
        "question": PUBMEDQA["question"],
        "options": {"A": "yes", "B": "no", "C": "maybe"},
        "answer": "A",
        "explanation": PUBMEDQA["long_answer"],
    }
    assert from_pubmedqa({**PUBMEDQA, "final_decision": "maybe"})["answer"] == "C"


def test_from_pubmedqa_original_uppercase_layout() -> None:
    raw = {
        "QUESTION": PUBMEDQA["question"],
        "CONTEXTS": ["..."],
        "LABELS": ["BACKGROUND"],
        "MESHES": [],
        "YEAR": "2011",
        "reasoning_required_pred": "yes",
        "reasoning_free_pred": "yes",
        "final_decision": "no",
        "LONG_ANSWER": "Because.",
        "id": "21645374",
    }
    row = from_pubmedqa(raw)
    assert (row["id"], row["answer"], row["explanation"]) == ("21645374", "B", "Because.")


def test_from_pubmedqa_bad_decision() -> None:
    with pytest.raises(ValueError, match=r"21645374.*final_decision"):
        from_pubmedqa({**PUBMEDQA, "final_decision": "perhaps"}, index=0)


# ---------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------

GOOD = {"id": "q1", "question": "Which?", "options": {"A": "one", "B": "two"}, "answer": "B"}


def test_validate_normalises() -> None:
    row = validate_qa_row(
        {"question": " Which? ", "options": {"B": "two ", "A": "one", "C": None}, "answer": "b", "extra": 1},
        index=3,
    )
    assert row == {
        "id": "3",
        "question": "Which?",
        "options": {"A": "one", "B": "two"},
        "answer": "B",
        "explanation": "",
        "extra": 1,
    }
    assert list(row["options"]) == ["A", "B"]


def test_validate_answer_given_as_option_text() -> None:
    assert validate_qa_row({**GOOD, "answer": "  TWO "})["answer"] == "B"


def test_validate_free_text_and_empty_options() -> None:
    for options in (None, {}, {"A": None}):
        row = validate_qa_row({"id": 5, "question": "Name it.", "options": options, "answer": "aspirin"})
        assert row["options"] is None and row["answer"] == "aspirin" and row["id"] == "5"
    row = validate_qa_row({"id": "x", "question": "Name it.", "answer": "aspirin"})
    assert row["options"] is None and row["explanation"] == ""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"question": None}, "question is missing"),
        ({"question": "  "}, "question is empty"),
        ({"question": 3}, "question must be a string"),
        ({"answer": None}, "answer is missing"),
        ({"answer": " "}, "answer is empty"),
        ({"answer": 1}, "answer must be a string"),
        ({"answer": "C"}, r"not one of the option letters \(A, B\)"),
        ({"answer": "three"}, r"not one of the option letters \(A, B\)"),
        ({"options": ["one", "two"]}, "options must be a mapping"),
        ({"options": {"A": "one", "B": ""}}, "option 'B' is empty"),
        ({"options": {"A": "one", "B": 2}}, "option 'B' must be a string"),
        ({"options": {"A": "one", 2: "two"}}, "option keys must be non-empty strings"),
        ({"options": {"A": "same", "B": "Same"}, "answer": "same"}, "several options"),
        ({"explanation": 3}, "explanation must be a string"),
    ],
)
def test_validate_errors_name_the_row(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        validate_qa_row({**GOOD, **change}, index=9)
    assert "id='q1'" in str(info.value) and "index 9" in str(info.value)


def test_validate_missing_question_key_and_missing_id() -> None:
    with pytest.raises(ValueError, match=r"index 2.*question is missing"):
        validate_qa_row({"answer": "A"}, index=2)
    with pytest.raises(ValueError, match="no id and no index"):
        validate_qa_row({"question": "Q?", "answer": "x"})
    with pytest.raises(ValueError, match="must be a mapping"):
        validate_qa_row(["Q?", "x"], index=0)  # type: ignore[arg-type]


def test_validate_dataset_rejects_duplicate_ids() -> None:
    rows = [GOOD, {**GOOD, "id": "q2"}, {**GOOD, "answer": "A"}]
    with pytest.raises(ValueError, match=r"duplicate QA id 'q1' at index 0 and index 2"):
        validate_qa_dataset(rows)
    assert [r["id"] for r in validate_qa_dataset(rows[:2])] == ["q1", "q2"]


def test_validate_dataset_reports_bad_row() -> None:
    with pytest.raises(ValueError, match=r"id='q2', index 1\): answer is empty"):
        validate_qa_dataset([GOOD, {**GOOD, "id": "q2", "answer": ""}])


# ---------------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------------


def test_format_question_and_target_exact() -> None:
    row = {
        "id": "1",
        "question": "What is the first-line treatment?",
        "options": {"B": "Drug B", "A": "Drug A", "C": "Drug C", "D": None},
        "answer": "B",
        "explanation": "The guideline recommends Drug B.",
    }
    assert format_question(row) == "What is the first-line treatment?\nA. Drug A\nB. Drug B\nC. Drug C"
    assert format_target(row) == "B. Drug B\nExplanation: The guideline recommends Drug B."
    assert format_target({**row, "explanation": ""}) == "B. Drug B"
    assert format_target({**row, "explanation": None}) == "B. Drug B"
    assert answer_letters(row) == ["A", "B", "C"]


def test_format_free_text() -> None:
    row = {"question": "Name the drug.", "answer": "tromaxidine", "explanation": "See guideline."}
    assert format_question(row) == "Name the drug."
    assert format_target(row) == "tromaxidine\nExplanation: See guideline."
    assert answer_letters(row) == []


def test_format_adapter_rows() -> None:
    assert format_target(from_mmlu(MMLU, 0)) == "D. The second and third pharyngeal arches"
    assert format_question(from_pubmedqa(PUBMEDQA)) == f"{PUBMEDQA['question']}\nA. yes\nB. no\nC. maybe"


# ---------------------------------------------------------------------------------------------------
# Datasets and loaders
# ---------------------------------------------------------------------------------------------------


def test_dataset_round_trip_with_different_option_sets() -> None:
    rows = [
        from_medqa(MEDQA_BIGBIO, 0),  # 5 options
        from_pubmedqa(PUBMEDQA, 1),  # 3 options
        {"id": "free", "question": "Name it.", "answer": "aspirin", "explanation": ""},  # no options
        {"id": "six", "question": "Six?", "options": dict(zip("ABCDEF", "123456")), "answer": "F"},
    ]
    expected = validate_qa_dataset(rows)
    ds = to_qa_dataset(rows)
    assert isinstance(ds, Dataset)
    assert list(ds.features["options"]) == ["A", "B", "C", "D", "E", "F"]
    assert validate_qa_dataset(ds) == expected
    assert [format_target(r) for r in ds] == [format_target(r) for r in expected]


def test_datasets_from_different_sources_concatenate() -> None:
    a = to_qa_dataset([from_medqa(MEDQA_ORIGINAL, 0)])
    b = to_qa_dataset([from_pubmedqa(PUBMEDQA, 0)])
    both = concatenate_datasets([a, b])
    assert [r["answer"] for r in validate_qa_dataset(both)] == ["D", "A"]


def test_empty_dataset_has_schema() -> None:
    ds = to_qa_dataset([])
    assert len(ds) == 0 and ds.column_names == ["id", "question", "options", "answer", "explanation"]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.mark.parametrize(
    ("fmt", "raw", "answer"),
    [
        ("medqa", MEDQA_ORIGINAL, "D"),
        ("medmcqa", MEDMCQA, "C"),
        ("mmlu", MMLU, "D"),
        ("pubmedqa", PUBMEDQA, "A"),
        ("qa", GOOD, "B"),
    ],
)
def test_load_qa_dataset_jsonl(tmp_path: Path, fmt: str, raw: dict, answer: str) -> None:
    second = {**raw, "id": "second", "pubid": "second"} if fmt in ("medmcqa", "pubmedqa", "qa") else raw
    path = tmp_path / "rows.jsonl"
    _write_jsonl(path, [raw, second])
    ds = load_qa_dataset(path, fmt)
    assert len(ds) == 2 and ds[0]["answer"] == answer
    assert validate_qa_dataset(ds) == [validate_qa_row(r, i) for i, r in enumerate(ds)]


def test_load_qa_dataset_json_parquet_list_dataset(tmp_path: Path) -> None:
    rows = [MEDMCQA, {**MEDMCQA, "id": "other", "cop": 0}]
    json_path = tmp_path / "dev.json"
    json_path.write_text(json.dumps(rows), encoding="utf-8")
    lines_as_json = tmp_path / "train.json"  # MedMCQA ships JSON lines named .json
    _write_jsonl(lines_as_json, rows)
    parquet_path = tmp_path / "rows.parquet"
    Dataset.from_list(rows).to_parquet(str(parquet_path))
    expected = [from_medmcqa(r, i) for i, r in enumerate(rows)]
    for source in (json_path, str(lines_as_json), parquet_path, rows, Dataset.from_list(rows)):
        assert validate_qa_dataset(load_qa_dataset(source, "medmcqa")) == expected
    splits = DatasetDict({"train": Dataset.from_list(rows), "validation": Dataset.from_list(rows[:1])})
    assert len(load_qa_dataset(splits, "medmcqa", split="validation")) == 1
    with pytest.raises(ValueError, match="several splits"):
        load_qa_dataset(splits, "medmcqa")


def test_load_qa_dataset_pubmedqa_keyed_by_pubid(tmp_path: Path) -> None:
    path = tmp_path / "ori_pqal.json"
    raw = {k: v for k, v in PUBMEDQA.items() if k != "pubid"}
    path.write_text(json.dumps({"21645374": raw, "1": {**raw, "final_decision": "no"}}), encoding="utf-8")
    ds = load_qa_dataset(path, "pubmedqa")
    assert list(ds["id"]) == ["21645374", "1"] and list(ds["answer"]) == ["A", "B"]


def test_load_qa_dataset_errors_name_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "medqa.jsonl"
    _write_jsonl(path, [MEDQA_ORIGINAL, {**MEDQA_ORIGINAL, "answer_idx": "F"}])
    with pytest.raises(ValueError, match=r"medqa\.jsonl, row 1 \(line 2\).*'F' is not one of") as info:
        load_qa_dataset(path, "medqa")
    assert str(path) in str(info.value)
    assert len(load_qa_dataset(path, "medqa", on_error="skip")) == 1

    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(json.dumps(GOOD) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: invalid JSON"):
        load_qa_dataset(bad_json, "qa")

    dup = tmp_path / "dup.jsonl"
    _write_jsonl(dup, [GOOD, GOOD])
    with pytest.raises(ValueError, match=r"row 1 \(line 2\): duplicate QA id 'q1' \(first at row 0"):
        load_qa_dataset(dup, "qa")

    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_qa_dataset(tmp_path / "missing.jsonl", "qa")
    with pytest.raises(ValueError, match="unsupported file type"):
        (tmp_path / "rows.csv").write_text("id\n", encoding="utf-8")
        load_qa_dataset(tmp_path / "rows.csv", "qa")
    with pytest.raises(ValueError, match="unknown QA format 'usmle'"):
        load_qa_dataset([GOOD], "usmle")


def _mirage_fixture(tmp_path: Path) -> Path:
    data = {
        "medqa": {
            "0000": {"question": "Q0?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer": "B"}
        },
        "mmlu": {"anatomy-000": {"question": "Q1?", "options": {"A": "a", "B": "b"}, "answer": "A"}},
        "bioasq": {"6402c9": {"question": "Q2?", "options": {"A": "yes", "B": "no"}, "answer": "B"}},
    }
    path = tmp_path / "benchmark.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_load_mirage_small(tmp_path: Path) -> None:
    path = _mirage_fixture(tmp_path)
    out = load_mirage(path)
    assert list(out) == ["medqa", "mmlu", "bioasq"]
    assert out["medqa"][0]["id"] == "medqa-0000"
    assert out["mmlu"][0]["id"] == "mmlu-anatomy-000"
    assert out["bioasq"][0]["id"] == "bioasq-6402c9"
    assert validate_qa_dataset(out["bioasq"])[0]["options"] == {"A": "yes", "B": "no"}
    assert list(load_mirage(path, datasets=["mmlu"])) == ["mmlu"]
    assert load_qa_dataset(path, "mirage", split="medqa")[0]["answer"] == "B"


def test_load_mirage_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        load_mirage(tmp_path / "nowhere.json")
    path = _mirage_fixture(tmp_path)
    with pytest.raises(ValueError, match=r"pubmedqa not found; available: medqa, mmlu, bioasq"):
        load_mirage(path, ["pubmedqa"])
    bad = json.loads(path.read_text())
    bad["medqa"]["0001"] = {"question": "Q?", "options": {"A": "a", "B": "b"}, "answer": "E"}
    path.write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(
        ValueError, match=r"benchmark\.json: medqa/0001: .*id='medqa-0001'.*'E' is not one of"
    ) as info:
        load_mirage(path)
    assert str(path) in str(info.value)
    path.write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_mirage(path)


MIRAGE_COUNTS = {"medqa": 1273, "medmcqa": 4183, "mmlu": 1089, "pubmedqa": 500, "bioasq": 618}


def _shared_mirage() -> Path:
    root = os.environ.get("JMLR_SHARED_DATA")
    if not root:
        pytest.skip(
            "JMLR_SHARED_DATA is not set; it names the shared data folder holding mirage/benchmark.json"
        )
    path = Path(root) / "mirage" / "benchmark.json"
    if not path.is_file():
        pytest.skip(f"MIRAGE benchmark not found at {path}")
    return path


def test_real_mirage_benchmark() -> None:
    path = _shared_mirage()
    out = load_mirage(path)
    assert {name: len(ds) for name, ds in out.items()} == MIRAGE_COUNTS
    raw = json.loads(path.read_text(encoding="utf-8"))
    for name, ds in out.items():
        rows = validate_qa_dataset(ds)  # every row validates, ids unique
        assert all(row["id"].startswith(f"{name}-") for row in rows)
        for row, (qid, entry) in zip(rows, raw[name].items()):
            assert row["answer"] == entry["answer"], qid
            assert row["options"] == {k: v.strip() for k, v in entry["options"].items()}, qid
    assert validate_qa_dataset(out["pubmedqa"])[0]["options"] == {"A": "yes", "B": "no", "C": "maybe"}
