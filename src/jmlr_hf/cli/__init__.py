"""The ``jmlr`` command.

Subcommands (``jmlr <command> --help`` explains each option; the registry is
:data:`jmlr_hf.cli.commands.COMMANDS`):

- ``jmlr demo``: the end-to-end demo on the embedded defaults (JMLR on the synthetic task; offline);
  ``jmlr demo --retrieval_only`` runs the quick retrieval demo (recall of the untrained retriever).
- ``jmlr index``: chunk and encode a corpus into a saved :class:`~jmlr_hf.DocumentIndex`
  (``--refresh`` re-encodes a saved index with a new retriever).
- ``jmlr train``: the training recipe (:mod:`jmlr_hf.recipe`) from a YAML config plus overrides.
- ``jmlr eval``: multiple-choice accuracy, closed-book or with retrieved passages (RAG / JMLR).
- ``jmlr ask``: answer one question with retrieved passages and show them.

Every command takes ``--config FILE.yaml`` (its options as keys; flags win) and both spellings of a flag
(``--max_steps`` / ``--max-steps``). Models: ``default`` (or leaving the option out) means the embedded ones
(SmolLM2-135M-Instruct and all-MiniLM-L6-v2 with a seeded ColBERT head). A folder written by ``jmlr train``
/ ``JMLRTrainer.save_model`` holds the LLM, the trained retriever in ``retriever/`` and the re-encoded index
in ``index/``: ``--model DIR`` picks all three up. Errors (a missing or broken file, a malformed row, a bad
config key or value) print one line naming the file, row or key on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from ..parsing import HelpFormatter, JMLRParser
from .commands import COMMANDS
from .loading import index_source as _index_source  # noqa: F401 (bench/ uses these names)
from .loading import load_index as _load_index  # noqa: F401
from .loading import load_llm as _load_llm  # noqa: F401
from .loading import retriever_source as _retriever_source  # noqa: F401

__all__ = ["build_parser", "console_main", "main"]

logger = logging.getLogger("jmlr_hf.cli")


def build_parser() -> argparse.ArgumentParser:
    """The ``jmlr`` parser: ``-v`` and one subparser per registered command (for ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="jmlr",
        description="Joint Medical LLM and Retrieval training (JMLR): demo, index, train, eval, ask. "
        "'default' (or leaving a model option out) means the embedded offline models.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log everything at INFO; tracebacks")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=JMLRParser)
    for command in COMMANDS.values():
        command.register(subparsers)
    return parser


def _configure_logging(verbose: bool) -> Callable[[], None]:
    """What jmlr_hf is doing (its INFO lines) on stderr, everything at INFO with ``-v``; returns the undo."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    package = logging.getLogger("jmlr_hf")
    previous = package.level
    package.setLevel(logging.INFO)
    return lambda: package.setLevel(previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jmlr`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    position = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), len(argv))
    options = parser.parse_args(argv[:position])  # -v, or --help (exits)
    if position == len(argv):
        parser.error(f"give a command: {', '.join(COMMANDS)}")
    if argv[position] not in COMMANDS:
        parser.error(f"invalid command {argv[position]!r} (choose from {', '.join(COMMANDS)})")
    command = COMMANDS[argv[position]]
    restore_logging = _configure_logging(options.verbose)
    try:
        return command.main(argv[position + 1 :])
    except (ValueError, OSError, ImportError) as err:
        if options.verbose:
            logger.exception("jmlr %s failed", command.name)
        print(f"jmlr {command.name}: error: {err}", file=sys.stderr)
        return 2
    finally:
        restore_logging()


def console_main() -> None:
    """Console-script wrapper: exit with :func:`main`'s status."""
    sys.exit(main())
