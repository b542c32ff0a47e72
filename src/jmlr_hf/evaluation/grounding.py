"""Grounding of generated rationales: citations, lexical support, letter agreement, hallucinations.

A *record* is one generated answer with what the model was given::

    {"question": str, "options": {"A": str, ...}, "passages": [{"title", "text"}, ...],
     "rationale": str, "stated_letter": str | None}

``passages`` are exactly the passages in the prompt after the context budget
(:meth:`~jmlr_hf.prompting.PromptBuilder.placed_passages`), best first: ``passages[i]`` is cited as
``[i + 1]``, the number it carries in the prompt.

**Lexical support.** The *content words* of a text are its lowercase alphanumeric tokens minus a small
stopword list, numbers kept, and a dose such as ``"25 mg"`` kept as one token. A sentence's support
by a passage is its *content-word precision*: the share of the sentence's distinct content words that
occur in the passage (title and text). A sentence is **supported** when that share is at least
:data:`SUPPORT_THRESHOLD` (0.6). The same rule picks the citations of training targets
(:func:`cite_passages`), so the model is taught the measure it is scored with.

Examples:
    >>> passages = [{"title": "Velorin syndrome", "text": "First-line therapy is zentorvane 25 mg once daily."}]
    >>> cite_passages("The first-line drug for Velorin syndrome is zentorvane.", passages)
    'The first-line drug for Velorin syndrome is zentorvane [1].'
    >>> supported_sentence_share("Zentorvane 25 mg is first-line [1]. It cures everything [1].", passages)
    0.5
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

__all__ = [
    "SUPPORT_THRESHOLD",
    "cite_passages",
    "content_words",
    "extract_citations",
    "grounding_summary",
    "hallucinated_entities",
    "hallucination_rate",
    "invalid_citations",
    "letter_agrees_with_rationale",
    "sentence_support",
    "split_answer",
    "split_sentences",
    "supported_sentence_share",
]

#: Content-word precision at or above which a passage supports a sentence.
SUPPORT_THRESHOLD = 0.6

_STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each either few for from further
    had has have having he her here hers him his how i if in into is it its itself may might more most
    must no nor not of off on once only or other our out over own same she should so some such than that
    the their them then there these they this those through to too under until up very was we were what
    when where which while who whom why will with would you your per shall therefore thus""".split()
)
_DOSE = r"\d+(?:\.\d+)?\s*(?:mg|mcg|µg|g|ml|iu|units?)\b"
_TOKEN = re.compile(rf"{_DOSE}|[a-z0-9]+")
_CITATION = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")
# A sentence ends at . ! or ? (citations right after it stay with it) followed by space.
_SENTENCE_END = re.compile(r"(?<=[.!?])((?:\s*\[\d+(?:\s*[,;]\s*\d+)*\])*)\s+")
_ANSWER_HEAD = re.compile(
    r"^[\s*(\[]*(?:answer\s*:\s*)?[(\[*]*([A-Z])(?:[.):\]*]+\s*|\s*$|\s*\n)", re.IGNORECASE
)
_EXPLANATION_LABEL = re.compile(r"^\s*(?:explanation|rationale)\s*:\s*", re.IGNORECASE)
_LETTER_MENTION = r"(?:\b(?:option|answer|choice)(?:\s+is)?\s*\(?({letters})\)?(?!\w)|\(({letters})\))"


def content_words(text: str) -> set[str]:
    """The distinct content words of ``text`` (see the module docstring); doses as ``"25 mg"``.

    Example:
        >>> sorted(content_words("Give 25mg of Zentorvane twice daily [2]."))
        ['25 mg', 'daily', 'give', 'twice', 'zentorvane']
    """
    text = _CITATION.sub(" ", text.lower())
    words = set()
    for token in _TOKEN.findall(text):
        if re.fullmatch(_DOSE, token):  # "25mg" and "25  mg" -> "25 mg"
            token = re.sub(r"^(\d+(?:\.\d+)?)\s*", r"\1 ", token)
        if token not in _STOPWORDS:
            words.add(token)
    return words


def sentence_support(sentence: str, passage: Mapping[str, Any] | str) -> float:
    """Content-word precision of ``sentence`` against ``passage`` (title and text); 0.0 without content words."""
    words = content_words(sentence)
    if not words:
        return 0.0
    passage_words = content_words(_passage_text(passage))
    return len(words & passage_words) / len(words)


