"""The bundled demo task: FICTIONAL clinical guidelines and multiple-choice questions about them.

.. warning::
   Everything generated here is **synthetic and is not medical advice**. The conditions, drugs, doses,
   intervals and recommendations are invented by a seeded random generator; any resemblance of a
   generated name to a real condition or medicine is coincidental.

Why synthetic: no language model can answer these questions from memory, so the right passage has to be
retrieved to answer, which is exactly what JMLR's joint training teaches the retriever. Each *fact* is
one guideline passage about an invented condition (e.g. "Management of Velorin syndrome": the first-line
drug with its dose and duration, an alternative for patients with a comorbidity, a contraindicated
co-medication and a screening interval) together with its question(s). Questions paraphrase the passage
and name the condition (so a retriever can find the passage lexically); their four options (A-D) are all
invented names or values, and drug distractors are drugs that appear elsewhere in the corpus, so surface
plausibility does not help. The correct option's text appears in the gold passage; the distractors do not.

Example:
    >>> task = make_demo_task(num_facts=8, seed=0)
    >>> len(task.train) + len(task.test)
    8
    >>> sorted(task.corpus.column_names)
    ['id', 'text', 'title']
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

from datasets import Dataset, Value

from .qa import to_qa_dataset

logger = logging.getLogger(__name__)

__all__ = ["QUESTION_TYPES", "DemoTask", "make_demo_task"]

#: The kinds of question the demo task asks (one passage supports all of them).
QUESTION_TYPES: tuple[str, ...] = (
    "first_line",
    "dose",
    "duration",
    "alternative",
    "interaction",
    "screening",
)

_NUM_OPTIONS = 4
_LETTERS = "ABCD"
_MIN_NAME_LENGTH = 5

# Pieces of invented names.
_ONSETS = (
    "b",
    "br",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "k",
    "kl",
    "l",
    "m",
    "n",
    "p",
    "pr",
    "r",
    "s",
    "st",
    "t",
    "tr",
    "v",
    "z",
)
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("n", "r", "l", "s", "x", "m", "")
_CONDITION_FORMS = ("{} syndrome", "{} disease", "{} fever", "{} dystrophy", "{}osis", "{} palsy")
_DRUG_SUFFIXES = (
    "axidine",
    "orvane",
    "emtrol",
    "ilonate",
    "uprex",
    "azomab",
    "ivudrel",
    "otrexin",
    "anstat",
    "umidox",
)

# Clinical vocabulary (generic words; the facts themselves are invented).
_CATEGORIES = (
    "inflammatory",
    "metabolic",
    "autoimmune",
    "neuromuscular",
    "dermatological",
    "haematological",
    "endocrine",
)
_SYMPTOMS = (
    "recurrent fever",
    "joint stiffness",
    "scaly skin plaques",
    "chronic fatigue",
    "blurred vision",
    "proximal muscle weakness",
    "abdominal pain",
    "night sweats",
    "persistent cough",
    "peripheral numbness",
    "episodic dizziness",
    "patchy hair loss",
)
_COMORBIDITIES = (
    "renal impairment",
    "hepatic impairment",
    "heart failure",
    "severe asthma",
    "epilepsy",
    "poorly controlled diabetes",
    "osteoporosis",
)
_ADVERSE = (
    "serotonin toxicity",
    "severe hypotension",
    "QT prolongation",
    "major bleeding",
    "hyperkalaemia",
    "lactic acidosis",
    "hepatotoxicity",
)
_COMPLICATIONS = (
    "retinal changes",
    "declining renal function",
    "hearing loss",
    "reduced bone density",
    "thyroid dysfunction",
    "cardiac arrhythmia",
    "liver fibrosis",
)
_INTERVALS = (
    "every 3 months",
    "every 4 months",
    "every 6 months",
    "every 12 months",
    "every 18 months",
    "every 2 years",
    "every 3 years",
)
_AMOUNTS = (5, 10, 20, 25, 40, 50, 75, 100, 150, 200, 250, 300, 400, 500, 750)
_FREQUENCIES = ("once daily", "twice daily", "three times daily", "once weekly")
_DURATIONS = ("2 weeks", "4 weeks", "6 weeks", "8 weeks", "10 weeks", "12 weeks", "16 weeks", "24 weeks")
_DOSES = tuple(f"{amount} mg {frequency}" for amount in _AMOUNTS for frequency in _FREQUENCIES)

_TITLES = ("Management of {c}", "{c}: clinical practice guideline", "Guideline on the treatment of {c}")
_SENTENCES = {
    "intro": (
        "{c} is a rare {category} disorder characterised by {s1} and {s2}.",
        "{c} is an uncommon {category} condition that typically presents with {s1} and {s2}.",
        "{c} is a chronic {category} disorder; most patients report {s1} and {s2}.",
    ),
    "diagnosis": (
        "The diagnosis is made clinically and should be confirmed by specialist assessment.",
        "Diagnosis rests on the clinical picture and should be confirmed by a specialist.",
        "Patients with suspected disease should be referred early for specialist confirmation.",
    ),
    "first_line": (
        "Recommendations: first-line therapy is {drug} {dose}, continued for {duration}.",
        "{Drug} is recommended as first-line treatment at a dose of {dose} for {duration}.",
        "Recommendations: start {drug} {dose} as first-line therapy and continue it for {duration}.",
    ),
    "alternative": (
        "In patients with {comorbidity}, {drug} should be avoided and {alt} is the preferred alternative.",
        "{Alt} should be used instead of {drug} in patients with {comorbidity}.",
    ),
    "interaction": (
        "Concomitant use of {inter} is contraindicated because of the risk of {adverse}.",
        "{Inter} must not be co-administered with {drug}, as the combination may cause {adverse}.",
    ),
    "screening": (
        "All patients should be screened for {complication} {interval}.",
        "Screening for {complication} is recommended {interval}.",
    ),
    "closing": (
        "Response to treatment should be reviewed at every follow-up visit.",
        "Refer to a specialist centre if symptoms persist despite adherence to therapy.",
        "Written information should be offered to patients and carers.",
    ),
}
# Related passages: about the same condition and worded like the questions, but without any answer
# (a patient FAQ, an evidence summary, research priorities). They are what makes retrieval hard: a
# retriever that only matches words ranks them high; the LLM's loss shows they do not help.
_RELATED = (
    (
        "{c}: questions patients ask",
        "Patients newly diagnosed with {c} often ask which medication is started first, what dose they "
        "will take and for how long first-line treatment is continued. Many also ask which drugs must not "
        "be combined with their therapy, which drug is used instead when they also have {comorbidity}, "
        "and how often they will be screened for complications. The treating specialist answers these "
        "questions using the current guideline for {c}.",
    ),
    (
        "{c}: summary of the evidence",
        "{c} is a rare {category} disorder, and the evidence on its treatment comes from small studies. "
        "The recommended first-line drug, its dose and frequency, the duration of initial therapy, the "
        "preferred alternative in patients with comorbidities, contraindicated co-medication and the "
        "screening interval for complications of {c} are set out in the clinical practice guideline.",
    ),
    (
        "Research priorities in {c}",
        "Research on {c} focuses on the causes of {s1} and {s2}. Open questions include which patients "
        "with {c} benefit from a longer duration of first-line treatment, whether a higher dose improves "
        "the response, how drug interactions should be managed and how often patients should be "
        "screened for complications.",
    ),
)
_QUESTIONS = {
    "first_line": (
        "According to current guidelines, what is the first-line treatment for {c}?",
        "Which agent is recommended as initial drug therapy for a patient newly diagnosed with {c}?",
        "A patient has just been diagnosed with {c}. Which medication should be started first?",
    ),
    "dose": (
        "What is the recommended dose of {drug} when it is used as first-line therapy for {c}?",
        "At what dose and frequency should {drug} be prescribed for {c}?",
    ),
    "duration": (
        "For how long should first-line treatment of {c} be continued?",
        "What is the recommended duration of initial drug therapy for {c}?",
    ),
    "alternative": (
        "In a patient with {c} who also has {comorbidity}, which drug does the guideline recommend instead "
        "of the usual first-line agent?",
        "Which drug is preferred for {c} when the patient has {comorbidity}?",
    ),
    "interaction": (
        "Concomitant use of which drug is contraindicated during treatment of {c}?",
        "Which medication must not be combined with the recommended therapy for {c}?",
    ),
    "screening": (
        "How often should patients with {c} be screened for {complication}?",
        "What is the recommended screening interval for {complication} in {c}?",
    ),
}
_EXPLANATIONS = {
    "first_line": "The guideline for {c} recommends {drug} {dose} as first-line therapy.",
    "dose": "The guideline for {c} recommends {drug} at {dose} as first-line therapy.",
    "duration": "According to the guideline for {c}, first-line treatment with {drug} is continued for {duration}.",
    "alternative": "The guideline for {c} advises against {drug} in patients with {comorbidity} and recommends "
    "{alt} instead.",
    "interaction": "The guideline for {c} states that {inter} must not be combined with treatment because of "
    "the risk of {adverse}.",
    "screening": "The guideline for {c} recommends screening for {complication} {interval}.",
}


@dataclass
class DemoTask:
    """The synthetic demo task (see the module docstring: fictional, not medical advice).

    Attributes:
        corpus: Guideline passages, rows ``{"id", "title", "text"}``.
        train: Training questions: QA rows (``id``, ``question``, ``options`` A-D, ``answer``,
            ``explanation``) plus ``gold_doc_id``, the corpus ``id`` of the passage that answers them.
        test: Test questions, same columns; no fact (passage) has questions in both splits.
        entities: Every entity name the task can mention, by kind: ``"condition"`` (the invented
            conditions of all passages), ``"drug"`` (their first-line, alternative and contraindicated
            drugs) and ``"dose"`` (every dose the generator can write, ``"25 mg twice daily"``, and its
            amount, ``"25 mg"``). Since all are invented, a rationale naming one that is in neither the
            question nor its passages hallucinates (:func:`~jmlr_hf.evaluation.hallucination_rate`).
    """

    corpus: Dataset
    train: Dataset
    test: Dataset
    entities: dict[str, frozenset[str]] = field(default_factory=dict)


class _NameRegistry:
    """Keeps invented names unique and such that no name is a substring of another (or of the text)."""

    def __init__(self, reserved: set[str]) -> None:
        self._names: set[str] = set()
        self._substrings: set[str] = set()
        for word in reserved:
            self._add_substrings(word)

    def _add_substrings(self, word: str) -> None:
        n = len(word)
        for start in range(n - _MIN_NAME_LENGTH + 1):
            for end in range(start + _MIN_NAME_LENGTH, n + 1):
                self._substrings.add(word[start:end])

    def try_add(self, name: str) -> bool:
        word = name.lower()
        if len(word) < _MIN_NAME_LENGTH or word in self._substrings:
            return False
        n = len(word)
        for start in range(n - _MIN_NAME_LENGTH + 1):
            for end in range(start + _MIN_NAME_LENGTH, n + 1):
                if word[start:end] in self._names:
                    return False
        self._names.add(word)
        self._add_substrings(word)
        return True


def _reserved_words() -> set[str]:
    texts = [
        *(s for group in _SENTENCES.values() for s in group),
        *(q for group in _QUESTIONS.values() for q in group),
        *_EXPLANATIONS.values(),
        *_TITLES,
        *(part for related in _RELATED for part in related),
        *_CONDITION_FORMS,
        *_CATEGORIES,
        *_SYMPTOMS,
        *_COMORBIDITIES,
        *_ADVERSE,
        *_COMPLICATIONS,
        *_DOSES,
        *_DURATIONS,
        *_INTERVALS,
    ]
    return {word.strip(".,;:?{}").lower() for text in texts for word in text.split()}


def _unique(rng: random.Random, registry: _NameRegistry, make) -> tuple[str, str]:
    for _ in range(10_000):
        stem, name = make(rng)
        if registry.try_add(stem):
            return stem, name
    raise RuntimeError("could not invent a new unique name; the name space is exhausted")


def _condition(rng: random.Random) -> tuple[str, str]:
    syllables = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.randint(1, 2))]
    stem = ("".join(syllables) + rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)).capitalize()
    return stem, rng.choice(_CONDITION_FORMS).format(stem)


def _drug(rng: random.Random) -> tuple[str, str]:
    syllables = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.randint(1, 2))]
    name = "".join(syllables) + rng.choice(_ONSETS) + rng.choice(_DRUG_SUFFIXES)
    return name, name


def _make_fact(rng: random.Random, registry: _NameRegistry, doc_id: str) -> dict[str, str]:
    _, condition = _unique(rng, registry, _condition)
    drug, alt, inter = (_unique(rng, registry, _drug)[1] for _ in range(3))
    s1, s2 = rng.sample(_SYMPTOMS, 2)
    fact = {
        "doc_id": doc_id,
        "c": condition,
        "category": rng.choice(_CATEGORIES),
        "s1": s1,
        "s2": s2,
        "drug": drug,
        "Drug": drug.capitalize(),
        "dose": rng.choice(_DOSES),
        "duration": rng.choice(_DURATIONS),
        "comorbidity": rng.choice(_COMORBIDITIES),
        "alt": alt,
        "Alt": alt.capitalize(),
        "inter": inter,
        "Inter": inter.capitalize(),
        "adverse": rng.choice(_ADVERSE),
        "complication": rng.choice(_COMPLICATIONS),
        "interval": rng.choice(_INTERVALS),
    }
    fact["title"] = rng.choice(_TITLES).format(**fact)
    fact["text"] = " ".join(rng.choice(_SENTENCES[part]).format(**fact) for part in _SENTENCES)
    return fact


def _entities(facts: list[dict[str, str]]) -> dict[str, frozenset[str]]:
    """The known entity names of the facts' task (see :attr:`DemoTask.entities`)."""
    return {
        "condition": frozenset(f["c"] for f in facts),
        "drug": frozenset(f[key] for f in facts for key in ("drug", "alt", "inter")),
        "dose": frozenset(_DOSES) | {f"{amount} mg" for amount in _AMOUNTS},
    }


