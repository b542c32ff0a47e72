"""The package's arrows: evaluation, prompting, scoring, the folder layout and the Hub cards need models, never
the trainer; the names that moved out of trainer/ and index.py stay importable from their old homes."""

from __future__ import annotations

import subprocess
import sys

import jmlr_hf.retriever.index as index_module
from jmlr_hf import layout, prompting, scoring
from jmlr_hf.evaluation import metrics
from jmlr_hf.retriever import backends, store

TRAINER_FREE = ("jmlr_hf.evaluation", "jmlr_hf.hub", "jmlr_hf.layout", "jmlr_hf.prompting", "jmlr_hf.scoring")


def test_evaluation_hub_and_prompting_never_import_the_trainer():
    code = (
        f"import sys\nfor name in {TRAINER_FREE!r}:\n    __import__(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('jmlr_hf.trainer')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_moved_names_keep_their_old_import_paths():
    from jmlr_hf.trainer import PromptBuilder, answer_nll, kendall_tau
    from jmlr_hf.trainer.arguments import (
        CLOSED_BOOK_TEMPLATE,
        DEFAULT_MAX_CONTEXT_TOKENS,
        DEFAULT_PROMPT_TEMPLATE,
    )
    from jmlr_hf.trainer.checkpoints import INDEX_DIR, RETRIEVER_DIR, STATE_FILE
    from jmlr_hf.trainer.collator import IGNORE_INDEX, format_context, lm_loss, passage_utility_nll
    from jmlr_hf.trainer.losses import kendall_tau as losses_kendall_tau

    assert PromptBuilder is prompting.PromptBuilder and format_context is prompting.format_context
    assert (CLOSED_BOOK_TEMPLATE, DEFAULT_MAX_CONTEXT_TOKENS, DEFAULT_PROMPT_TEMPLATE, IGNORE_INDEX) == (
        prompting.CLOSED_BOOK_TEMPLATE,
        prompting.DEFAULT_MAX_CONTEXT_TOKENS,
        prompting.DEFAULT_PROMPT_TEMPLATE,
        prompting.IGNORE_INDEX,
    )
    assert (answer_nll, lm_loss, passage_utility_nll) == (
        scoring.answer_nll,
        scoring.lm_loss,
        scoring.passage_utility_nll,
    )
    assert kendall_tau is losses_kendall_tau is metrics.kendall_tau
    assert (RETRIEVER_DIR, INDEX_DIR, STATE_FILE) == ("retriever", "index", "jmlr_state.json")
    assert (layout.RETRIEVER_DIR, layout.INDEX_DIR, layout.STATE_FILE) == (
        RETRIEVER_DIR,
        INDEX_DIR,
        STATE_FILE,
    )
    assert layout.INFERENCE_FILE == "jmlr_inference.json"
    # benchmarks and tests import the backends' pieces from jmlr_hf.retriever.index
    assert index_module._FaissBackend is backends.FaissBackend
    assert index_module._ExactBackend is backends.ExactBackend
    assert index_module._VectorStore is store.VectorStore
    assert index_module._segment_maxsim is store.segment_maxsim
    assert index_module.IndexFileError is backends.IndexFileError