def _passage_text(passage: Mapping[str, Any] | str) -> str:
    if isinstance(passage, str):
        return passage
    return f"{passage.get('title') or ''}\n{passage.get('text') or ''}"


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``; a citation written after the full stop stays with its sentence.

    Example:
        >>> split_sentences("Use X [1]. Avoid Y. [2] Screen yearly!")
        ['Use X [1].', 'Avoid Y. [2]', 'Screen yearly!']
    """
    pieces, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        pieces.append(text[start : match.end(1)])
        start = match.end()
    pieces.append(text[start:])
    return [p.strip() for p in pieces if p.strip()]


def extract_citations(text: str) -> list[int]:
    """Passage numbers cited as ``[n]`` (also ``[1, 2]``), in order of appearance, repeats kept.

    Example:
        >>> extract_citations("X [2]. Y [1, 3]. Z [2]")
        [2, 1, 3, 2]
    """
    return [int(n) for group in _CITATION.findall(text) for n in re.split(r"\s*[,;]\s*", group)]


def invalid_citations(text: str, num_passages: int) -> list[int]:
    """The citations of ``text`` that point to no given passage (outside ``1..num_passages``)."""
    return [n for n in extract_citations(text) if not 1 <= n <= num_passages]


def supported_sentence_share(
    rationale: str,
    passages: Sequence[Mapping[str, Any]],
    threshold: float = SUPPORT_THRESHOLD,
    against: Literal["cited", "any"] = "cited",
) -> float | None:
    """Share of the rationale's sentences supported by a passage (precision >= ``threshold``).

    Args:
        rationale: the generated rationale.
        passages: the passages given in the prompt, best first (``passages[i]`` is ``[i + 1]``).
        threshold: the content-word precision a supporting passage needs.
        against: ``"cited"``: only the valid passages a sentence cites count (an uncited sentence is
            unsupported); ``"any"``: any given passage counts.

    Returns:
        The share, or None when the rationale has no sentence with content words.
    """
    verdicts = []
    for sentence in split_sentences(rationale):
        if not content_words(sentence):
            continue
        if against == "cited":
            candidates = [passages[n - 1] for n in extract_citations(sentence) if 1 <= n <= len(passages)]
        else:
            candidates = list(passages)
        verdicts.append(any(sentence_support(sentence, p) >= threshold for p in candidates))
    return sum(verdicts) / len(verdicts) if verdicts else None


def cite_passages(
    explanation: str, passages: Sequence[Mapping[str, Any]], threshold: float = SUPPORT_THRESHOLD
) -> str:
    """``explanation`` with each sentence followed by ``[n]`` of the passage that supports it best.

    The citation rule of training targets: a sentence cites the given passage with the highest
    content-word precision (ties: the better-ranked, lower ``n``) when that precision reaches
    ``threshold``; otherwise it cites nothing. The ``[n]`` goes before the sentence's final punctuation;
    a sentence that already cites a passage is left as it is.
    """
    out = []
    for sentence in split_sentences(explanation):
        scores = [sentence_support(sentence, p) for p in passages]
        if extract_citations(sentence) or not scores or max(scores) < threshold:
            out.append(sentence)
            continue
        n = scores.index(max(scores)) + 1
        body, end = re.match(r"^(.*?)([.!?]*)$", sentence, re.DOTALL).groups()
        out.append(f"{body.rstrip()} [{n}]{end}")
    return " ".join(out)


def split_answer(text: str, options: Mapping[str, str | None]) -> tuple[str | None, str]:
    """``(stated letter, rationale)`` of a generated answer such as ``"B. <option>\\nExplanation: ..."``.

    The letter is :func:`~jmlr_hf.evaluation.parse_answer_letter`'s reading (None when the answer states
    none). The rationale is the text without its answer head: a first line ``"B. <option>"`` (or ``"B"``,
    ``"(B)"``) is dropped, on a one-line answer the head ``"B. <option>"`` alone, then an
    ``Explanation:`` label. A text without such a head is returned whole (so a rationale stays as it is).

    Example:
        >>> split_answer("B. Zentorvane\\nExplanation: It is first-line [1].", {"A": "Kalimab", "B": "Zentorvane"})
        ('B', 'It is first-line [1].')
    """
    from .mcq import parse_answer_letter  # not at import time: prompting imports this module lazily

    options = {letter: option for letter, option in options.items() if option}
    text = text.strip()
    letter = parse_answer_letter(text, options) if options else None
    return letter, _strip_head(text, options)


def _strip_head(text: str, options: Mapping[str, str]) -> str:
    """``text`` without its answer head and ``Explanation:`` label (see :func:`split_answer`)."""
    head = _ANSWER_HEAD.match(text)
    if head and head.group(1) in options:
        first, sep, rest = text.partition("\n")
        if sep:
            text = rest
        else:
            text = text[head.end() :]
            option = options[head.group(1)]
            if text.lower().startswith(option.lower()):
                text = text[len(option) :].lstrip(" .;:,-")
    return _EXPLANATION_LABEL.sub("", text.strip()).strip()


def _rationale(record: Mapping[str, Any]) -> str:
    """A record's rationale, without an answer head when it holds the whole generated answer."""
    options = {letter: text for letter, text in (record.get("options") or {}).items() if text}
    return _strip_head((record.get("rationale") or "").strip(), options)


def _names_in(text: str, names: Iterable[str]) -> set[str]:
    """The ``names`` that occur in ``text`` as whole words (case-insensitive)."""
    return {name for name in names if re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text, re.IGNORECASE)}