# The fact field holding each question type's answer, and the pool its distractors come from.
_ANSWER_FIELD = {
    "first_line": "drug",
    "dose": "dose",
    "duration": "duration",
    "alternative": "alt",
    "interaction": "inter",
    "screening": "interval",
}


def _distractors(
    rng: random.Random, pool: list[str] | tuple[str, ...], answer: str, passage: str
) -> list[str]:
    """Pick distinct distractors from ``pool`` that do not occur (case-insensitively) in ``passage``."""
    chosen: list[str] = []

    def ok(candidate: str) -> bool:
        return candidate != answer and candidate not in chosen and candidate.lower() not in passage

    for _ in range(50 * _NUM_OPTIONS):
        if len(chosen) == _NUM_OPTIONS - 1:
            return chosen
        candidate = rng.choice(pool)
        if ok(candidate):
            chosen.append(candidate)
    rest = [candidate for candidate in pool if ok(candidate)]  # rare fallback: scan the whole pool
    needed = _NUM_OPTIONS - 1 - len(chosen)
    if len(rest) < needed:
        raise ValueError("not enough distractors; generate more facts or distractor documents")
    return chosen + rng.sample(rest, needed)


def _make_question(
    rng: random.Random, fact: dict[str, str], qtype: str, drug_pool: list[str], qid: str
) -> dict[str, object]:
    answer = fact[_ANSWER_FIELD[qtype]]
    passage = fact["text"].lower()
    pool = {"dose": _DOSES, "duration": _DURATIONS, "screening": _INTERVALS}.get(qtype, drug_pool)
    texts = _distractors(rng, pool, answer, passage)
    position = rng.randrange(_NUM_OPTIONS)
    texts.insert(position, answer)
    return {
        "id": qid,
        "question": rng.choice(_QUESTIONS[qtype]).format(**fact),
        "options": dict(zip(_LETTERS, texts)),
        "answer": _LETTERS[position],
        "explanation": _EXPLANATIONS[qtype].format(**fact),
        "gold_doc_id": fact["doc_id"],
    }


