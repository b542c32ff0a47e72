"""The pairwise judge's mechanics with a tiny local LLM (no network, no stubs)."""

from __future__ import annotations

import pytest
import torch

from jmlr_hf.evaluation.judge import JudgeResult, judge_prompt, pairwise_judge
from testing_utils import make_tiny_llm

PASSAGE = {"title": "Velorin syndrome", "text": "First-line therapy is zentorvane 25 mg twice daily."}
OPTIONS = {"A": "kalimab", "B": "zentorvane", "C": None}


def records(rationales, letter="B", passages=(PASSAGE,)):
    return [
        {
            "question": f"Question {i}: first-line drug for Velorin syndrome?",
            "options": OPTIONS,
            "passages": list(passages),
            "rationale": text,
            "stated_letter": letter,
        }
        for i, text in enumerate(rationales)
    ]


GOOD = records(["Zentorvane is first-line [1].", "The guideline recommends zentorvane [1].", "See [1]."])
BAD = records(["Kalimab cures it.", "No idea.", "Aspirin 40 mg daily [4]."], letter="A")


@pytest.fixture(scope="module")
def judge(llm_tokenizer):
    return make_tiny_llm(llm_tokenizer, seed=3).eval()


def test_judge_prompt_shows_question_options_passages_and_both_answers():
    message = judge_prompt(GOOD[0], BAD[0])
    assert "Question 0: first-line drug" in message and "A. kalimab\nB. zentorvane" in message
    assert message.count("[1] Velorin syndrome: First-line therapy") == 1  # same passages: shown once
    assert message.index("Answer 1:\nB. zentorvane\nZentorvane is first-line [1].") < message.index(
        "Answer 2:\nA. kalimab\nKalimab cures it."
    )
    other = records(["x"], passages=[{"title": "", "text": "Other passage."}])[0]
    assert "Excerpts given to answer 2:\n[1] Other passage." in judge_prompt(GOOD[0], other)


def test_result_is_consistent(judge, llm_tokenizer):
    result = pairwise_judge(judge, llm_tokenizer, GOOD, BAD, num_bootstrap=200)
    assert isinstance(result, JudgeResult) and result.num_questions == 3
    assert result.wins + result.losses + result.ties == 3
    assert result.win_rate == pytest.approx((result.wins + result.ties / 2) / 3)
    assert 0.0 <= result.ci_low <= result.win_rate <= result.ci_high <= 1.0
    for p_a, (a_first, b_first) in zip(result.p_a, result.p_first):
        assert p_a == pytest.approx((a_first + 1 - b_first) / 2)
    assert set(result.to_dict()) >= {"win_rate", "ci_low", "ci_high", "first_position_rate", "consistency"}


def test_swapping_the_systems_flips_the_win_rate(judge, llm_tokenizer):
    ab = pairwise_judge(judge, llm_tokenizer, GOOD, BAD, num_bootstrap=200)
    ba = pairwise_judge(judge, llm_tokenizer, BAD, GOOD, num_bootstrap=200)
    assert ba.win_rate == pytest.approx(1 - ab.win_rate)
    assert (ba.wins, ba.losses, ba.ties) == (ab.losses, ab.wins, ab.ties)
    assert ba.p_a == pytest.approx([1 - p for p in ab.p_a], abs=1e-5)
    assert ba.first_position_rate == pytest.approx(ab.first_position_rate)


def test_a_judge_that_always_says_1_is_all_position_bias(llm_tokenizer):
    model = make_tiny_llm(llm_tokenizer, seed=0).eval()
    one = llm_tokenizer("1", add_special_tokens=False)["input_ids"][-1]
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():  # whatever the prompt, the reply "1" is by far the most likely
        head.weight.zero_()
        head.bias.zero_()
        head.bias[one] = 10.0
    model.lm_head = head
    result = pairwise_judge(model, llm_tokenizer, GOOD, BAD, num_bootstrap=200)
    assert result.first_position_rate == 1.0
    assert (result.ties, result.consistency, result.win_rate) == (3, 0.0, 0.5)
    assert result.ci_low == result.ci_high == 0.5


def test_mismatched_records_are_refused(judge, llm_tokenizer):
    with pytest.raises(ValueError, match="same, non-zero number"):
        pairwise_judge(judge, llm_tokenizer, GOOD, BAD[:2])
    with pytest.raises(ValueError, match="different questions"):
        pairwise_judge(judge, llm_tokenizer, GOOD, list(reversed(BAD)))


# ---------------------------------------------------------------------------------------------------
# jmlr eval --judge-model NAME --compare OTHER.json
# ---------------------------------------------------------------------------------------------------


def test_eval_judges_a_run_against_another(tmp_path, llm_tokenizer, bert_tokenizer, capsys):
    import json
    import math

    from testing_utils import make_cli_assets, run_cli

    assets = make_cli_assets(tmp_path, llm_tokenizer, bert_tokenizer)
    base = ["eval", "--model", assets["llm"], "--data", assets["test"], "--index", assets["index"]]
    base += [
        "--retriever",
        assets["retriever"],
        "--method",
        "generate",
        "--max-new-tokens",
        "4",
        "--limit",
        "2",
    ]
    code, out, _ = run_cli(base + ["--output", tmp_path / "a.json", "-q"], capsys)
    assert code == 0
    # generated answers: the table reports how their rationales stand on the given passages
    assert "invalid_citations" in out and "supported_sentences_any" in out
    invalid = json.loads((tmp_path / "a.json").read_text())["results"]["test"]["invalid_citations"]
    assert math.isnan(invalid) or 0.0 <= invalid <= 1.0  # NaN when no rationale cites
    argv = base + [
        "--judge-model",
        assets["llm"],
        "--compare",
        tmp_path / "a.json",
        "--output",
        tmp_path / "b.json",
    ]
    code, out, _ = run_cli(argv + ["-q"], capsys)
    assert code == 0 and "judge_win_rate" in out
    saved = json.loads((tmp_path / "b.json").read_text())
    judged = saved["details"]["test"]["judge"]
    # the same system against itself: both orders show the same prompt, so every question is a tie
    assert saved["results"]["test"]["judge_win_rate"] == 0.5
    assert (judged["ties"], judged["num_questions"], judged["compare"]) == (2, 2, str(tmp_path / "a.json"))


def test_judge_flags_are_checked(capsys):
    from testing_utils import run_cli

    code, _, err = run_cli(["eval", "--data", "x.jsonl", "--judge-model", "m"], capsys)
    assert code != 0 and "--compare" in err
    code, _, err = run_cli(["eval", "--data", "x.jsonl", "--judge-model", "m", "--compare", "a.json"], capsys)
    assert code != 0 and "--method generate" in err
