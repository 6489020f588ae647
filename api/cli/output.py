"""What the CLI prints: JSON, rich tables, messages, and errors with their exit codes.

Exit codes: 0 ok · 1 the server said no (4xx) or a local problem · 2 usage ·
3 the server could not be reached · 4 the server failed (5xx).
Results go to stdout; messages meant for a person (errors, warnings, hints) to stderr,
so `--json` output can always be piped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_SERVER = 4


class CliError(Exception):
    """A problem to report in one sentence (no traceback) and exit with `exit_code`."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageProblem(CliError):
    exit_code = EXIT_USAGE


class ConnectionProblem(CliError):
    exit_code = EXIT_CONNECTION


class ApiError(CliError):
    """An error response: the server's `detail` (and `field`) is the message."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: str = "",
        field: str | None = None,
        body: Any = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(detail, hint=hint)
        self.status = status
        self.code = code
        self.field = field
        self.body = body
        self.exit_code = EXIT_SERVER if status >= 500 else EXIT_ERROR


# Values people copy (ids, slugs) are never wrapped; names and descriptions wrap instead.
NO_WRAP = frozenset({"ID", "USER ID", "SLUG"})
PIPE_WIDTH = 200


# Consoles are made per call: the test runner swaps sys.stdout/stderr between calls.
# Messages use soft wrap (the terminal wraps them, so a link or token copied from the
# screen has no inserted newline).
def _out(*, soft_wrap: bool = True) -> Console:
    console = Console(highlight=False, soft_wrap=soft_wrap)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Piped into a file or a pager: rich's 80-column default would fold tables.
        console = Console(highlight=False, soft_wrap=soft_wrap, width=PIPE_WIDTH)
    return console


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    """Raw JSON on stdout, no colour or wrapping, so it parses."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def printed_as_json(data: Any, json_: bool) -> bool:
    """With `--json`, print `data` as JSON and say so (the caller then prints nothing)."""
    if json_:
        print_json(data)
    return json_


def say(message: str) -> None:
    """A result for a person, on stdout (plain text: no rich markup from server data)."""
    _out().print(Text(message))


def note(message: str) -> None:
    """A hint or warning on stderr."""
    _err().print(Text(message, style="yellow"))


def secret(label: str, value: str, warning: str) -> None:
    """A secret shown once (tokens, invitation codes): on stdout, with a warning on stderr."""
    _out().print(Text(f"{label}: ") + Text(value, style="bold"))
    note(warning)


def print_error(error: CliError) -> None:
    text = Text("Error: ", style="bold red") + Text(error.message)
    if isinstance(error, ApiError) and error.field:
        text += Text(f" (field: {error.field})")
    console = _err()
    console.print(text)
    if error.hint:
        console.print(Text(error.hint, style="dim"))


def table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    title: str | None = None,
    empty: str = "Nothing to show.",
) -> None:
    rows = [list(r) for r in rows]
    if not rows:
        say(empty)
        return
    # Borderless like kubectl/gh: more room for values on an 80-column terminal.
    t = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0)
    )
    for name in columns:
        # Fold instead of "…" where text must wrap: a value cut short is useless.
        t.add_column(name, overflow="fold", no_wrap=name in NO_WRAP)
    for row in rows:
        t.add_row(*(_cell(v) for v in row))
    _out(soft_wrap=False).print(t)


def _cell(value: Any) -> Text:
    if value is None or value == "":
        return Text("-", style="dim")
    if isinstance(value, Text):
        return value
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    return Text(str(value))  # Text, not a str: server data is never read as markup


def when(value: Any, *, minutes: bool = True) -> str:
    """An ISO timestamp from the API as 'YYYY-MM-DD HH:MM' UTC ('' when absent)."""
    if not value:
        return ""
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%d %H:%M" if minutes else "%Y-%m-%d")
