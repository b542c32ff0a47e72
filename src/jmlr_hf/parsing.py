"""One parser for config files and flags: :class:`JMLRParser`, TRL's ``TrlParser`` with stricter config values.

``TrlParser`` (an ``HfArgumentParser``: one ``--flag`` per dataclass field, ``Literal`` fields as choices)
reads a YAML ``--config`` and lets flags override it, but puts the YAML values in as they are:
``num_context_docs: 2.5`` or ``max_steps: [1, 2]`` would reach the trainer. :class:`JMLRParser` parses every
config value as the flag would be parsed (type, choices, one value or a list) and names the file and the key
when one is wrong, before anything loads; an unknown key or flag gets the closest known one as a hint. A list
option takes ``--name a b`` or ``--name a --name b``. Both spellings of a flag work (``--max_steps``,
``--max-steps``), as do the aliases a field declares (``--torch_dtype`` for ``dtype``).

Examples:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Options:
    ...     max_steps: int = 10
    ...     corpus: list[str] | None = None
    >>> JMLRParser(Options).parse_args_and_config(["--max-steps", "3", "--corpus", "a", "--corpus", "b"])
    (Options(max_steps=3, corpus=['a', 'b']),)
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from trl import TrlParser

__all__ = ["HelpFormatter", "JMLRParser", "UnknownArgumentsError", "read_config"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` only where there is a default worth showing; each line of a description or
    epilog is wrapped on its own (so they keep their paragraphs)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(
            super(HelpFormatter, self)._fill_text(line, width, indent) for line in text.splitlines()
        )

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class UnknownArgumentsError(ValueError):
    """Command-line arguments that are no option of the parser (the message names the closest one)."""


class _ListAction(argparse.Action):
    """``--name a b`` and ``--name a --name b`` both give ``[a, b]``; the first use replaces the default."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        current = getattr(namespace, self.dest, None)
        fresh = current is None or current is self.default
        setattr(namespace, self.dest, [*([] if fresh else current), *values])


def read_config(config_file: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config into ``{key: value}``; errors name the file."""
    import yaml

    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: invalid YAML ({err})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a mapping of option: value, got {type(data).__name__}")
    return {str(key): value for key, value in data.items()}


def _pop_config(args: list[str], config_file: str | os.PathLike | None) -> tuple[list[str], Any]:
    """``args`` without ``--config FILE`` / ``--config=FILE``, and the file (the flag wins over ``config_file``)."""
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            return args[:i] + args[i + 2 :], args[i + 1]
        if arg.startswith("--config="):
            return args[:i] + args[i + 1 :], arg.split("=", 1)[1]
    return args, config_file


def _type_name(action: argparse.Action) -> str:
    name = "choice" if action.choices is not None else getattr(action.type, "__name__", "value")
    return "bool" if name == "string_to_bool" else name


def _convert(action: argparse.Action, value: Any) -> Any:
    """One config value through the flag's own conversion and choices."""
    if isinstance(value, (list, dict)):
        raise ValueError(f"expected one {_type_name(action)} value, got {value!r}")
    hint = "; YAML reads unquoted yes/no/on/off as booleans: quote it" if isinstance(value, bool) else ""
    converted = value
    if action.type is not None and not (isinstance(value, bool) and action.type.__name__ == "string_to_bool"):
        try:
            converted = action.type(value if isinstance(value, str) else str(value))
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise ValueError(f"invalid {_type_name(action)} value {value!r}{hint}") from None
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"{value!r} is not one of {', '.join(map(str, action.choices))}{hint}")
    return converted


def _typed_value(action: argparse.Action, value: Any) -> Any:
    """A config value parsed as the flag's arguments would be: its type, its choices, one value or a list."""
    if value is None and action.default is None:
        return None
    if action.type in (None, str) and isinstance(value, (list, dict)):
        return value  # TrainingArguments' str | list | dict fields (report_to, fsdp_config, ...) take these
    if action.nargs in ("+", "*"):
        return [_convert(action, item) for item in (value if isinstance(value, list) else [value])]
    return _convert(action, "null" if value is None else value)


