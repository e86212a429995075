"""One command-line style for every `bwarea` command: options declared once in the dataclass that uses them,
parsed by jsonargparse, list options written the same way everywhere, and one error policy.

    parser = dataclass_parser("bwarea evaluate", EvaluationConfig)
    config = parse_dataclass(parser, EvaluationConfig, argv)

    @command("bwarea evaluate")
    def main(argv=None) -> int: ...

List options take either form everywhere: space-separated values (`--suite a b`, `--seeds 0 1`, `--actions 5`)
or one YAML/JSON list (`--suite '[a, b]'`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser

import configs
from common.errors import OptionError, option_error_message, report_errors


def new_parser(prog: str, description: str, config: bool = True) -> ArgumentParser:
    """A parser with the common settings: no environment variables, no abbreviations, errors raised (not printed),
    and (with `config`) a --config option reading any of its options from a YAML file."""
    parser = ArgumentParser(prog=prog, description=description, default_env=False, exit_on_error=False,
                            allow_abbrev=False)
    if config:
        parser.add_argument("--config", action=ActionConfigFile, help="A YAML file with any of the options below.")
    return parser


def dataclass_parser(prog: str, config_class: type, description: str | None = None) -> ArgumentParser:
    """A parser whose options are the fields of `config_class`, with the help text of its docstring's Args."""
    doc = (config_class.__doc__ or "").strip().split("\n\n")[0]
    parser = new_parser(prog, description or doc)
    parser.add_class_arguments(config_class, as_group=False)
    return parser


def _list_element(hint: Any) -> Any | None:
    """The element type of a list-typed option (list[str] -> str; list[int] | None -> int), else None."""
    if typing.get_origin(hint) is list:
        return (typing.get_args(hint) or (str,))[0]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):   # list[X] | None, but not str | list[str]
        members = [option for option in typing.get_args(hint) if option is not type(None)]
        if len(members) == 1 and typing.get_origin(members[0]) is list:
            return (typing.get_args(members[0]) or (str,))[0]
    return None


def list_options(parser: ArgumentParser) -> dict[str, Any]:
    """{option string: element type} of the parser's list-typed options (its subcommands' included)."""
    found = {}
    for action in parser._actions:
        if isinstance(getattr(action, "choices", None), dict):   # subcommands: {name: parser}
            for sub in action.choices.values():
                if isinstance(sub, ArgumentParser):
                    found.update(list_options(sub))
        # jsonargparse keeps an option's type only in this attribute (no public accessor); test_cli.py checks
        # every list form, so a jsonargparse release that renames it fails there, not in users' hands
        element = _list_element(getattr(action, "_typehint", None))
        if element is not None:
            found.update({option: element for option in action.option_strings if not option.endswith("+")})
    return found


def gather_lists(argv: Sequence[str], lists: dict[str, Any]) -> list[str]:
    """`--suite a b` -> `--suite ["a", "b"]` (and `--suite=a` -> `--suite ["a"]`) for the list options in `lists`;
    a value that is already a list (`--suite '[a, b]'`) is left alone."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        option, equals, value = token.partition("=")
        if equals and option in lists and not value.lstrip().startswith("["):   # --suite=a: a list of one
            out += [option, "[" + (json.dumps(value) if lists[option] is str else value) + "]"]
            i += 1
            continue
        out.append(token)
        i += 1
        if token not in lists:
            continue
        values = []
        while i < len(argv) and not argv[i].startswith("--"):
            values.append(argv[i])
            i += 1
        if len(values) == 1 and values[0].lstrip().startswith("["):
            out.append(values[0])
        elif values:
            element = lists[token]
            items = [json.dumps(v) if element is str else v for v in values]
            out.append("[" + ", ".join(items) + "]")
    return out


def _option_names(parser: ArgumentParser) -> set[str]:
    names = set()
    for action in parser._actions:
        names.update(o for o in action.option_strings if o.startswith("--") and not o.endswith("+"))
        if isinstance(getattr(action, "choices", None), dict):
            for sub in action.choices.values():
                if isinstance(sub, ArgumentParser):
                    names |= _option_names(sub)
    return names


def one_line(error: BaseException, parser: ArgumentParser, argv: Sequence[str] = ()) -> str:
    """A parser error as one sentence, with the closest names for an unknown option or subcommand."""
    message = option_error_message(error, tuple(argv))
    known = sorted(_option_names(parser))
    candidates: list[tuple[str, list[str]]] = [(word.split("=")[0], known) for word in message.replace(",", " ").split()
                                               if word.startswith("--") and word not in known]
    choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if choice:
        candidates.append((choice.group(1), re.findall(r"'([^']*)'", choice.group(2))))
    for word, names in candidates:
        close = difflib.get_close_matches(word, names, n=3, cutoff=0.6)
        if close:
            return f"{message}; did you mean {' or '.join(close)}? (--help lists all options)"
    return f"{message} (--help lists all options)"


def with_bundled_configs(argv: Sequence[str] | None, kind: str) -> list[str]:
    """`--config micro` -> `--config <the bundled configs/<kind>/micro.yaml>` when no file `micro` exists, so the
    bundled configs work by name from any directory, installed or not."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, token in enumerate(argv[:-1]):
        if token == "--config" and not Path(argv[i + 1]).expanduser().exists():
            found = configs.bundled(kind, argv[i + 1])
            if found is not None:
                argv[i + 1] = str(found)
    return argv


def parse_options(parser: ArgumentParser, argv: Sequence[str] | None, configs_kind: str | None = None) -> Any:
    """Parse `argv` (sys.argv[1:] when None; `--config NAME` may name a bundled config of `configs_kind`); a bad
    option raises OptionError with one sentence."""
    argv = with_bundled_configs(argv, configs_kind) if configs_kind else list(sys.argv[1:] if argv is None else argv)
    try:
        return parser.parse_args(gather_lists(argv, list_options(parser)))
    except argparse.ArgumentError as error:
        raise OptionError(one_line(error, parser, argv)) from None


def parse_dataclass(parser: ArgumentParser, config_class: type, argv: Sequence[str] | None,
                    configs_kind: str | None = None) -> Any:
    """An instance of `config_class` from the command line (its __post_init__ checks the values)."""
    args = parse_options(parser, argv, configs_kind)
    values = {f.name: args[f.name] for f in dataclasses.fields(config_class) if f.name in args}
    return config_class(**{key: value.as_dict() if hasattr(value, "as_dict") else value for key, value in values.items()})


def command(prog: str) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """Give a command's `main(argv) -> int` the one error policy of every command (common.errors.report_errors):
    bad input prints "<prog>: <one sentence>" and exits 2, without a traceback."""

    def decorate(main: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapped(argv: Sequence[str] | None = None) -> int:
            return report_errors(prog, lambda: main(argv))
        return wrapped

    return decorate
