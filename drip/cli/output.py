"""How every `drip` command speaks: results on stdout, problems on stderr, one exit rule.

- exit 0: done;
- exit 1: the command ran and reports problems it found (`drip check`'s list, rows
  an import refused, a pass that stopped early), each on its own line on stderr;
- exit 2: the command could not run: bad usage (typer's message), or a `DripError`
  (drip.errors) shown as one line, `drip: <what to fix>`, never a traceback.
"""

from __future__ import annotations

from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from drip.errors import DripError
from drip.printable import one_line

#: The command ran and found problems.
PROBLEMS = 1
#: The command could not run.
CANNOT_RUN = 2


def console() -> Console:
    """Made per use, so the width (COLUMNS) and stdout are those of the running command."""
    return Console(highlight=False)


def err() -> Console:
    return Console(stderr=True, highlight=False)


#: Narrower than this, a table would fold addresses across lines.
TABLE_WIDTH = 120


def wide(out: Console) -> bool:
    """Whether `out` is a terminal wide enough for a table. Piped, or narrow, each row is
    one line of whole values instead, so `drip logs | grep ADDRESS` finds it."""
    return out.is_terminal and out.width >= TABLE_WIDTH


def print_lines(out: Console, rows: list[list[str]]) -> None:
    """Rows as lines, cells two spaces apart, padded to line up, never cut or wrapped;
    each cell on one line with its control characters spelled out (drip.printable)."""
    rows = [[one_line(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        out.print(Text("  ".join(cells).rstrip()), soft_wrap=True)


def problem(line: str) -> None:
    """One problem the command found, on stderr, as plain text."""
    err().print(line, markup=False, soft_wrap=True)


def fail(message: str) -> NoReturn:
    """Stop: the command cannot run, for the reason given."""
    problem(f"drip: {message}")
    raise typer.Exit(CANNOT_RUN)


class Commands(TyperGroup):
    """drip's command group: a DripError from any command, however deep, is `fail`."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except DripError as exc:
            fail(str(exc))
