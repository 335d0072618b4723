"""The ``ringctl`` click group and what every command shares: the connection to the
daemon (one request, or a stream of events), its errors as exit codes, ``--json``
and ``--wait``.

Every error, ringctl's own and click's usage errors alike, ends ringctl as one
line on stderr: ``ringctl: <message>`` (a usage error adds ``(see ringctl CMD
--help)``), or with ``--json`` one JSON object, ``{"error": {"code": ...,
"message": ...}}``; the exit code is the same either way.

Every command is one request (``ringd.protocol.Client.call``); the daemon validates
and decides, ringctl only builds the arguments and shows the answer. The commands
register on ``cli`` from their family's module (``commands_*.py``, ``completion.py``);
``main.py`` imports them all.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ringd import __version__
from ringd.protocol import Client, RemoteError, Unreachable, default_socket_path

from .format import fatal_json, fatal_line

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNREACHABLE = 4
EXIT_TIMEOUT = 5

# Error codes of the control protocol (ringd.errors) -> exit codes; others -> 1.
EXIT_CODES = {
    "invalid": EXIT_USAGE,
    "not_found": EXIT_NOT_FOUND,
    "timeout": EXIT_TIMEOUT,
}
# The code a --json error names when the daemon gave none (ringctl's own errors).
ERROR_CODES = {
    EXIT_ERROR: "error",
    EXIT_USAGE: "invalid",
    EXIT_NOT_FOUND: "not_found",
    EXIT_UNREACHABLE: "unreachable",
    EXIT_TIMEOUT: "timeout",
}
USAGE_CODE = "usage"  # click's usage errors: an unknown command or option, a missing argument

# How much longer than the daemon's own --wait timeout the socket waits for its reply.
REPLY_MARGIN = 10.0
JSON_KEY = "ringctl.json"
ARGS_KEY = "ringctl.args"  # the command line, for --json when an error came before its callback

F = TypeVar("F", bound="Callable[..., Any]")


class CtlError(click.ClickException):
    """An error that ends ringctl with ``exit_code`` and ``ringctl: <message>`` on stderr
    (with ``--json``: ``{"error": {"code": code, "message": message}}``)."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR, code: str | None = None) -> None:
        super().__init__(message)
        # click declares exit_code on the class but reads it from the instance.
        self.exit_code = exit_code  # type: ignore[misc]
        self.code = code or ERROR_CODES.get(exit_code, "error")
        self.as_json = False  # set by the group, which knows whether --json was given

    def show(self, file: Any = None) -> None:
        if self.as_json:
            fatal_json(self.code, self.format_message())
        else:
            fatal_line(self.format_message())


