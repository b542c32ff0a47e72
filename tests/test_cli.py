"""The ``jmlr`` command."""

from __future__ import annotations

import re

import pytest

from jmlr_hf.cli import build_parser, main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "demo" in capsys.readouterr().out


@pytest.mark.slow
def test_retrieval_demo_on_embedded_defaults(capsys, encoder_path):
    assert main(["demo", "--num-facts", "16", "--k", "3", "--backend", "exact"]) == 0
    out = capsys.readouterr().out
    recall = float(
        re.search(r"recall@3 of the gold passage on \d+ held-out questions: ([0-9.]+)", out).group(1)
    )
    assert recall >= 0.75  # the condition name is in the question and in its passage