def make_demo_task(
    num_facts: int = 120,
    num_distractor_docs: int = 0,
    test_fraction: float = 0.25,
    seed: int = 0,
    *,
    questions_per_fact: int = 1,
    related_docs_per_fact: int = 0,
) -> DemoTask:
    """Generate the synthetic demo task (fictional guidelines; not medical advice).

    Args:
        num_facts: Number of facts, each one corpus passage about a new invented condition plus its
            question(s).
        num_distractor_docs: Extra passages of the same kind (other invented conditions) that no
            question is about; they make retrieval harder.
        test_fraction: Fraction of the facts whose questions go to the test split (split by fact, so no
            passage is the gold passage of both a train and a test question).
        seed: Seed of the generator; the same seed gives the same task.
        questions_per_fact: Questions asked about each fact, each of a different type
            (see :data:`QUESTION_TYPES`).
        related_docs_per_fact: Passages (0-3) added for every fact that are about the same condition and
            worded like its questions but hold no answer (a patient FAQ, an evidence summary, research
            priorities): hard negatives that only the LLM's loss tells apart from the gold passage.

    Returns:
        The :class:`DemoTask` (corpus, train and test datasets).

    Raises:
        ValueError: For out-of-range arguments.
    """
    if num_facts < 1 or num_distractor_docs < 0:
        raise ValueError(
            f"need num_facts >= 1 and num_distractor_docs >= 0, got {num_facts}, {num_distractor_docs}"
        )
    if num_facts + num_distractor_docs < 2:
        raise ValueError("need at least 2 passages (facts + distractor docs) to draw distractor drugs from")
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    if not 0 <= related_docs_per_fact <= len(_RELATED):
        raise ValueError(f"related_docs_per_fact must be in 0..{len(_RELATED)}, got {related_docs_per_fact}")
    if not 1 <= questions_per_fact <= len(QUESTION_TYPES):
        raise ValueError(f"questions_per_fact must be in 1..{len(QUESTION_TYPES)}, got {questions_per_fact}")

    rng = random.Random(seed)
    registry = _NameRegistry(_reserved_words())
    total = num_facts + num_distractor_docs
    width = max(4, len(str(total - 1)))
    docs = [_make_fact(rng, registry, f"demo-doc-{i:0{width}d}") for i in range(total)]
    drug_pool = [doc[key] for doc in docs for key in ("drug", "alt", "inter")]

    questions: list[list[dict[str, object]]] = []
    for i, fact in enumerate(docs[:num_facts]):
        qtypes = rng.sample(QUESTION_TYPES, questions_per_fact)
        questions.append(
            [_make_question(rng, fact, qtype, drug_pool, f"demo-q{i:0{width}d}-{qtype}") for qtype in qtypes]
        )

    order = list(range(num_facts))
    rng.shuffle(order)
    num_test = round(num_facts * test_fraction)
    if 0.0 < test_fraction < 1.0 and num_facts >= 2:
        num_test = min(max(num_test, 1), num_facts - 1)
    test_facts = set(order[:num_test])
    train_rows = [q for i, qs in enumerate(questions) if i not in test_facts for q in qs]
    test_rows = [q for i, qs in enumerate(questions) if i in test_facts for q in qs]

    passages = [{"id": d["doc_id"], "title": d["title"], "text": d["text"]} for d in docs]
    for d in docs:
        for j, (title, text) in enumerate(rng.sample(_RELATED, related_docs_per_fact)):
            passages.append(
                {"id": f"{d['doc_id']}-related-{j}", "title": title.format(**d), "text": text.format(**d)}
            )
    corpus = Dataset.from_list(passages)
    gold = {"gold_doc_id": Value("string")}
    task = DemoTask(
        corpus=corpus,
        train=to_qa_dataset(train_rows, extra_features=gold),
        test=to_qa_dataset(test_rows, extra_features=gold),
        entities=_entities(docs),
    )
    logger.info(
        "Demo task (seed %d): %d passages, %d train and %d test questions",
        seed,
        len(corpus),
        len(task.train),
        len(task.test),
    )
    return task
