"""The man pages stay true and lint clean.

Truth is checked against the code, not against a list kept in this file: the
ringctl commands and options are walked from the click group, the ringd flags
from its argparse parser, the configuration keys and defaults from
``ringd.config.Config``. A command added to ringctl fails here until ringctl(1)
documents it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import msgspec
import pytest

import ringd
from ringctl import app
from ringctl import main as ctl
from ringd import __main__ as ringd_main
from ringd.config import Config
from ringd.protocol import ENV_SOCKET

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator

MAN = Path(__file__).parent.parent / "man"
PAGES = {"ringd.8": "RINGD", "ringctl.1": "RINGCTL", "ringd.toml.5": "RINGD.TOML"}
SECTIONS = {
    "ringctl.1": ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "EXIT STATUS",
                  "ENVIRONMENT", "FILES", "SEE ALSO"],
    "ringd.8": ["NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "OPTIONS", "EXIT STATUS",
                "ENVIRONMENT", "FILES", "SEE ALSO"],
    "ringd.toml.5": ["NAME", "SYNOPSIS", "DESCRIPTION", "KEYS", "ENVIRONMENT", "FILES",
                     "SEE ALSO"],
}  # fmt: skip

# -- a little roff reading ------------------------------------------------------------

# Macros of man(7) that these pages may use: the classic set that man-db, groff
# and mandoc all render the same, plus EX/EE and TQ (groff 1.18+, mandoc 1.14).
ALLOWED_MACROS = {
    "TH", "SH", "SS", "PP", "LP", "P", "TP", "TQ", "IP", "RS", "RE",
    "B", "I", "SM", "SB", "BR", "RB", "IR", "RI", "BI", "IB",
    "EX", "EE", "nf", "fi", "br", "sp", "UR", "UE", "MT", "ME",
}  # fmt: skip
ESCAPE = re.compile(r"""\\(?:[-&e|^~0c ]|f[BIRP]|\(..|\*\(..|\[[^]\s]+\]|")""")
SPECIAL = {
    "\\(em": "\u2014",
    "\\(en": "\u2013",
    "\\(lq": '"',
    "\\(rq": '"',
    "\\(dq": '"',
    "\\(bu": "*",
}
ARG = re.compile(r'"((?:[^"]|"")*)"|(\S+)')


def plain(text: str) -> str:
    """Roff escapes to plain characters (enough to find names in the text)."""
    for escape, char in SPECIAL.items():
        text = text.replace(escape, char)
    text = re.sub(r"\\f[BIRP]", "", text)
    return text.replace("\\-", "-").replace("\\&", "").replace("\\e", "\\")


def macro_args(rest: str) -> list[str]:
    return [quoted if quoted else bare for quoted, bare in ARG.findall(rest)]


def line_text(line: str) -> str:
    """One source line as the words it shows (font macros alternate without spaces)."""
    if not line.startswith("."):
        return plain(line)
    name, _, rest = line[1:].partition(" ")
    args = macro_args(rest)
    if len(name) == 2 and name.isupper() and set(name) <= set("BIR"):
        return plain("".join(args))
    return plain(" ".join(args))


def source(page: str) -> list[str]:
    return [line for line in (MAN / page).read_text().splitlines() if not line.startswith('.\\"')]


def split(lines: list[str], macro: str) -> dict[str, list[str]]:
    """Lines grouped by the headings ``.SH``/``.SS`` (heading text -> its body)."""
    parts: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        if line.startswith(f".{macro} ") or line == f".{macro}":
            current = parts.setdefault(line_text(line).strip(), [])
        elif current is not None:
            current.append(line)
    return parts


def text_of(lines: list[str]) -> str:
    return " ".join(line_text(line) for line in lines)


def has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def sections(page: str) -> dict[str, list[str]]:
    return split(source(page), "SH")


# -- the pages' shape -----------------------------------------------------------------


@pytest.mark.parametrize("page", sorted(PAGES))
def test_page_has_the_usual_sections_and_this_version(page: str) -> None:
    found = list(sections(page))
    expected = SECTIONS[page]
    assert [s for s in found if s in expected] == expected, f"{page}: sections {found}"
    th = next(line for line in source(page) if line.startswith(".TH "))
    title, number, date, version, _ = macro_args(th[4:])
    assert (title, number) == (PAGES[page], page.rsplit(".", 1)[1])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", date), f"{page}: .TH date {date!r} is not ISO"
    assert version == f"ringd {ringd.__version__}", f"{page}: .TH says {version!r}"
    environment = text_of(sections(page)["ENVIRONMENT"])
    assert has_word(environment, ENV_SOCKET), f"{page}: ENVIRONMENT does not mention {ENV_SOCKET}"


# -- ringctl(1) against the click group -----------------------------------------------


def walk(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    """Every visible command under ``group``, as ("sub command", command)."""
    ctx = click.Context(group, info_name=" ".join(path) or "ringctl")
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        yield " ".join((*path, name)), command
        if isinstance(command, click.Group):
            yield from walk(command, (*path, name))


def option_names(command: click.Command) -> list[str]:
    return [
        name
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden
        for name in (*param.opts, *param.secondary_opts)
    ]


def documented_commands() -> dict[str, str]:
    """ringctl(1) COMMANDS: command name (heading words up to the first argument) -> text."""
    documented = {}
    for heading, body in split(sections("ringctl.1")["COMMANDS"], "SS").items():
        words = []
        for word in heading.split():
            if not re.fullmatch(r"[a-z][a-z0-9-]*", word):
                break
            words.append(word)
        documented[" ".join(words)] = heading + " " + text_of(body)
    return documented


def test_ringctl_page_documents_every_command_and_option() -> None:
    commands = dict(walk(ctl.cli))
    assert commands, "found no ringctl commands: has the click group moved?"
    documented = documented_commands()
    leaves = {name for name, cmd in commands.items() if not isinstance(cmd, click.Group)}
    assert sorted(leaves - documented.keys()) == [], "commands missing from man/ringctl.1"
    assert sorted(documented.keys() - commands.keys()) == [], "ringctl.1 documents gone commands"

    options = text_of(sections("ringctl.1")["OPTIONS"])
    group_options = set(option_names(ctl.cli))
    ctx = click.Context(ctl.cli)
    help_option = ctl.cli.get_help_option(ctx)
    assert help_option is not None
    for name in [*group_options, *help_option.opts]:
        assert has_word(options, name), f"ringctl {name}: not in ringctl.1 OPTIONS"

    missing = []
    for name, command in commands.items():
        # A group's own options may be explained under any of its subcommands.
        text = " ".join(t for d, t in documented.items() if d == name or d.startswith(name + " "))
        for option in option_names(command):
            # Options that are also the group's (--json) are explained once, in OPTIONS.
            if has_word(text, option) or option in group_options:
                continue
            missing.append(f"ringctl {name} {option}")
        for param in command.params:
            if isinstance(param.type, click.Choice):
                missing += [
                    f"ringctl {name} {param.name}={choice}"
                    for choice in param.type.choices
                    if not has_word(text, str(choice))
                ]
    assert missing == [], "options (or choices) missing from their command in man/ringctl.1"


def test_ringctl_page_lists_every_exit_code() -> None:
    codes = {v for k, v in vars(app).items() if k.startswith("EXIT_") and isinstance(v, int)}
    body = sections("ringctl.1")["EXIT STATUS"]
    listed = {int(line[3:]) for line in body if re.fullmatch(r"\.B \d+", line)}
    assert listed == codes


# -- ringd(8) against the argparse parser ---------------------------------------------


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    # argparse has no public way to list subparsers; _actions is stable since 3.2.
    for action in parser._actions:
        if action.choices is not None and isinstance(action.choices, dict):
            return dict(action.choices)
    return {}


def flags(parser: argparse.ArgumentParser) -> list[str]:
    return [name for action in parser._actions for name in action.option_strings]


def test_ringd_page_documents_every_command_and_flag() -> None:
    parser = ringd_main._parser()
    commands = subcommands(parser)
    assert "start" in commands
    page = sections("ringd.8")
    documented = {
        heading.split()[0]: text_of(body) for heading, body in split(page["COMMANDS"], "SS").items()
    }
    assert sorted(documented) == sorted(commands)
    options = text_of(page["OPTIONS"])
    synopsis = text_of(page["SYNOPSIS"])
    missing = [name for name in flags(parser) if not has_word(options, name)]
    for command, sub in commands.items():
        for name in flags(sub):
            if name in ("-h", "--help"):
                continue
            if not has_word(documented[command], name):
                missing.append(f"{command} {name}")
            if not has_word(synopsis, name):
                missing.append(f"{command} {name} (SYNOPSIS)")
    assert missing == [], "ringd flags missing from man/ringd.8"


# -- ringd.toml(5) against Config -----------------------------------------------------


def documented_keys() -> dict[str, str]:
    """ringd.toml(5) KEYS: key -> the text of its entry (``.TP`` then ``.B``/``.BR`` key)."""
    keys: dict[str, list[str]] = {}
    lines = sections("ringd.toml.5")["KEYS"]
    current: list[str] | None = None
    for i, line in enumerate(lines):
        if line.startswith((".TP", ".SS")):
            current = None
            following = lines[i + 1] if i + 1 < len(lines) else ""
            if line == ".TP" and following.startswith((".B ", ".BR ")):
                current = keys.setdefault(macro_args(following[3:].strip())[0], [])
        elif current is not None:
            current.append(line)
    return {key: re.sub(r"\s+", " ", text_of(body)) for key, body in keys.items()}


def toml_defaults(value: Any) -> list[str]:
    """How a default may be written in the page: TOML literals (and "unset")."""
    if value is None:
        return ["unset"]
    if isinstance(value, bool):
        return [str(value).lower()]
    if isinstance(value, int):
        return [str(value), f"0o{value:o}"]
    if isinstance(value, float):
        return [repr(value)]
    if isinstance(value, str):
        return [f'"{value}"']
    if isinstance(value, list):
        return ["[" + ", ".join(f'"{v}"' for v in value) + "]"]
    if isinstance(value, dict):
        return ["{" + ", ".join(f'{k} = "{v}"' for k, v in value.items()) + "}"]
    raise AssertionError(f"no TOML rendering for {value!r}")


def test_ringd_toml_page_documents_every_key_and_its_default() -> None:
    documented = documented_keys()
    assert sorted(documented) == sorted(Config.__struct_fields__)
    wrong = []
    for field in msgspec.structs.fields(Config):
        text = documented[field.name]
        if field.default is not msgspec.NODEFAULT:
            expected = toml_defaults(field.default)
        elif field.default_factory in (list, dict):  # [] and {} are worth stating
            expected = toml_defaults(field.default_factory())
        else:
            expected = [""]  # computed at start-up: the page says how, after "Default:"
        if not any(f"Default: {literal}" in text for literal in expected):
            wrong.append(f"{field.name}: expected 'Default: {expected[0]}' in {text!r}")
    assert wrong == []


# -- lint and render ------------------------------------------------------------------


def roff_problems(page: str) -> list[str]:
    """A pure-Python lint for when neither mandoc nor groff is installed.

    CI installs only the Python package, so it may have neither; this catches
    what breaks pages most often (unknown macros, stray escapes, blank lines,
    trailing blanks, unbalanced blocks, option dashes that render as hyphens).
    """
    problems = []
    depth = {"RS": 0, "EX": 0, "nf": 0}
    closes = {"RE": "RS", "EE": "EX", "fi": "nf"}
    lines = (MAN / page).read_text().split("\n")
    if lines[-1] != "":
        problems.append("no newline at end of file")
    seen_th = False
    for number, line in enumerate(lines[:-1], 1):
        where = f"{page}:{number}"
        if not line.strip():
            problems.append(f"{where}: blank line (use .PP or .sp)")
        if line != line.rstrip():
            problems.append(f"{where}: trailing whitespace")
        if line.startswith("'"):
            problems.append(f"{where}: line starts with ' (a control line)")
        if line.startswith('.\\"'):
            continue
        if line.startswith("."):
            name = line[1:].split(" ", 1)[0]
            if name not in ALLOWED_MACROS:
                problems.append(f"{where}: macro .{name} is not in the allowed man(7) set")
            if not seen_th and name != "TH":
                problems.append(f"{where}: .{name} before .TH")
            seen_th = True
            if name in depth:
                depth[name] += 1
            elif name in closes:
                depth[closes[name]] -= 1
                if depth[closes[name]] < 0:
                    problems.append(f"{where}: .{name} without .{closes[name]}")
        stripped = ESCAPE.sub("", line)
        if "\\" in stripped:
            problems.append(f"{where}: unknown escape in {line!r}")
        # An option written "--x" renders with hyphens (U+2010) and cannot be pasted.
        if re.search(r"(?:^|[\s\[(|])-", stripped):
            problems.append(f"{where}: unescaped leading '-' (write \\-) in {line!r}")
    problems += [f"{page}: .{name} not closed" for name, count in depth.items() if count]
    return problems


@pytest.mark.parametrize("page", sorted(PAGES))
def test_man_page_lints_clean(page: str) -> None:
    assert roff_problems(page) == []
    path = str(MAN / page)
    # The real linters when installed (apt: mandoc, groff-base); both, when both are.
    if shutil.which("mandoc"):
        result = subprocess.run(
            ["mandoc", "-T", "lint", "-W", "warning", path], capture_output=True, text=True
        )
        assert (result.returncode, result.stdout + result.stderr) == (0, "")
    if shutil.which("groff"):
        result = subprocess.run(
            ["groff", "-man", "-ww", "-z", path], capture_output=True, text=True
        )
        assert (result.returncode, result.stderr) == (0, "")


def render(page: str) -> str:
    path = str(MAN / page)
    env = dict(os.environ, MANPAGER="cat", PAGER="cat", MANWIDTH="80", LC_ALL="C.UTF-8")
    if shutil.which("man"):
        cmd = ["man", "-l", path]
    elif shutil.which("groff"):
        cmd = ["groff", "-man", "-Tutf8", "-ww", path]
    elif shutil.which("mandoc"):
        cmd = ["mandoc", "-T", "utf8", path]
    else:
        pytest.skip("no man, groff or mandoc to render with (apt-get install man-db)")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    # Overstrike bold (x\bx) when formatting is kept: strip it to read the text.
    return re.sub(r".\x08", "", result.stdout)


@pytest.mark.parametrize("page", sorted(PAGES))
def test_man_page_renders(page: str) -> None:
    text = render(page)
    name = page.rsplit(".", 1)[0]
    assert f"{PAGES[page]}({page.rsplit('.', 1)[1]})" in text.splitlines()[0]
    assert re.search(rf"^NAME\n\s+{re.escape(name)} - ", text, re.M), text[:400]
    for section in SECTIONS[page]:
        assert re.search(rf"^{section}$", text, re.M), f"{section} not rendered"
