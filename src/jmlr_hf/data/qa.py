"""QA schema, validation, prompt formatting and adapters for the medical QA benchmarks.

Every QA source is mapped into one row schema (see :class:`QARow`)::

    {"id": str, "question": str, "options": {"A": str, ...} | None, "answer": str, "explanation": str}

``answer`` is an option letter when the row has options and free text otherwise. ``explanation`` is
the rationale ("" when there is none); when present it is part of the LM target (see
:func:`format_target`), which is what makes a passage's usefulness visible in the LLM's loss.

Adapters (:func:`from_medqa`, :func:`from_medmcqa`, :func:`from_mmlu`, :func:`from_pubmedqa`) take one
raw row laid out exactly like the public release of each benchmark; :func:`load_mirage` reads the MIRAGE
``benchmark.json``; :func:`load_qa_dataset` reads a file, a list or a :class:`datasets.Dataset` in any
of these formats.

Options in a :class:`datasets.Dataset`
--------------------------------------
Arrow needs one struct type per column, but option sets differ between sources (PubMedQA has 3
options, MedQA 4 or 5, BioASQ 2). :func:`to_qa_dataset` therefore always stores ``options`` as a struct
with the keys ``A`` to ``E`` (plus any further keys present, e.g. ``F``), with ``None`` for the missing
ones, and ``None`` for the whole struct when a row has no options. :func:`validate_qa_row` drops
``None``-valued options, so rows read back from a Dataset round-trip to the validated rows, and datasets
built from different sources share the same features (so they can be concatenated).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

from datasets import Dataset, DatasetDict, Features, Value

from .corpus import parse_json_lines, read_parquet_rows, read_text_file

logger = logging.getLogger(__name__)

__all__ = [
    "OPTION_KEYS",
    "PUBMEDQA_OPTIONS",
    "QA_FORMATS",
    "QARow",
    "answer_letters",
    "format_question",
    "format_target",
    "from_medmcqa",
    "from_medqa",
    "from_mmlu",
    "from_pubmedqa",
    "load_mirage",
    "load_qa_dataset",
    "qa_features",
    "to_qa_dataset",
    "validate_qa_dataset",
    "validate_qa_row",
]

#: Option keys always present in the ``options`` struct of a QA :class:`datasets.Dataset`.
OPTION_KEYS: tuple[str, ...] = ("A", "B", "C", "D", "E")

#: The fixed options of PubMedQA (and of MIRAGE's ``pubmedqa``).
PUBMEDQA_OPTIONS: dict[str, str] = {"A": "yes", "B": "no", "C": "maybe"}

_CORE_FIELDS = ("id", "question", "options", "answer", "explanation")


class QARow(TypedDict, total=False):
    """One QA example.

    Attributes:
        id: Unique identifier of the example.
        question: The question (stem) text.
        options: Option letter -> option text, ordered ``A, B, ...``; ``None`` for free-text QA.
        answer: The correct option letter, or the answer text when there are no options.
        explanation: Rationale for the answer ("" when there is none).
    """

    id: str
    question: str
    options: dict[str, str] | None
    answer: str
    explanation: str


# ---------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------


def _describe(row_id: Any, index: int | None) -> str:
    parts = []
    if row_id is not None and row_id != "":
        parts.append(f"id={str(row_id)!r}")
    if index is not None:
        parts.append(f"index {index}")
    return f"QA row ({', '.join(parts) or 'no id, no index'})"


def _fail(row_id: Any, index: int | None, problem: str) -> ValueError:
    return ValueError(f"{_describe(row_id, index)}: {problem}")


def _norm_text(text: str) -> str:
    """Case- and whitespace-insensitive form used to compare an answer text with option texts."""
    return " ".join(text.split()).casefold()


def _option_sort_key(key: str) -> tuple[int, str]:
    return (len(key), key)


def _normalise_options(options: Any, row_id: Any, index: int | None) -> dict[str, str] | None:
    if options is None:
        return None
    if not isinstance(options, Mapping):
        raise _fail(
            row_id,
            index,
            f"options must be a mapping of letter -> text, got {type(options).__name__}",
        )
    out: dict[str, str] = {}
    for key, text in options.items():
        if text is None:  # padding of the Arrow struct (see the module docstring)
            continue
        if not isinstance(key, str) or not key.strip():
            raise _fail(row_id, index, f"option keys must be non-empty strings, got {key!r}")
        clean_key = key.strip()
        if not isinstance(text, str):
            raise _fail(row_id, index, f"option {clean_key!r} must be a string, got {type(text).__name__}")
        if not text.strip():
            raise _fail(row_id, index, f"option {clean_key!r} is empty")
        if clean_key in out:
            raise _fail(row_id, index, f"option key {clean_key!r} appears twice")
        out[clean_key] = text.strip()
    if not out:
        return None
    return {key: out[key] for key in sorted(out, key=_option_sort_key)}


def _resolve_answer(answer: Any, options: dict[str, str] | None, row_id: Any, index: int | None) -> str:
    if answer is None:
        raise _fail(row_id, index, "answer is missing")
    if not isinstance(answer, str):
        raise _fail(
            row_id,
            index,
            f"answer must be a string (an option letter or the answer text), got {type(answer).__name__} "
            f"{answer!r}",
        )
    answer = answer.strip()
    if not answer:
        raise _fail(row_id, index, "answer is empty")
    if options is None:
        return answer
    if answer in options:
        return answer
    if len(answer) == 1 and answer.upper() in options:
        return answer.upper()
    wanted = _norm_text(answer)
    matches = [key for key, text in options.items() if _norm_text(text) == wanted]
    if len(matches) == 1:
        return matches[0]
    letters = ", ".join(options)
    if len(matches) > 1:
        raise _fail(
            row_id,
            index,
            f"answer {answer!r} matches the text of several options ({', '.join(matches)}); "
            f"give the letter instead (one of {letters})",
        )
    raise _fail(
        row_id,
        index,
        f"answer {answer!r} is not one of the option letters ({letters}) nor the text of an option",
    )


def _normalise_row(row: Mapping[str, Any], index: int | None, require_id: bool) -> dict[str, Any]:
    if not isinstance(row, Mapping):
        raise _fail(None, index, f"a QA row must be a mapping, got {type(row).__name__}")
    raw_id = row.get("id")
    if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
        if index is None and require_id:
            raise _fail(None, index, "the row has no id and no index to derive one from")
        row_id = str(index) if index is not None else ""
    else:
        row_id = str(raw_id).strip()

    question = row.get("question")
    if question is None:
        raise _fail(row_id, index, "question is missing")
    if not isinstance(question, str):
        raise _fail(row_id, index, f"question must be a string, got {type(question).__name__}")
    if not question.strip():
        raise _fail(row_id, index, "question is empty")

    options = _normalise_options(row.get("options"), row_id, index)
    answer = _resolve_answer(row.get("answer"), options, row_id, index)

    explanation = row.get("explanation")
    if explanation is None:
        explanation = ""
    elif not isinstance(explanation, str):
        raise _fail(row_id, index, f"explanation must be a string, got {type(explanation).__name__}")

    out: dict[str, Any] = {
        "id": row_id,
        "question": question.strip(),
        "options": options,
        "answer": answer,
        "explanation": explanation.strip(),
    }
    for key, value in row.items():  # extra columns (e.g. gold_doc_id) travel unchanged
        if key not in out:
            out[key] = value
    return out


def validate_qa_row(row: Mapping[str, Any], index: int | None = None) -> dict[str, Any]:
    """Validate one QA row and return a normalised copy.

    Normalisation: ``id`` becomes a string (``str(index)`` when missing); surrounding whitespace is
    stripped; ``options`` is ordered ``A, B, ...``, ``None``-valued options are dropped and ``options``
    is ``None`` when absent or empty; an answer given as an option's exact text (case- and
    space-insensitive) or as a lower-case letter becomes the letter; ``explanation`` is "" when absent.
    Extra keys are copied unchanged.

    Args:
        row: The row, in the QA schema (see :class:`QARow`).
        index: Position of the row in its dataset; used in error messages and as the fallback id.

    Returns:
        The normalised row.

    Raises:
        ValueError: If the row is invalid; the message names the row (id and index) and the problem.
    """
    return _normalise_row(row, index, require_id=True)


def validate_qa_dataset(rows: Iterable[Mapping[str, Any]] | Dataset) -> list[dict[str, Any]]:
    """Validate every row of a QA dataset and reject duplicate ids.

    Args:
        rows: QA rows (an iterable of mappings or a :class:`datasets.Dataset`).

    Returns:
        The normalised rows (see :func:`validate_qa_row`), in order.

    Raises:
        ValueError: On the first invalid row, or on a duplicate id (naming both indices).
    """
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        clean = validate_qa_row(row, index)
        first = seen.setdefault(clean["id"], index)
        if first != index:
            raise ValueError(f"duplicate QA id {clean['id']!r} at index {first} and index {index}")
        out.append(clean)
    return out


# ---------------------------------------------------------------------------------------------------
# Prompt formatting (shared by training and inference)
# ---------------------------------------------------------------------------------------------------


def format_question(row: Mapping[str, Any]) -> str:
    """Format the question part of a prompt: the question, then one ``"A. text"`` line per option.

    Args:
        row: A QA row (raw or normalised; also a row read from a QA :class:`datasets.Dataset`).

    Returns:
        The formatted question. Deterministic; used for both training and inference prompts.

    Example:
        >>> format_question({"question": "Which?", "options": {"B": "two", "A": "one"}, "answer": "A"})
        'Which?\\nA. one\\nB. two'
    """
    clean = _normalise_row(row, None, require_id=False)
    lines = [clean["question"]]
    if clean["options"]:
        lines.extend(f"{key}. {text}" for key, text in clean["options"].items())
    return "\n".join(lines)


def format_target(row: Mapping[str, Any]) -> str:
    """Format the LM target of a row: the answer letter with its option text, then the explanation.

    Args:
        row: A QA row.

    Returns:
        ``"A. <option text>"`` (the answer text alone when the row has no options), followed by
        ``"\\nExplanation: <explanation>"`` when the row has a non-empty explanation.
        Under a prompt with passages, :meth:`jmlr_hf.prompting.PromptBuilder.target` first makes each
        explanation sentence cite its best supporting passage as ``[n]`` (the grounded-answers rule).

    Example:
        >>> format_target({"question": "Q?", "options": {"A": "x", "B": "y"}, "answer": "B", "explanation": "Because."})
        'B. y\\nExplanation: Because.'
    """
    clean = _normalise_row(row, None, require_id=False)
    options = clean["options"]
    target = f"{clean['answer']}. {options[clean['answer']]}" if options else clean["answer"]
    if clean["explanation"]:
        target += f"\nExplanation: {clean['explanation']}"
    return target


def answer_letters(row: Mapping[str, Any]) -> list[str]:
    """Return the option letters of a row, in order (``[]`` for a free-text row).

    Args:
        row: A QA row.

    Returns:
        The option letters, e.g. ``["A", "B", "C", "D"]``.
    """
    options = _normalise_row(row, None, require_id=False)["options"]
    return list(options) if options else []


# ---------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------


def qa_features(option_keys: Sequence[str] = OPTION_KEYS) -> Features:
    """Return the :class:`datasets.Features` of the QA schema columns.

    Args:
        option_keys: The keys of the ``options`` struct.

    Returns:
        Features for ``id``, ``question``, ``options``, ``answer`` and ``explanation``.
    """
    return Features(
        {
            "id": Value("string"),
            "question": Value("string"),
            "options": {key: Value("string") for key in option_keys},
            "answer": Value("string"),
            "explanation": Value("string"),
        }
    )


def to_qa_dataset(
    rows: Iterable[Mapping[str, Any]],
    *,
    validate: bool = True,
    extra_features: Mapping[str, Any] | None = None,
) -> Dataset:
    """Build a :class:`datasets.Dataset` from QA rows.

    ``options`` is stored as a struct with the keys ``A``-``E`` (plus any further keys present), with
    ``None`` for missing options and ``None`` for rows without options (see the module docstring).
    Extra keys become extra columns (``None`` where a row lacks them).

    Args:
        rows: QA rows.
        validate: Validate the rows first (:func:`validate_qa_dataset`); pass ``False`` only for rows
            that are already normalised.
        extra_features: Features of extra columns (e.g. ``{"gold_doc_id": Value("string")}``); these
            columns exist even when ``rows`` is empty. Other extra columns are inferred.

    Returns:
        The dataset; its rows read back through :func:`validate_qa_row` equal the normalised rows.
    """
    rows = validate_qa_dataset(rows) if validate else [dict(row) for row in rows]
    extra_keys = {key for row in rows for key in (row.get("options") or {})} - set(OPTION_KEYS)
    option_keys = [*OPTION_KEYS, *sorted(extra_keys, key=_option_sort_key)]
    features = qa_features(option_keys)

    features = Features({**features, **(extra_features or {})})
    extra_columns: list[str] = []
    for row in rows:
        extra_columns.extend(key for key in row if key not in features and key not in extra_columns)
    if extra_columns:
        extra = Dataset.from_dict({key: [row.get(key) for row in rows] for key in extra_columns})
        features = Features({**features, **extra.features})

    records = []
    for row in rows:
        options = row.get("options")
        record = {key: row.get(key) for key in features}
        record["options"] = {key: options.get(key) for key in option_keys} if options else None
        records.append(record)
    if not records:  # from_list cannot carry features for an empty list
        return Dataset.from_dict({key: [] for key in features}, features=features)
    return Dataset.from_list(records, features=features)


# ---------------------------------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------------------------------


def _raw_id(raw: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = raw.get(key)
        if value is not None and value != "":
            return value
    return None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _letter(position: int) -> str:
    return chr(ord("A") + position)


def from_medqa(raw: Mapping[str, Any], index: int | None = None) -> dict[str, Any]:
    """Convert a MedQA-USMLE row into a QA row.

    Accepts the original release's jsonl layout ``{"question", "answer" (text), "options": {"A": ...},
    "meta_info", "answer_idx": "B"}`` and the bigbio / HF variants whose ``options`` is a list of
    ``{"key", "value"}`` dicts. ``answer_idx`` gives the answer; ``answer`` (the text) is used only when
    ``answer_idx`` is absent, and a disagreement between the two is logged as a warning. The id is the
    row's ``id`` when it has one, else ``str(index)``.

    Args:
        raw: The raw MedQA row.
        index: Position of the row in its file.

    Returns:
        The validated QA row.

    Raises:
        ValueError: If the row is malformed.
    """
    row_id = _raw_id(raw, "id")
    options = raw.get("options")
    if isinstance(options, Sequence) and not isinstance(options, str):
        as_dict: dict[str, Any] = {}
        for item in options:
            if not isinstance(item, Mapping) or "key" not in item or "value" not in item:
                raise _fail(
                    row_id,
                    index,
                    f"MedQA options given as a list must hold {{'key', 'value'}} dicts, got {item!r}",
                )
            as_dict[str(item["key"])] = item["value"]
        options = as_dict
    answer_idx = raw.get("answer_idx")
    answer_text = raw.get("answer")
    answer = answer_idx if answer_idx not in (None, "") else answer_text
    row = validate_qa_row(
        {
            "id": row_id,
            "question": raw.get("question"),
            "options": options,
            "answer": answer,
            "explanation": raw.get("explanation"),
        },
        index,
    )
    if (
        answer_idx not in (None, "")
        and isinstance(answer_text, str)
        and row["options"]
        and _norm_text(answer_text) != _norm_text(row["options"][row["answer"]])
    ):
        logger.warning(
            "%s: answer text %r differs from option %s (%r); using answer_idx",
            _describe(row["id"], index),
            answer_text,
            row["answer"],
            row["options"][row["answer"]],
        )
    return row


def from_medmcqa(raw: Mapping[str, Any], index: int | None = None, *, cop_base: int = 0) -> dict[str, Any]:
    """Convert a MedMCQA row into a QA row.

    Layout: ``{"id", "question", "opa", "opb", "opc", "opd", "cop", "choice_type", "exp",
    "subject_name", "topic_name"}``. ``cop`` is the correct option's index, 0-3 in the HF dataset
    ``openlifescienceai/medmcqa``; ``exp`` becomes the explanation.

    Args:
        raw: The raw MedMCQA row.
        index: Position of the row in its file.
        cop_base: ``0`` for the HF numbering of ``cop`` (0-3), ``1`` for dumps numbered 1-4.

    Returns:
        The validated QA row.

    Raises:
        ValueError: If the row is malformed, has no answer (the test split has ``cop == -1``) or ``cop``
            is out of range.
    """
    row_id = _raw_id(raw, "id")
    keys = ("opa", "opb", "opc", "opd")
    missing = [key for key in keys if key not in raw]
    if missing:
        raise _fail(row_id, index, f"MedMCQA row lacks the option field(s) {', '.join(missing)}")
    cop = _as_int(raw.get("cop"))
    if cop is None or cop < 0:
        raise _fail(
            row_id,
            index,
            f"MedMCQA row has no usable answer (cop={raw.get('cop')!r}; the test split has no public answers)",
        )
    position = cop - cop_base
    if not 0 <= position < len(keys):
        hint = " (pass cop_base=1 for dumps numbered 1-4)" if cop_base == 0 else ""
        raise _fail(
            row_id,
            index,
            f"MedMCQA cop={cop} is out of range {cop_base}-{cop_base + len(keys) - 1}{hint}",
        )
    return validate_qa_row(
        {
            "id": row_id,
            "question": raw.get("question"),
            "options": {_letter(i): raw[key] for i, key in enumerate(keys)},
            "answer": _letter(position),
            "explanation": raw.get("exp"),
        },
        index,
    )


def from_mmlu(raw: Mapping[str, Any], index: int | None = None) -> dict[str, Any]:
    """Convert an MMLU row (``cais/mmlu`` layout) into a QA row.

    Layout: ``{"question", "subject", "choices": [str, ...], "answer": int}``; ``answer`` indexes
    ``choices`` (a letter is accepted too). The id is the row's ``id`` when it has one, else
    ``str(index)``.

    Args:
        raw: The raw MMLU row.
        index: Position of the row in its file.

    Returns:
        The validated QA row.

    Raises:
        ValueError: If the row is malformed or ``answer`` is out of range.
    """
    row_id = _raw_id(raw, "id")
    choices = raw.get("choices")
    if not isinstance(choices, Sequence) or isinstance(choices, str) or not choices:
        raise _fail(row_id, index, f"MMLU choices must be a non-empty list of strings, got {choices!r}")
    options = {_letter(i): text for i, text in enumerate(choices)}
    answer = raw.get("answer")
    position = _as_int(answer)
    if position is not None:
        if not 0 <= position < len(choices):
            raise _fail(row_id, index, f"MMLU answer index {position} is out of range 0-{len(choices) - 1}")
        answer = _letter(position)
    return validate_qa_row(
        {"id": row_id, "question": raw.get("question"), "options": options, "answer": answer}, index
    )


def from_pubmedqa(raw: Mapping[str, Any], index: int | None = None) -> dict[str, Any]:
    """Convert a PubMedQA row into a QA row with the options ``A yes / B no / C maybe``.

    Layout (PQA-L, also the HF ``qiaojin/PubMedQA`` ``pqa_labeled`` config): ``{"pubid", "question",
    "context": {"contexts", "labels", ...}, "long_answer", "final_decision"}``; the upper-case keys of
    the original ``ori_pqal.json`` (``QUESTION``, ``LONG_ANSWER``) are accepted too. ``long_answer``
    becomes the explanation; the abstract (``context``) is not part of the QA row (JMLR retrieves).

    Args:
        raw: The raw PubMedQA row.
        index: Position of the row in its file.

    Returns:
        The validated QA row; its id is ``str(pubid)``.

    Raises:
        ValueError: If the row is malformed or ``final_decision`` is not yes/no/maybe.
    """
    row_id = _raw_id(raw, "pubid", "id")
    decision = raw.get("final_decision")
    by_text = {text: letter for letter, text in PUBMEDQA_OPTIONS.items()}
    if not isinstance(decision, str) or decision.strip().lower() not in by_text:
        raise _fail(row_id, index, f"PubMedQA final_decision must be yes, no or maybe, got {decision!r}")
    question = raw.get("question", raw.get("QUESTION"))
    explanation = raw.get("long_answer", raw.get("LONG_ANSWER"))
    return validate_qa_row(
        {
            "id": row_id,
            "question": question,
            "options": dict(PUBMEDQA_OPTIONS),
            "answer": by_text[decision.strip().lower()],
            "explanation": explanation,
        },
        index,
    )


#: Formats understood by :func:`load_qa_dataset` (besides ``"mirage"``), with their row adapters.
QA_FORMATS: dict[str, Callable[..., dict[str, Any]]] = {
    "qa": validate_qa_row,
    "medqa": from_medqa,
    "medmcqa": from_medmcqa,
    "mmlu": from_mmlu,
    "pubmedqa": from_pubmedqa,
}


# ---------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------


def _check_duplicates(rows: Sequence[Mapping[str, Any]], where: str, names: Sequence[str]) -> None:
    seen: dict[str, int] = {}
    for position, row in enumerate(rows):
        first = seen.setdefault(row["id"], position)
        if first != position:
            raise ValueError(
                f"{where}: duplicate QA id {row['id']!r} at {names[first]} and {names[position]}"
            )


def load_mirage(path: str | os.PathLike[str], datasets: Sequence[str] | None = None) -> dict[str, Dataset]:
    """Load the MIRAGE benchmark (``benchmark.json`` of the MedRAG project).

    Layout: ``{dataset: {question_id: {"question", "options": {"A": ...}, "answer": "A"}}}`` with the
    datasets ``medqa``, ``medmcqa``, ``mmlu``, ``pubmedqa`` and ``bioasq``. Ids become
    ``f"{dataset}-{question_id}"`` unless ``question_id`` already starts with ``f"{dataset}-"``.

    Args:
        path: Path of ``benchmark.json``.
        datasets: Names of the datasets to load (default: all, in file order).

    Returns:
        Dataset name -> QA :class:`datasets.Dataset`.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not valid JSON, is not laid out as above, a requested dataset is
            absent, or an entry is invalid (the message names the path, dataset and question id).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MIRAGE benchmark file not found: {path} (expected MedRAG's benchmark.json)")
    try:
        data = json.loads(read_text_file(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, Mapping) or not all(isinstance(v, Mapping) for v in data.values()):
        raise ValueError(f"{path}: expected {{dataset: {{question_id: entry}}}} at the top level")
    names = list(data) if datasets is None else list(datasets)
    unknown = [name for name in names if name not in data]
    if unknown:
        raise ValueError(f"{path}: dataset(s) {', '.join(unknown)} not found; available: {', '.join(data)}")

    out: dict[str, Dataset] = {}
    for name in names:
        rows: list[dict[str, Any]] = []
        qids = [str(qid) for qid in data[name]]
        for position, (qid, entry) in enumerate(data[name].items()):
            qid = str(qid)
            where = f"{path}: {name}/{qid}"
            if not isinstance(entry, Mapping):
                raise ValueError(f"{where}: entry must be a mapping, got {type(entry).__name__}")
            row_id = qid if qid.startswith(f"{name}-") else f"{name}-{qid}"
            try:
                rows.append(validate_qa_row({**entry, "id": row_id}, position))
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from err
        _check_duplicates(rows, f"{path}: {name}", [f"question {q!r}" for q in qids])
        out[name] = to_qa_dataset(rows, validate=False)
        logger.info("Loaded %d MIRAGE questions from %s/%s", len(rows), path, name)
    return out


def _rows_from_container(data: Any, split: str | None, where: str) -> list[Any]:
    """Pick the rows out of a JSON value or a DatasetDict-like mapping."""
    if isinstance(data, Mapping):
        if split is not None and split in data:
            return _rows_from_container(data[split], None, f"{where}[{split!r}]")
        values = list(data.values())
        if values and all(isinstance(v, (list, Dataset)) for v in values):  # split -> rows
            if split is None and len(values) == 1:
                return list(values[0])
            if split is None:
                raise ValueError(f"{where}: several splits ({', '.join(map(str, data))}); pass split=")
            raise ValueError(f"{where}: split {split!r} not found; available: {', '.join(map(str, data))}")
        if values and all(isinstance(v, Mapping) for v in values):  # id -> row
            return [{**row, "id": row.get("id", key)} for key, row in data.items()]
        if split is not None:
            raise ValueError(f"{where}: split {split!r} not found")
        raise ValueError(f"{where}: expected a list of rows, {{split: rows}} or {{id: row}}")
    if isinstance(data, (list, tuple, Dataset)):
        return list(data)
    raise ValueError(f"{where}: expected a list of rows, got {type(data).__name__}")


def _read_rows(path: Path, split: str | None) -> tuple[list[Any], list[str]]:
    if not path.is_file():
        raise FileNotFoundError(f"QA file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        rows = read_parquet_rows(path)
    elif suffix == ".jsonl":
        return parse_json_lines(read_text_file(path), path)
    elif suffix == ".json":
        text = read_text_file(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            # Several releases (e.g. MedMCQA's train.json / dev.json) are JSON lines named .json.
            return parse_json_lines(text, path)
        rows = _rows_from_container(data, split, str(path))
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r} (use .json, .jsonl or .parquet)")
    return rows, [f"row {i}" for i in range(len(rows))]


def load_qa_dataset(
    source: str | os.PathLike[str] | Dataset | DatasetDict | Sequence[Mapping[str, Any]],
    format: str,
    split: str | None = None,
    *,
    on_error: str = "raise",
) -> Dataset:
    """Load QA rows from a file, a list or a Dataset and convert them into the QA schema.

    Args:
        source: A path to a ``.json`` (a list of rows, ``{split: rows}``, ``{id: row}`` or JSON lines),
            ``.jsonl`` or ``.parquet`` file; a :class:`datasets.Dataset` or ``DatasetDict``; or a list of
            dicts.
        format: The layout of the rows: ``"qa"`` (already the QA schema), ``"medqa"``, ``"medmcqa"``,
            ``"mmlu"`` or ``"pubmedqa"`` (see the ``from_*`` adapters), or ``"mirage"`` (``source`` is
            MIRAGE's ``benchmark.json`` and ``split`` names the dataset, e.g. ``"medqa"``).
        split: Which split to take when the source holds several (a ``DatasetDict`` or a JSON object
            of splits); ignored for single-split sources.
        on_error: ``"raise"`` (default) stops at the first bad row; ``"skip"`` drops bad rows (and
            later duplicates of an id) and logs a warning with their count.

    Returns:
        The QA :class:`datasets.Dataset` (see :func:`to_qa_dataset` for how options are stored).

    Raises:
        FileNotFoundError: If a path does not exist.
        ValueError: For an unknown format, an unreadable file or a bad row (the message names the file
            and the row number).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if format == "mirage":
        if split is None:
            raise ValueError("format='mirage' needs split= naming the MIRAGE dataset, e.g. 'medqa'")
        if not isinstance(source, (str, os.PathLike)):
            raise ValueError("format='mirage' needs the path of benchmark.json as source")
        return load_mirage(source, [split])[split]
    if format not in QA_FORMATS:
        raise ValueError(
            f"unknown QA format {format!r}; expected one of {', '.join([*QA_FORMATS, 'mirage'])}"
        )
    adapter = QA_FORMATS[format]

    if isinstance(source, (str, os.PathLike)):
        where = str(source)
        raw_rows, names = _read_rows(Path(source), split)
    else:
        where = f"<{type(source).__name__}>"
        raw_rows = _rows_from_container(source, split, where)
        names = [f"row {i}" for i in range(len(raw_rows))]

    rows: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    skipped: list[str] = []
    for position, raw in enumerate(raw_rows):
        try:
            if not isinstance(raw, Mapping):
                raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
            row = adapter(raw, position)
            if row["id"] in seen:
                raise ValueError(f"duplicate QA id {row['id']!r} (first at {seen[row['id']]})")
        except ValueError as err:
            message = f"{where}, {names[position]}: {err}"
            if on_error == "raise":
                raise ValueError(message) from err
            skipped.append(message)
            continue
        seen[row["id"]] = names[position]
        rows.append(row)
    if skipped:
        logger.warning(
            "Skipped %d of %d %s rows from %s; first: %s",
            len(skipped),
            len(raw_rows),
            format,
            where,
            skipped[0],
        )
    return to_qa_dataset(rows, validate=False)
