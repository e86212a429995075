"""The one base class of errors caused by the user's input, and how every command reports them."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

EXIT_INTERRUPTED = 130


class UserError(Exception):
    """Bad input (an option, a file, a directory) the user can fix: every `bwarea` command prints its message as
    one line and exits with `exit_code` (2), without a traceback. Subclasses also derive from the built-in class
    that fits (ValueError, FileNotFoundError, ...) so library callers can catch them as such."""

    exit_code = 2


class OptionError(UserError, ValueError):
    """A command-line option that cannot be parsed."""


def describe_error(error: BaseException) -> str:
    """One line: the error's type, message and the file:line it was raised at."""
    frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    where = f" ({frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})" if frame else ""
    return f"{type(error).__name__}: {error}{where}"


class InvalidInput(UserError, ValueError):
    """A value given by the user (an option, a config entry, a name) that is not valid."""


class MissingInput(UserError, FileNotFoundError):
    """A file or directory the user named that does not exist or lacks what it should hold."""


class OutputExists(UserError, FileExistsError):
    """An output that exists already and would be overwritten without the user's consent."""


def option_error_message(error: BaseException, argv: list[str] | tuple[str, ...] = ()) -> str:
    """A parser's error as one line; a YAML error in a --config file names that file (jsonargparse says
    "<unicode string>")."""
    message = " ".join(str(error).split())
    files = [argv[i + 1] for i, token in enumerate(argv[:-1]) if token == "--config"]
    if files and "<unicode string>" in message:
        message = message.replace('"<unicode string>"', files[-1]).replace("<unicode string>", files[-1])
    return message


def report_errors(prog: str, body: Callable[[], int | None]) -> int:
    """The one error policy of every `bwarea` command: run `body` and return its exit status; a UserError prints
    "<prog>: <message>" on one line and returns its exit_code (2: bad input), --help exits 0 through argparse,
    Ctrl-C returns 130. Any other exception is a bug and keeps its traceback."""
    try:
        return int(body() or 0)
    except UserError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return error.exit_code
    except SystemExit as stop:   # --help, --print_config
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
