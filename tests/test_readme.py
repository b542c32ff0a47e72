"""The README's quick start runs as written (in a few CPU minutes) and leaves a folder `jmlr ask --model` uses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_blocks(section: str) -> list[str]:
    """The ```python blocks of the README section whose heading is ``section``."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start : end if end >= 0 else None], re.DOTALL)


def test_the_quick_start_has_one_python_block_with_a_small_budget():
    (code,) = readme_python_blocks("Quick start")
    assert "max_steps=10" in code and "trainer.save_model(" in code and "trainer.index.save(" in code


@pytest.mark.slow
def test_readme_quick_start_runs_and_jmlr_ask_uses_its_folder(tmp_path, monkeypatch, capsys):
    from jmlr_hf import DocumentIndex, JMLRRetriever
    from jmlr_hf.cli import main

    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for code in readme_python_blocks("Quick start"):
        exec(compile(code, f"{README}:Quick start", "exec"), namespace)
    final = tmp_path / "jmlr-demo" / "final"
    for name in (
        "adapter_config.json",
        "jmlr_inference.json",
        "retriever/config.json",
        "index/index_config.json",
    ):
        assert (final / name).is_file(), name
    DocumentIndex.load(final / "index", JMLRRetriever.from_pretrained(final / "retriever"))  # not stale
    question = namespace["task"].test[0]["question"]
    assert main(["ask", question, "--model", str(final), "--max_new_tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert f"Q: {question}" in out and "[2] " in out  # the trained num_context_docs (2) passages