class JMLRParser(TrlParser):
    """TRL's parser (``HfArgumentParser`` + a YAML ``--config`` that flags override), strict about config values.

    Args:
        dataclass_types: the arguments dataclasses (``TrlParser`` reserves the field name ``config``).
        **kwargs: ``argparse.ArgumentParser`` options (``prog``, ``description``, ``epilog``, ...).
    """

    def __init__(self, dataclass_types: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(dataclass_types, **kwargs)
        self.add_argument(
            "--config",
            metavar="YAML",
            default=argparse.SUPPRESS,
            help="YAML file of option: value; flags win",
        )

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        """``argparse``'s, with list options (``nargs="+"``) that may also be repeated."""
        if kwargs.get("nargs") == "+" and "action" not in kwargs:
            kwargs["action"] = _ListAction
        return super().add_argument(*args, **kwargs)

    def _keyed_actions(self) -> dict[str, argparse.Action]:
        """Each option's name as a config key (every spelling and alias) -> its action."""
        return {
            option.lstrip("-").replace("-", "_"): action
            for action in self._actions
            if f"--{action.dest}" in action.option_strings and action.dest != "config"
            for option in action.option_strings
            if option.startswith("--")
        }

    def set_defaults_with_config(self, **values: Any) -> list[str]:
        """Make config values the defaults, each parsed like its flag; ``ValueError`` names a bad or unknown key."""
        actions, typed = self._keyed_actions(), {}
        for key, value in values.items():
            action = actions.get(key.replace("-", "_"))
            if action is None:
                close = difflib.get_close_matches(key, list(actions), n=1)
                names = ", ".join(t.__name__ for t in self.dataclass_types)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown key {key!r} (not an option of {names}){hint}")
            if action.dest in typed:
                raise ValueError(f"{key!r} is given twice (as {action.dest!r} and an alias)")
            try:
                typed[action.dest] = _typed_value(action, value)
            except ValueError as err:
                raise ValueError(f"{key}: {err}") from None
        return super().set_defaults_with_config(**typed)

    def unknown_arguments_message(self, remaining: Sequence[str]) -> str:
        """``unknown command-line argument(s) ...; did you mean --closest?``"""
        flags = [a.split("=")[0] for a in remaining if a.startswith("--")]
        known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        close = difflib.get_close_matches(flags[0], known, n=1) if flags else []
        hint = f"; did you mean {close[0]}?" if close else ""
        return f"unknown command-line argument(s) {' '.join(remaining)}{hint}"

    def parse_args_into_dataclasses(self, args: Iterable[str] | None = None, *rest: Any, **kwargs: Any):
        """``HfArgumentParser``'s, without reading a ``<script>.args`` file beside the program."""
        kwargs.setdefault("look_for_args_file", False)
        return super().parse_args_into_dataclasses(args, *rest, **kwargs)

    def parse_args_and_config(
        self,
        args: Iterable[str] | None = None,
        return_remaining_strings: bool = False,
        fail_with_unknown_args: bool = True,
        config_file: str | os.PathLike | None = None,
    ) -> tuple[Any, ...]:
        """Parse a YAML config (``--config FILE`` in ``args``, else ``config_file``) overridden by ``args``.

        The config's ``env:`` mapping sets environment variables (as ``TrlParser``'s does). Errors in the
        config (unknown key, a value its flag would refuse) and in the dataclasses' own checks raise
        ``ValueError`` naming the file; unknown flags raise :class:`UnknownArgumentsError` (a ``ValueError``)
        naming the closest known one, before the dataclasses are built, unless ``return_remaining_strings``
        (then they are returned last).
        """
        args, config_file = _pop_config(list(sys.argv[1:] if args is None else args), config_file)
        where = f" (config {config_file})" if config_file is not None else ""
        if config_file is not None:
            values = read_config(config_file)
            env = values.pop("env", None) or {}
            if not isinstance(env, dict):
                raise ValueError(f"{config_file}: env must be a mapping of VARIABLE: value")
            os.environ.update({str(name): str(value) for name, value in env.items()})
            try:
                self.set_defaults_with_config(**values)
            except ValueError as err:
                raise ValueError(f"{config_file}: {err}") from None
        if fail_with_unknown_args and not return_remaining_strings:
            remaining = self.parse_known_args(args)[1]  # before the dataclasses' checks: a typo explains them
            if remaining:
                raise UnknownArgumentsError(self.unknown_arguments_message(remaining))
        try:
            *outputs, remaining = self.parse_args_into_dataclasses(args, return_remaining_strings=True)
        except ValueError as err:
            raise ValueError(f"{err}{where}") from err
        return (*outputs, remaining) if return_remaining_strings else tuple(outputs)
