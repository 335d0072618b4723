"""How ringctl prints: the consoles, the value formatters every command shares, and
the one palette of states (``STATE_STYLES``) that the commands and the live view of
``watch`` (``live.py``) both colour by.

Printing goes through the functions here, which look ``console`` and ``err_console``
up when they run: replacing them here (the tests do) redirects all of ringctl.

When stdout is not a terminal (a pipe, a file) nothing is laid out for a page:
a table is its header line and one line per row, the cells separated by a tab,
with no padding, wrapping or cropping (``ringctl which-children | grep web``
shows the whole row), and a line of text is never wrapped.
"""

from __future__ import annotations

import json
import signal
import time
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

# Results for people (and --json for programs) go to stdout, errors to stderr.
# Colour only on a terminal: rich's default.
console = Console()
err_console = Console(stderr=True)


# -- values --------------------------------------------------------------------------


def human_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def uptime(started: float | None) -> str:
    if started is None:
        return "-"
    return human_duration(time.time() - started)


def since(rfc3339: str | None) -> str:
    """``2024-05-01T12:00:00Z (42s ago)``; the raw text when it does not parse."""
    if not rfc3339:
        return "-"
    try:
        when = datetime.fromisoformat(rfc3339).timestamp()
    except ValueError:
        return rfc3339
    return f"{rfc3339} ({human_duration(time.time() - when)} ago)"


def ago(unix: float | None) -> str:
    """``42s ago`` from a unix time."""
    if not isinstance(unix, int | float):
        return "-"
    return f"{human_duration(time.time() - unix)} ago"


def human_bytes(size: Any) -> str:
    """``12.3M`` (powers of 1024, as ps and top count); ``-`` when unknown."""
    if not isinstance(size, int | float) or isinstance(size, bool):
        return "-"
    if size < 1024:
        return f"{int(size)}B"
    for unit in "KMGT":
        size /= 1024
        if size < 1024 or unit == "T":
            break
    return f"{size:.1f}{unit}"


def percent(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    return f"{value:.1f}%"


def signal_name(number: Any, given: str) -> str:
    """``SIGHUP`` for the number the daemon sent; what the user typed if it is not one."""
    try:
        return signal.Signals(number).name
    except (ValueError, TypeError):
        return given


def dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def number(value: Any) -> str:
    """``5`` for 5.0, ``0.5`` for 0.5."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:g}"
    return dash(value)


def now_rfc3339() -> str:
    """Now in RFC 3339, UTC, to the millisecond (``2024-05-01T12:00:00.123Z``), as the
    daemon writes times."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- states --------------------------------------------------------------------------

# The colour of a child's, group's or node's state, wherever ringctl shows one.
STATE_STYLES = {
    "running": "green",
    "online": "green",
    "pending": "yellow",
    "starting": "yellow",
    "backoff": "yellow",
    "restarting": "yellow",
    "stopping": "yellow",
    "stopped": "dim",
    "released": "dim",  # a watch event: the claim is gone, the child on its way elsewhere
    "failed": "red",
    "invalid": "red",
    "offline": "red",
    "fenced": "red",
}
# A state ringctl does not know (or none) stands out.
UNKNOWN_STATE_STYLE = "red"


def state_text(state: str | None) -> Text:
    return Text(dash(state), style=STATE_STYLES.get(state or "", UNKNOWN_STATE_STYLE))


# -- printing ------------------------------------------------------------------------


def on_terminal() -> bool:
    """Whether stdout is a terminal (rich's view of it)."""
    return console.is_terminal


def _raw_line(to: Console, line: str) -> None:
    """``line`` exactly as given (rich would expand its tabs), then a newline."""
    to.file.write(line + "\n")
    to.file.flush()


def _cell(value: Any) -> str:
    """A cell as the plain text a table shows (a ``str`` cell is markup, as in rich),
    on one line and without tabs: one row stays one line of tab-separated fields."""
    if isinstance(value, Text):
        text = value.plain
    elif isinstance(value, str):
        text = console.render_str(value, highlight=False).plain
    else:
        text = dash(value)
    return " ".join(text.split()) if any(c in text for c in "\t\n\r\v\f") else text


def one_line(line: str) -> None:
    """One line of rich markup (callers escape what they did not write)."""
    console.print(line, highlight=False, soft_wrap=not console.is_terminal)


def text_line(text: str) -> None:
    """One line as written (not markup), soft-wrapped: one line per event in a pipe."""
    console.print(escape(text), highlight=False, soft_wrap=True)


def dim_line(text: str) -> None:
    """A line that says there is nothing to show (``no children``)."""
    console.print(text, style="dim", soft_wrap=not console.is_terminal)


def warn_line(text: str) -> None:
    console.print(text, style="yellow", soft_wrap=not console.is_terminal)


def error_line(line: str) -> None:
    """One line of rich markup on stderr."""
    err_console.print(line, highlight=False, soft_wrap=not err_console.is_terminal)


def warning_line(message: str) -> None:
    """``ringctl: warning: <message>`` in yellow on stderr (the command still succeeded)."""
    err_console.print(
        Text(f"ringctl: warning: {message}", style="yellow"), soft_wrap=True, highlight=False
    )


def fatal_line(message: str) -> None:
    """``ringctl: <message>`` in red on stderr, as written (not markup)."""
    err_console.print(Text(f"ringctl: {message}", style="red"), soft_wrap=True, highlight=False)


def fatal_json(code: str, message: str) -> None:
    """The error of a ``--json`` command on stderr, one line:
    ``{"error": {"code": ..., "message": ...}}``, as the daemon's replies carry it."""
    _raw_line(err_console, json.dumps({"error": {"code": code, "message": message}}))


def show(renderable: Any) -> None:
    """A table (or any rich renderable) on stdout; a table into a pipe or a file is
    tab-separated lines (its header, then one line per row)."""
    if isinstance(renderable, Table) and not console.is_terminal:
        columns = renderable.columns
        _raw_line(console, "\t".join(_cell(column.header) for column in columns))
        for row in zip(*(column.cells for column in columns), strict=True):
            _raw_line(console, "\t".join(_cell(cell) for cell in row))
        return
    console.print(renderable)


def live_display(renderable: Any) -> Live:
    """A display on stdout that each ``update(..., refresh=True)`` redraws in place."""
    return Live(renderable, console=console, auto_refresh=False)


def key_values(pairs: list[tuple[str, Any]]) -> None:
    """``key  value`` lines, aligned; ``key<TAB>value`` into a pipe or a file."""
    if not console.is_terminal:
        for key, value in pairs:
            _raw_line(console, f"{_cell(key)}\t{_cell(Text(dash(value)))}")
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in pairs:
        grid.add_row(key, Text(dash(value)))
    console.print(grid)


def listing(*columns: str, right: tuple[str, ...] = ()) -> Table:
    """A borderless table with bold headers; the ``right`` columns right-justified.
    Narrow terminals fold cells rather than crop them: nothing is lost (and ``show``
    prints it unlaid-out into a pipe)."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in columns:
        table.add_column(name, overflow="fold", justify="right" if name in right else "left")
    return table
