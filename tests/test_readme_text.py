"""The README tells a new operator what exists and how to try it safely: every
ringctl command and start-child option, the settings an operator meets first, the
etcd-outage trade-off, and examples that do not surprise (tests/test_readme.py runs
the quickstart itself)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from ringctl import main as ctl

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    return README.split(f"\n## {title}", 1)[1].split("\n## ", 1)[0]


def code_lines(text: str) -> list[str]:
    return [line[4:] for line in text.splitlines() if line.startswith("    ")]


def named(word: str) -> bool:
    """Whether the README names a command or option in code (`drain N`, ringctl drain,
    `[--replicas N]`, start-child web --wait)."""
    before = r"(?:`|\[| )" if word.startswith("-") else r"(?:`|ringctl )"
    return re.search(rf"{before}{re.escape(word)}(?![\w-])", README) is not None


def test_every_ringctl_command_is_in_the_readme() -> None:
    ctx = click.Context(ctl.cli, info_name="ringctl")
    commands = [name for name in ctl.cli.list_commands(ctx) if not ctl.cli.commands[name].hidden]
    assert {"drain", "undrain", "forget-node", "watch"} <= set(commands)
    assert [name for name in commands if not named(name)] == []


def test_the_start_child_row_has_its_options() -> None:
    [row] = [line for line in README.splitlines() if line.startswith("| `start-child ")]
    options = [
        name
        for param in ctl.cli.commands["start-child"].params
        if isinstance(param, click.Option)
        for name in param.opts
        if name not in ("--json", "--help", "-h")
    ]
    first_hour = ["--stop-signal", "--stop-timeout", "--replicas", "--on", "--handoff"]
    assert [name for name in first_hour if not re.search(rf"{name}(?![\w-])", row)] == []
    # Every other option in the row too, or at least somewhere in the README's code.
    assert [name for name in options if not named(name)] == []


def test_try_it_serves_on_loopback_at_a_port_one_can_see() -> None:
    [server] = [line for line in code_lines(section("Try it")) if "http.server" in line]
    argv = server.split(" -- ", 1)[1].split()
    assert argv[:3] == ["python3", "-m", "http.server"]
    port = next(word for word in argv[3:] if word.isdigit())
    assert int(port) > 0, "port 0 is a port nobody can see"
    assert "--bind 127.0.0.1" in server, "http.server listens on every interface by default"
    assert f"127.0.0.1:{port}" in section("Try it")


def test_the_quickstart_stops_the_daemons_before_etcd() -> None:
    text = " ".join(section("Quickstart").split())
    stop = re.search(r"Stop it all[^`]*`([^`]+)`", text)
    assert stop is not None, "the quickstart says how to stop it all"
    # etcd is job 1 (started first), the daemons jobs 2 to 4.
    assert stop.group(1) == "kill %2 %3 %4; wait %2 %3 %4; kill %1"
    assert code_lines(section("Quickstart"))[0].startswith(".venv/bin/etcd "), "job 1 is etcd"


def test_settings_an_operator_meets_first_are_mentioned() -> None:
    assert "metrics_address" in README
    assert "--etcd-wait" in README


def test_an_etcd_outage_stopping_every_child_is_said_plainly() -> None:
    readme = " ".join(README.split())
    assert (
        "**An etcd outage longer than the lease TTL stops every child in the cluster, "
        "by design.**" in readme
    )
    assert "at most once beats availability" in readme and "`lease_ttl`" in readme
    page = (ROOT / "man" / "ringd.8").read_text()
    assert (
        '.B "An etcd outage longer than the lease TTL stops every child in the cluster, '
        'by design."' in page
    )
    assert "at most once beats availability" in " ".join(page.split())