def letter_agrees_with_rationale(
    rationale: str, options: Mapping[str, str], stated_letter: str | None
) -> bool | None:
    """Whether the option the rationale concludes with is the stated letter; None when it cannot be parsed.

    The concluding option is read from the last sentence that names an option, by its text (a longer
    option text that contains a shorter one wins) or by its letter (``"option B"``, ``"answer is B"``,
    ``"(B)"``). A sentence naming several options, or no sentence naming one, cannot be parsed.

    Example:
        >>> options = {"A": "zentorvane", "B": "kalimab"}
        >>> letter_agrees_with_rationale("Kalimab is contraindicated. Zentorvane is first-line.", options, "A")
        True
    """
    options = {letter: text for letter, text in options.items() if text}  # datasets pad options with None
    if stated_letter is None or not options:
        return None
    letters = "|".join(re.escape(letter) for letter in options)
    mention = re.compile(_LETTER_MENTION.format(letters=letters))
    for sentence in reversed(split_sentences(rationale)):
        named = _names_in(sentence, options.values())
        named = {t for t in named if not any(t != o and t.lower() in o.lower() for o in named)}
        found = {letter for letter, text in options.items() if text in named}
        found |= {a or b for a, b in mention.findall(sentence)}
        if len(found) == 1:
            return found.pop() == stated_letter
        if found:
            return None
    return None


def hallucinated_entities(
    record: Mapping[str, Any], known_entities: Mapping[str, Iterable[str]]
) -> set[tuple[str, str]]:
    """``(kind, name)`` of the known entities the rationale names that appear neither in the question,
    its options nor the given passages."""
    given = "\n".join(
        [record.get("question", ""), *(t for t in (record.get("options") or {}).values() if t)]
        + [_passage_text(p) for p in record.get("passages") or ()]
    )
    rationale = _rationale(record)
    out = set()
    for kind, names in known_entities.items():
        named = _names_in(rationale, names)
        out |= {(kind, name) for name in named - _names_in(given, named)}
    return out


def hallucination_rate(
    records: Sequence[Mapping[str, Any]], known_entities: Mapping[str, Iterable[str]]
) -> float:
    """Share of rationales naming a known entity (e.g. the demo task's drugs, doses, conditions,
    :attr:`~jmlr_hf.data.DemoTask.entities`) that is neither in the question/options nor in the given
    passages. Exact on the synthetic demo task, where every entity is known."""
    if not records:
        return 0.0
    known = {kind: list(names) for kind, names in known_entities.items()}
    return sum(bool(hallucinated_entities(r, known)) for r in records) / len(records)


def _mean(values: Iterable[float | None]) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def grounding_summary(
    records: Sequence[Mapping[str, Any]],
    known_entities: Mapping[str, Iterable[str]] | None = None,
    threshold: float = SUPPORT_THRESHOLD,
) -> dict[str, float]:
    """Grounding metrics of generated rationales (records as in the module docstring; a ``rationale``
    holding the whole generated answer loses its answer head first, see :func:`split_answer`).

    Returns:
        ``citing_rationales``: share of rationales citing at least one passage;
        ``invalid_citations``: share of all citations that point to no given passage;
        ``supported_sentences_cited`` / ``supported_sentences_any``: mean over rationales of
        :func:`supported_sentence_share` against the cited / any given passage;
        ``letter_agreement``: share of parsable rationales whose conclusion is the stated letter, and
        ``letter_parsed``: share of rationales where it could be parsed;
        ``hallucination_rate`` (with ``known_entities``): :func:`hallucination_rate`;
        ``num_rationales``. A mean over no values is NaN.
    """
    rationales = [_rationale(r) for r in records]
    citations = [extract_citations(text) for text in rationales]
    invalid = [invalid_citations(text, len(r.get("passages") or ())) for text, r in zip(rationales, records)]
    agreement = [
        letter_agrees_with_rationale(text, r.get("options") or {}, r.get("stated_letter"))
        for text, r in zip(rationales, records)
    ]
    share = {
        against: [
            supported_sentence_share(text, r.get("passages") or (), threshold, against)
            for text, r in zip(rationales, records)
        ]
        for against in ("cited", "any")
    }
    total = sum(len(c) for c in citations)
    summary = {
        "citing_rationales": _mean([float(bool(c)) for c in citations]),
        "invalid_citations": sum(len(i) for i in invalid) / total if total else 0.0,
        "supported_sentences_cited": _mean(share["cited"]),
        "supported_sentences_any": _mean(share["any"]),
        "letter_agreement": _mean([float(a) for a in agreement if a is not None]),
        "letter_parsed": _mean([float(a is not None) for a in agreement]),
        "num_rationales": float(len(records)),
    }
    if known_entities is not None:
        summary["hallucination_rate"] = hallucination_rate(records, known_entities)
    return summary