def usage_error(exc: click.UsageError, ctx: click.Context) -> CtlError:
    """Click's usage error as one line: ``<message> (see ringctl CMD --help)``, exit 2.

    Click prints three (usage, a hint, ``Error: ...``); ringctl's errors are one line
    starting ``ringctl:``, in ringctl's lower case."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    if re.match(r"[A-Z][a-z]", message):
        message = message[0].lower() + message[1:]
    command = (exc.ctx or ctx).command_path
    return CtlError(f"{message} (see {command} --help)", exc.exit_code, USAGE_CODE)


def wants_json(ctx: click.Context) -> bool:
    """--json, also when an error came before its callback ran (an unknown option):
    then as written on the command line, before any ``--`` (a child's own --json)."""
    if ctx.meta.get(JSON_KEY):
        return True
    args = ctx.meta.get(ARGS_KEY) or []
    return "--json" in args[: args.index("--")] if "--" in args else "--json" in args


class RingctlGroup(click.Group):
    """The group, with every error ending ringctl the one way (``CtlError.show``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[ARGS_KEY] = list(args)
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise  # plain `ringctl`: the help, as click shows it
        except click.UsageError as exc:  # a group option: `ringctl --bogus`
            raise self._as_ctl_error(exc, ctx) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.ClickException as exc:
            raise self._as_ctl_error(exc, ctx) from None

    @staticmethod
    def _as_ctl_error(exc: click.ClickException, ctx: click.Context) -> CtlError:
        if isinstance(exc, CtlError):
            error = exc
        elif isinstance(exc, click.UsageError):
            error = usage_error(exc, ctx)
        else:  # another of click's (a file that cannot be opened)
            error = CtlError(" ".join(exc.format_message().split()), exc.exit_code)
        error.as_json = wants_json(ctx)
        return error


pass_client = click.make_pass_decorator(Client)


# -- the connection ------------------------------------------------------------------


@contextlib.contextmanager
def daemon_errors(client: Client) -> Iterator[None]:
    """Daemon and connection errors inside become ``CtlError`` with the documented exit code."""
    try:
        yield
    except RemoteError as exc:
        raise CtlError(exc.message, EXIT_CODES.get(exc.code, EXIT_ERROR), exc.code) from None
    except Unreachable as exc:
        raise CtlError(str(exc), EXIT_UNREACHABLE) from None
    except OSError as exc:  # the connection broke after it was made
        raise CtlError(
            f"lost the connection to ringd at {client.path}: {exc.strerror or exc}",
            EXIT_UNREACHABLE,
        ) from None
    except ValueError as exc:  # a reply line that is not JSON
        raise CtlError(f"bad reply from ringd at {client.path}: {exc}", code="bad_reply") from None


def call(client: Client, op: str, **args: Any) -> Any:
    """One request; daemon errors become ``CtlError`` with the documented exit code."""
    with daemon_errors(client):
        return client.call(op, **args)


def stream_events(client: Client, show: Callable[[Any], None], op: str, **args: Any) -> None:
    """Show every event of a streaming op until the daemon closes it or Ctrl-C."""
    client.timeout = None  # a quiet stream may say nothing for hours
    try:
        with contextlib.closing(client.stream(op, **args)) as replies:
            while True:
                # Only the daemon's side maps to daemon errors: a closed stdout is not one.
                with daemon_errors(client):
                    reply = next(replies, None)
                if reply is None:
                    return
                show(reply.get("event"))
    except KeyboardInterrupt:
        return
    except BrokenPipeError:  # e.g. `ringctl logs -f web | head`
        # Python would report the failed flush of stdout at exit: point it at /dev/null.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# -- --json and --wait ---------------------------------------------------------------


def _set_json(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[JSON_KEY] = True


def json_option(func: F) -> F:
    """``--json`` on the group and on every command (either place works)."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_json,
        help="Print the raw result as JSON.",
    )(func)


def as_json() -> bool:
    """Whether --json was given (on the group or on the command)."""
    return bool(click.get_current_context().meta.get(JSON_KEY))


def emit(result: Any, render: Callable[[Any], None]) -> None:
    """Print ``result`` as JSON when asked, else hand it to ``render`` for people."""
    if as_json():
        click.echo(json.dumps(result, indent=2))
    else:
        render(result)


def wait_options(what: str, default: float = 30.0) -> Callable[[F], F]:
    """``--wait`` (return only once ``what``) and its ``--timeout``, for commands that
    change state."""

    def decorate(func: F) -> F:
        func = click.option(
            "--timeout",
            type=float,
            default=default,
            show_default=True,
            metavar="S",
            help="How long --wait waits.",
        )(func)
        return click.option("--wait", is_flag=True, help=f"Return only once {what}.")(func)

    return decorate


def allow_wait(client: Client, wait: bool, timeout: float) -> None:
    """Keep the socket open a little longer than the daemon will wait."""
    if wait:
        client.timeout = max(client.timeout or 0, timeout + REPLY_MARGIN)


# -- the group -----------------------------------------------------------------------


@click.group(
    "ringctl",  # its usage and errors say ringctl however it is invoked (tests: CliRunner)
    cls=RingctlGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--socket",
    "socket_path",
    envvar="RINGD_SOCKET",
    default=default_socket_path,
    show_default="$RINGD_SOCKET or the per-user/system default",
    metavar="PATH",
    help="The ringd control socket.",
)
@json_option
@click.version_option(__version__, prog_name="ringctl", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, socket_path: str) -> None:
    """Control ringd, the distributed process supervisor.

    Talks to the local ringd over its control socket; the daemon does the work
    and owns the cluster state. --json prints the raw result for scripts.
    Into a pipe or a file, tables are tab-separated lines (a header, then one
    line per row). An error is one line on stderr, "ringctl: MESSAGE", or with
    --json {"error": {"code": CODE, "message": MESSAGE}}.

    \b
    Exit codes:
      0  ok
      1  error, or the daemon refused (refused, exists, internal, ...)
      2  usage error, or an invalid spec or argument (invalid)
      3  not found (not_found)
      4  ringd unreachable (no daemon on the socket)
      5  timed out (timeout, e.g. --wait)
    """
    ctx.obj = Client(socket_path)
