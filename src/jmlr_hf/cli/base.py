"""A ``jmlr`` subcommand (TRL's ``trl/cli`` habit): its arguments dataclass, help texts and run function.

Every command parses its arguments with :class:`~jmlr_hf.parsing.JMLRParser`, so all of them take
``--config FILE.yaml`` and both flag spellings. Building a command's parser imports no torch and no
transformers (the run functions import them), so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..parsing import JMLRParser, UnknownArgumentsError

__all__ = ["Command", "TrainCommand"]


@dataclass(frozen=True)
class Command:
    """One subcommand of ``jmlr``.

    Args:
        name: the subcommand (``jmlr NAME``).
        help: one line for ``jmlr --help``.
        description: the text atop ``jmlr NAME --help``.
        arguments: the arguments dataclass(es) its parser fills.
        run: called with the parsed arguments (one dataclass, or a tuple when there are several); returns
            the exit status.
        epilog: text after the options in ``--help``.
        positional: a field that may also be given as a bare argument (``jmlr ask "QUESTION"``).
    """

    name: str
    help: str
    description: str
    arguments: tuple[type, ...]
    run: Callable[[Any], int]
    epilog: str | None = None
    positional: str | None = None

    def _parser_options(self) -> dict[str, Any]:
        return {"dataclass_types": self.arguments, "description": self.description, "epilog": self.epilog}

    def _configure(self, parser: JMLRParser) -> JMLRParser:
        if self.positional:
            parser.add_argument(
                f"_{self.positional}",
                nargs="?",
                default=argparse.SUPPRESS,
                metavar=self.positional.upper(),
                help=f"the {self.positional} (or --{self.positional})",
            )
        return parser

    def parser(self) -> JMLRParser:
        """The parser of ``jmlr NAME``."""
        return self._configure(JMLRParser(prog=f"jmlr {self.name}", **self._parser_options()))

    def register(self, subparsers: Any) -> None:
        """Add this command to ``jmlr``'s subparsers (``add_subparsers(parser_class=JMLRParser)``)."""
        self._configure(subparsers.add_parser(self.name, help=self.help, **self._parser_options()))

    def parse(self, argv: Sequence[str], parser: JMLRParser | None = None) -> Any:
        """The arguments of ``jmlr NAME ARGV...`` (by ``parser``, default :meth:`parser`); an unknown flag
        is a usage error (exit status 2)."""
        parser = parser or self.parser()
        try:
            outputs = list(parser.parse_args_and_config(list(argv)))
        except UnknownArgumentsError as err:
            parser.error(str(err))
        if outputs and isinstance(outputs[-1], argparse.Namespace):
            self._take_positional(outputs[0], outputs.pop())
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def _take_positional(self, args: Any, extra: argparse.Namespace) -> None:
        value = getattr(extra, f"_{self.positional}")
        if getattr(args, self.positional) is not None:
            raise ValueError(f"give the {self.positional} once: as the first argument or --{self.positional}")
        setattr(args, self.positional, value)

    def main(self, argv: Sequence[str]) -> int:
        """Parse ``argv`` and run; progress bars off with ``--quiet``."""
        from .loading import progress_bars

        args = self.parse(argv)
        with progress_bars(not getattr(args, "quiet", False)):
            return self.run(args)


@dataclass(frozen=True)
class TrainCommand(Command):
    """``jmlr train``: ``--help`` lists the recipe's own options quickly (without importing transformers),
    ``--help-all`` every ``TrainingArguments`` one too; parsing uses them all."""

    full_parser: Callable[[str], JMLRParser] | None = None

    def _configure(self, parser: JMLRParser) -> JMLRParser:
        parser.add_argument(
            "--help-all",
            action="store_true",
            default=argparse.SUPPRESS,
            help="list every option (also JMLRTrainingArguments / TrainingArguments), then exit",
        )
        return parser

    def parser(self, full: bool = False) -> JMLRParser:
        """The short parser (``--help``), or with ``full`` the one over every option."""
        if not full:
            return super().parser()
        return self._configure(self.full_parser(f"jmlr {self.name}"))

    def main(self, argv: Sequence[str]) -> int:
        """``--help-all``: print every option and return 0; ``--help``: the short help; else parse and train."""
        if "--help-all" in argv:
            print(self.parser(full=True).format_help())
            return 0
        self.parser().parse_known_args(list(argv))  # -h / --help: the short help, then exit
        return self.run(self.parse(argv, self.parser(full=True)))
