"""Multiple-choice accuracy of a causal LLM, closed-book or with retrieved passages.

The prompt is exactly the training prompt (:class:`~jmlr_hf.prompting.PromptBuilder`), so a model
trained by :class:`~jmlr_hf.JMLRTrainer` is evaluated the way it was trained; answers are tokenized
as the tokenizer writes them after the prompt (:meth:`~jmlr_hf.prompting.PromptBuilder.encode`: after a
base model's ``"Answer: "`` the letter is the one token ``" A"``, as in training). Three ways to read
the model's choice:

- ``"loglik"`` (default): one forward per question; the option whose letter has the highest
  log-probability as the first answer token wins (the target starts with ``"<letter>. "``);
- ``"option"``: the log-likelihood of each option's *text* as the continuation of the prompt, without
  its letter (so no letter prior leaks in): ``accuracy`` is lm-evaluation-harness's ``acc`` (summed
  log-likelihood) and ``accuracy_norm`` its ``acc_norm`` (divided by the continuation's UTF-8 bytes);
- ``"generate"``: greedy generation of an answer and a short rationale, read by
  :func:`parse_answer_letter` (an output that names no option counts as wrong and is reported as
  ``None``); each question's generation record is kept for grounding metrics.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data.qa import answer_letters, validate_qa_dataset
from ..prompting import DEFAULT_MAX_CONTEXT_TOKENS, PromptBuilder

logger = logging.getLogger(__name__)

__all__ = [
    "MCQResult",
    "evaluate_mcq",
    "letter_log_likelihoods",
    "option_log_likelihoods",
    "parse_answer_letter",
]
METHODS = ("loglik", "option", "generate")
#: Default generation length of ``method="generate"``: the answer and a short rationale to ground.
DEFAULT_MAX_NEW_TOKENS = 96


@dataclass
class MCQResult:
    """Accuracy and per-question predictions of :func:`evaluate_mcq`.

    ``accuracy_norm`` / ``predictions_norm``: the byte-length-normalised variant (``method="option"``
    only). ``generations`` (``method="generate"`` only): per question ``{"question", "options",
    "passages"`` (those placed in the prompt)``, "rationale"`` (the whole generated text)``,
    "stated_letter"}``. ``grounding``: the grounding metrics of those records, when computed.
    """

    accuracy: float
    num_questions: int
    method: str
    ids: list[Any] = field(default_factory=list)
    predictions: list[str | None] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    accuracy_norm: float | None = None
    predictions_norm: list[str | None] = field(default_factory=list)
    generations: list[dict[str, Any]] = field(default_factory=list)
    grounding: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------
# Reading a generated answer
# ---------------------------------------------------------------------------------------------------

# "The correct answer is D", "Answer: C", "the answer is option d", "**Answer:** (B)", "best choice is B"
_STATEMENT = re.compile(
    r"\b(?:answer|(?:correct|right|best|final)\s+(?:option|choice))\b"
    r"(?:\s+(?:is|would\s+be|should\s+be|will\s+be)\b)?[\s:=*-]*(?:(?:option|choice)\s+)?",
    re.IGNORECASE,
)
# a letter as an answer: "B", "(B)", "**B**", "B.", "b)"; group 1 opens, 2 the letter, 3 closes
_LETTER = re.compile(r"([\s(\[*\"']*)([A-Za-z])([)\]*\"'.:,]*)(?![\w-])")
_OPTION_AT_START = re.compile(r"[\s(\[*\"']*(?:option|choice)\s+([A-Z])\b", re.IGNORECASE)
_LISTED_OPTION = re.compile(r"^\s*([A-Z])[.)]\s*(.+?)\s*$", re.MULTILINE)
_FIRST_SENTENCE = re.compile(r"(?<=[.!?])\s|\n")


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s-]", " ", text.lower()).split())


def _letter_at(
    text: str, pos: int, letters: Sequence[str], options: Mapping[str, str], stated: bool = False
) -> str | None:
    """The answer letter written at ``text[pos:]``, or None (an article "A 39-year-old" is no answer);
    ``stated``: right after "the answer is", where a capital letter alone is an answer ("is C because")."""
    match = _LETTER.match(text, pos)
    if not match or match.group(2).upper() not in letters:
        return None
    opens, letter, closes = match.groups()
    ends = match.end() == len(text) or text[match.end()] == "\n"
    if opens.strip() or closes or ends or (stated and letter.isupper()):
        return letter.upper()
    # "B Cutaneous xanthomas": a bare letter counts when its own option text follows
    rest = _norm(text[match.end() : match.end() + 200])
    own = _norm(options.get(letter, "")) if letter.isupper() else ""
    return letter if own and rest.startswith(own) else None


def _option_at(text: str, options: Mapping[str, str]) -> str | None:
    """The letter of the (longest) option text that ``text`` starts with ("Yes, ..." -> the "yes" option)."""
    head = _norm(text[:400])
    best = None
    for letter, option in options.items():
        norm = _norm(option)
        if norm and (head == norm or head.startswith(norm + " ")):
            best = letter if best is None or len(norm) > len(_norm(options[best])) else best
    return best


def _echoes_options(text: str, options: Mapping[str, str]) -> bool:
    """Whether ``text`` lists two or more options as the prompt does ("A. x\\nB. y"): a copy, not an answer."""
    listed = {
        m.group(1)
        for m in _LISTED_OPTION.finditer(text)
        if _norm(m.group(2)) == _norm(options.get(m.group(1), "#"))
    }
    return len(listed) >= 2


def parse_answer_letter(
    text: str, letters: Sequence[str] | Mapping[str, str], options: Mapping[str, str] | None = None
) -> str | None:
    """The option a generated answer states, as its letter, or None when it states none.

    Args:
        text: the generated text.
        letters: the option letters, or the options themselves (letter -> option text).
        options: letter -> option text (when ``letters`` is a list); lets an answer that quotes an
            option without its letter count ("Yes" for a yes/no/maybe question).

    The first rule that applies wins:

    1. a letter the text starts with - the answer in the form the prompt asks for ("Answer with the
       letter ... first"): "B", "B.", "(B)", "**B**", "Option B", or a bare letter followed by its own
       option text ("B Cutaneous xanthomas"); but not an article ("A 39-year-old man ...") and not the
       prompt's option list copied back ("A. x\\nB. y\\n...");
    2. an explicit statement anywhere: "The correct answer is B", "Answer: (C)", "the answer is option
       D", "best choice is A" (a letter, or an option text right after it);
    3. an option text the answer starts with ("Yes.", "Maybe", "Polyhydramnios is ...");
    4. the one option whose text appears in the first sentence (none or several: None).

    The leading letter is the stated answer even when the text goes on to contradict it ("A. CMV\\n\\nThe
    correct answer is C.", common in small models: 8 of SmolLM2-135M's answers to 24 MedQA questions) or
    names another option's text ("A. no"); whether the rationale agrees with the stated letter is a
    grounding metric, not the parser's business.

    Examples:
        >>> opts = {"A": "yes", "B": "no", "C": "maybe"}
        >>> [parse_answer_letter(t, opts) for t in ["(B)", "Answer: C", "Yes, it does.", "A 39-year-old"]]
        ['B', 'C', 'A', None]
    """
    if isinstance(letters, Mapping):
        options, letters = letters, list(letters)
    options = {k: v for k, v in (options or {}).items() if isinstance(v, str)}
    text = text.strip()
    if not _echoes_options(text, options):
        start = _OPTION_AT_START.match(text)
        if start and start.group(1).upper() in letters:
            return start.group(1).upper()
        letter = _letter_at(text, 0, letters, options)
        if letter:
            return letter
    for match in _STATEMENT.finditer(text):
        letter = _letter_at(text, match.end(), letters, options, stated=True) or _option_at(
            text[match.end() :], options
        )
        if letter:
            return letter
    letter = _option_at(text, options)
    if letter:
        return letter
    first = _norm(_FIRST_SENTENCE.split(text, maxsplit=1)[0])
    found = [k for k, v in options.items() if _norm(v) and re.search(rf"\b{re.escape(_norm(v))}\b", first)]
    return found[0] if len(found) == 1 else None


# ---------------------------------------------------------------------------------------------------
# Log-likelihoods
# ---------------------------------------------------------------------------------------------------


def _continuation(prompt: str, text: str) -> str:
    """What follows the prompt's token ids (see PromptBuilder.encode): its trailing spaces, then ``text``."""
    return prompt[len(prompt.rstrip(" ")) :] + text


def _letter_token_ids(
    prompts: PromptBuilder, prompt: str, row: Mapping[str, Any]
) -> tuple[list[int], list[int]]:
    """The prompt's ids and, per letter, the first token of the training target ``"<letter>. <option>"``
    as tokenized after the prompt (``" A"`` after a base model's ``"Answer: "``)."""
    letters = answer_letters(row)
    ids = []
    for letter in letters:
        head, target = prompts.encode(prompt, f"{letter}. {row['options'][letter]}", add_eos=False)
        if not target:
            raise ValueError(f"the tokenizer produced no token for the answer letter {letter!r}")
        ids.append(target[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"the answer letters {letters} do not start with distinct tokens")
    return head, ids


def _left_pad(seqs: Sequence[Sequence[int]], pad: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}


def _prompt_texts(
    prompts: PromptBuilder,
    rows: Sequence[Mapping[str, Any]],
    passages: Sequence[Sequence[Mapping[str, Any]]] | None,
    offset: int,
) -> list[str]:
    """The prompts of ``rows`` (``passages[offset + i]`` in row i's prompt; none if None)."""
    return [
        prompts.prompt(row, passages[offset + i] if passages is not None else ())
        for i, row in enumerate(rows)
    ]


@torch.no_grad()
def letter_log_likelihoods(
    model: torch.nn.Module,
    prompts: PromptBuilder,
    rows: Sequence[Mapping[str, Any]],
    passages: Sequence[Sequence[Mapping[str, Any]]] | None = None,
    batch_size: int = 8,
    show_progress_bar: bool = False,
) -> list[dict[str, float]]:
    """Log-probability of each option letter as the first answer token: one dict per row.

    Args:
        model: a causal LM.
        prompts: the :class:`PromptBuilder` of the LLM's tokenizer (template, context budget).
        rows: validated QA rows with options.
        passages: per row, the retrieved passages (best first); ``None`` for closed-book.
        batch_size: questions per forward (left-padded, only the last position's logits computed).
        show_progress_bar: a tqdm bar over the batches.
    """
    device = next(model.parameters()).device
    out: list[dict[str, float]] = []
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc="Scoring answers", disable=not show_progress_bar):
        chunk = rows[start : start + batch_size]
        for row in chunk:
            if not answer_letters(row):
                raise ValueError(f"row {row.get('id')!r} has no options: letter log-likelihood needs options")
        encoded = [
            _letter_token_ids(prompts, text, row)
            for text, row in zip(_prompt_texts(prompts, chunk, passages, start), chunk)
        ]
        batch = _left_pad([head for head, _ in encoded], prompts.tokenizer.pad_token_id, device)
        position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        logits = model(**batch, position_ids=position_ids, logits_to_keep=1).logits[:, -1].float()
        logprobs = torch.log_softmax(logits, dim=-1).cpu()
        for i, (row, (_, ids)) in enumerate(zip(chunk, encoded)):
            out.append({letter: float(logprobs[i, t]) for letter, t in zip(answer_letters(row), ids)})
    return out


def _cache_argument(model: torch.nn.Module) -> str:
    """``cache`` in transformers >= 5.24 (``past_key_values`` is deprecated there), else ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def _option_scores(
    model: torch.nn.Module,
    prompts: PromptBuilder,
    rows: Sequence[Mapping[str, Any]],
    passages: Sequence[Sequence[Mapping[str, Any]]] | None,
    batch_size: int,
    show_progress_bar: bool,
) -> list[dict[str, tuple[float, int]]]:
    """Per row, per letter: (summed log-probability of the option text after the prompt, its UTF-8 bytes)."""
    device = next(model.parameters()).device
    tokenizer = prompts.tokenizer
    out: list[dict[str, tuple[float, int]]] = []
    for start in tqdm(range(0, len(rows), batch_size), desc="Scoring options", disable=not show_progress_bar):
        chunk = rows[start : start + batch_size]
        heads, owners, letters, answers, sizes = [], [], [], [], []
        for i, (row, text) in enumerate(zip(chunk, _prompt_texts(prompts, chunk, passages, start))):
            for letter, option in row["options"].items():
                head, ids = prompts.encode(text, option, add_eos=False)  # head: the same for every option
                owners.append(i)
                letters.append(letter)
                answers.append(ids)
                sizes.append(len(_continuation(text, option).encode("utf-8")))
            heads.append(head)
        batch = _left_pad(heads, tokenizer.pad_token_id, device)
        mask = batch["attention_mask"]
        first = model(
            **batch, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True, logits_to_keep=1
        )
        first_logprobs = torch.log_softmax(first.logits[:, -1].float(), -1)
        # one continuation per (row, option), right-padded, on a copy of its row's cache
        owner = torch.tensor(owners, device=device)
        width = max(len(a) for a in answers)
        cont = torch.full((len(answers), width), tokenizer.pad_token_id, dtype=torch.long, device=device)
        cont_mask = torch.zeros_like(cont)
        for j, a in enumerate(answers):
            cont[j, : len(a)] = torch.tensor(a, device=device)
            cont_mask[j, : len(a)] = 1
        cache = first.get("cache") if first.get("cache") is not None else first.get("past_key_values")
        cache.reorder_cache(owner)
        prompt_lengths = mask.sum(-1)[owner]
        logits = model(
            input_ids=cont,
            attention_mask=torch.cat([mask[owner], cont_mask], dim=1),
            position_ids=prompt_lengths[:, None] + torch.arange(width, device=device),
            **{_cache_argument(model): cache},
        ).logits.float()
        # token j of an answer is predicted by the prompt's last position (j = 0) or by answer token j - 1
        logprobs = torch.cat([first_logprobs[owner][:, None], torch.log_softmax(logits[:, :-1], -1)], dim=1)
        token_logprobs = logprobs.gather(-1, cont[..., None]).squeeze(-1) * cont_mask
        totals = token_logprobs.sum(-1).cpu().tolist()
        scores: list[dict[str, tuple[float, int]]] = [{} for _ in chunk]
        for i, letter, total, size in zip(owners, letters, totals, sizes):
            scores[i][letter] = (total, size)
        out.extend(scores)
    return out


def option_log_likelihoods(
    model: torch.nn.Module,
    prompts: PromptBuilder,
    rows: Sequence[Mapping[str, Any]],
    passages: Sequence[Sequence[Mapping[str, Any]]] | None = None,
    batch_size: int = 8,
    show_progress_bar: bool = False,
    normalize: bool = False,
) -> list[dict[str, float]]:
    """Log-likelihood of each option's text as the continuation of the prompt: one dict per row.

    The continuation is the option text alone, no letter (lm-evaluation-harness's multiple-choice
    scoring), tokenized as written after the prompt (:meth:`~jmlr_hf.prompting.PromptBuilder.encode`).
    Arguments as :func:`letter_log_likelihoods`; ``normalize=True`` divides each sum by the
    continuation's length in UTF-8 bytes (lm-evaluation-harness's ``acc_norm``). Each prompt is run
    once; its KV cache is shared by the row's options, so scoring four options costs about one prompt
    forward, not four.
    """
    scores = _option_scores(model, prompts, rows, passages, batch_size, show_progress_bar)
    return [{k: total / size if normalize else total for k, (total, size) in s.items()} for s in scores]


@torch.no_grad()
def _generate(
    model: torch.nn.Module,
    prompts: PromptBuilder,
    rows: Sequence[Mapping[str, Any]],
    passages: Sequence[Sequence[Mapping[str, Any]]] | None,
    batch_size: int,
    max_new_tokens: int,
    show_progress_bar: bool,
) -> list[dict[str, Any]]:
    """Greedy answers, one grounding record per row (see :class:`MCQResult`)."""
    device = next(model.parameters()).device
    tokenizer = prompts.tokenizer
    out: list[dict[str, Any]] = []
    for start in tqdm(range(0, len(rows), batch_size), desc="Generating", disable=not show_progress_bar):
        chunk = rows[start : start + batch_size]
        # the prompt without its trailing space: the model writes " A" as in ordinary text
        heads = [prompts.prompt_ids(t.rstrip(" ")) for t in _prompt_texts(prompts, chunk, passages, start)]
        batch = _left_pad(heads, tokenizer.pad_token_id, device)
        generated = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )[:, batch["input_ids"].shape[1] :]
        for i, (row, ids) in enumerate(zip(chunk, generated)):
            text = tokenizer.decode(ids, skip_special_tokens=True)
            placed = prompts.placed_passages(passages[start + i]) if passages is not None else []
            out.append(
                {
                    "question": row["question"],
                    "options": dict(row["options"]),
                    "passages": [{"title": p.get("title", ""), "text": p["text"]} for p in placed],
                    "rationale": text,
                    "stated_letter": parse_answer_letter(text, row["options"]),
                }
            )
    return out


def _grounding_summary(records: list[dict[str, Any]]) -> dict[str, float]:
    """Grounding metrics of the generation records (:func:`~jmlr_hf.evaluation.grounding.grounding_summary`)."""
    from .grounding import grounding_summary

    return grounding_summary(records)


def evaluate_mcq(
    model: torch.nn.Module,
    tokenizer: Any,
    dataset: Any,
    *,
    passages: Sequence[Sequence[Mapping[str, Any]]] | None = None,
    prompt_template: str | None = None,
    max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS,
    method: str = "loglik",
    batch_size: int = 8,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    show_progress_bar: bool = True,
) -> MCQResult:
    """Multiple-choice accuracy of ``model`` on ``dataset`` (QA rows with options).

    Args:
        model: a causal LM (put in eval mode here).
        tokenizer: its tokenizer (the chat template builds the prompt, as in training).
        dataset: QA rows (a ``datasets.Dataset`` or a list of dicts); bad rows raise naming the row.
            To score a subset, pass :func:`~jmlr_hf.evaluation.sample_questions` of it (a seeded,
            answer-stratified sample), not its first N rows: benchmark files are often sorted.
        passages: per row, the passages to put in the prompt (best first), e.g. from
            :func:`~jmlr_hf.evaluation.retrieve_passages`; ``None`` = closed-book.
        prompt_template / max_context_tokens: as in :class:`~jmlr_hf.JMLRTrainingArguments`.
        method: ``"loglik"`` (answer-letter log-likelihood), ``"option"`` (log-likelihood of the
            option text, without its letter; also gives ``accuracy_norm``) or ``"generate"`` (greedy
            answer and rationale, read by :func:`parse_answer_letter`; keeps ``generations``).
        batch_size: questions per forward.
        max_new_tokens: generation length for ``method="generate"`` (the answer and a short rationale).
        show_progress_bar: tqdm progress.

    Returns:
        An :class:`MCQResult`.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    rows = validate_qa_dataset(dataset)
    if not rows:
        raise ValueError("the evaluation dataset is empty")
    if passages is not None and len(passages) != len(rows):
        raise ValueError(f"got passages for {len(passages)} rows but the dataset has {len(rows)}")
    for i, row in enumerate(rows):
        if not answer_letters(row):
            raise ValueError(
                f"row {i} (id {row['id']!r}) has no options: multiple-choice evaluation needs them"
            )
    prompts = PromptBuilder(tokenizer, prompt_template, max_context_tokens)
    answers = [row["answer"] for row in rows]
    result = MCQResult(0.0, len(rows), method, ids=[row["id"] for row in rows], answers=answers)
    was_training = model.training
    model.eval()
    try:
        if method == "loglik":
            scores = letter_log_likelihoods(model, prompts, rows, passages, batch_size, show_progress_bar)
            result.predictions = [max(s, key=s.get) for s in scores]
        elif method == "option":
            pairs = _option_scores(model, prompts, rows, passages, batch_size, show_progress_bar)
            result.predictions = [max(s, key=lambda k: s[k][0]) for s in pairs]
            result.predictions_norm = [max(s, key=lambda k: s[k][0] / s[k][1]) for s in pairs]
            result.accuracy_norm = _accuracy(result.predictions_norm, answers)
        else:
            result.generations = _generate(
                model, prompts, rows, passages, batch_size, max_new_tokens, show_progress_bar
            )
            result.predictions = [g["stated_letter"] for g in result.generations]
            result.grounding = _grounding_summary(result.generations)  # the one grounding call site
    finally:
        model.train(was_training)
    result.accuracy = _accuracy(result.predictions, answers)
    return result


def _accuracy(predictions: Sequence[str | None], answers: Sequence[str]) -> float:
    return sum(p == a for p, a in zip(predictions, answers)) / len(answers)
