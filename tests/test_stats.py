"""Standard errors and paired differences (evaluation/stats.py) against hand-worked numbers."""

from __future__ import annotations

import math

import pytest

from jmlr_hf.evaluation.stats import mcnemar_p_value, paired_difference, standard_error


def test_standard_error_of_an_accuracy_is_the_binomial_one():
    scores = [1.0] * 35 + [0.0] * 65  # p = 0.35, n = 100
    assert standard_error(scores) == pytest.approx(math.sqrt(0.35 * 0.65 / 100))
    assert standard_error([1, None, 0, float("nan")]) == pytest.approx(
        math.sqrt(0.25 / 2)
    )  # None, NaN skipped
    assert math.isnan(standard_error([]))


def test_paired_difference_matches_the_hand_computed_wald_interval_and_mcnemar():
    a = [1, 1, 1, 0, 1, 0, 1, 1, 0, 1]
    b = [0, 1, 0, 0, 1, 1, 1, 0, 0, 1]
    # by hand: only a right on 3 questions, only b on 1; n = 10
    # difference (3 - 1) / 10 = 0.2; SE = sqrt(3 + 1 - (3 - 1)^2 / 10) / 10 = sqrt(3.6) / 10 = 0.1897367
    # 95%: 0.2 -+ 1.959964 * 0.1897367 = 0.2 -+ 0.371877 = [-0.171877, 0.571877]
    # exact McNemar: 2 * P(Binomial(4, 1/2) <= 1) = 2 * 5/16 = 0.625
    d = paired_difference(a, b)
    assert d["difference"] == pytest.approx(0.2)
    assert d["se"] == pytest.approx(0.1897367, abs=1e-7)
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((-0.171877, 0.571877), abs=1e-6)
    assert d["n"] == 10 and d["discordant"] == [3, 1]
    assert d["p_value"] == pytest.approx(0.625)


def test_paired_difference_of_shares_skips_unscored_questions_and_has_no_mcnemar():
    d = paired_difference([0.5, 1.0, None, 0.25], [0.0, 1.0, 0.5, float("nan")])
    assert d["n"] == 2 and d["difference"] == pytest.approx(0.25)
    assert d["se"] == pytest.approx(0.25 / math.sqrt(2))  # diffs 0.5, 0.0: population sd 0.25
    assert "p_value" not in d


def test_paired_difference_rejects_unpaired_inputs():
    with pytest.raises(ValueError, match="same questions"):
        paired_difference([1, 0], [1])
    with pytest.raises(ValueError, match="no question"):
        paired_difference([None], [1])


def test_mcnemar_edge_cases():
    assert mcnemar_p_value(0, 0) == 1.0
    assert mcnemar_p_value(5, 0) == pytest.approx(2 / 32)
    assert mcnemar_p_value(3, 3) == 1.0
