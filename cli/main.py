"""ringctl: the operator's command line, a thin client of the ringd control socket.

The group and what the commands share are in ``app.py``, how they print in
``format.py``; each family of commands registers itself on the group when its
module is imported, which this module does.
"""

from __future__ import annotations

from . import (  # noqa: F401 - imported for their commands
    commands_children,
    commands_groups,
    commands_nodes,
    commands_specs,
    commands_streams,
    commands_summary,
    completion,
)
from .app import cli

__all__ = ["cli", "main"]


def main() -> None:
    cli(prog_name="ringctl")


if __name__ == "__main__":
    main()
