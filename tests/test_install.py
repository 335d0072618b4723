"""etc/install.sh puts the unit, configuration, man pages and completions in a prefix."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "etc" / "install.sh"
BIN = Path(sys.executable).parent  # this venv's ringd and ringctl


def install(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    # `sh` as the README says (dash on Debian: the script must be POSIX sh).
    env = {k: v for k, v in os.environ.items() if k != "DESTDIR"}
    result = subprocess.run(
        ["sh", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=60
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def unit_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.startswith("ExecStart=")]


def test_install_into_a_prefix(tmp_path: Path) -> None:
    prefix = tmp_path / "usr" / "local"
    out = install("--bindir", BIN, prefix).stdout
    unit = prefix / "lib/systemd/system/ringd.service"
    config = prefix / "etc/ringd/ringd.toml"
    # ExecStart runs this prefix's ringd with the installed configuration; the
    # rest of the unit is as shipped.
    execs = [line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")]
    assert execs == [f"ExecStart={BIN}/ringd start --config {config}"]
    assert unit_lines(unit) == unit_lines(ROOT / "etc/systemd/ringd.service")
    assert config.read_text() == (ROOT / "etc/ringd.toml").read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert (prefix / "share/doc/ringd/ringd.toml").read_text() == config.read_text()
    for page, section in (("ringctl.1", 1), ("ringd.toml.5", 5), ("ringd.8", 8)):
        installed = prefix / f"share/man/man{section}/{page}"
        assert installed.read_bytes() == (ROOT / "man" / page).read_bytes()
    for script in (
        "share/bash-completion/completions/ringctl",
        "share/zsh/site-functions/_ringctl",
        "share/fish/vendor_completions.d/ringctl.fish",
    ):
        assert "_RINGCTL_COMPLETE" in (prefix / script).read_text(), script
    assert "systemctl link" in out  # a unit dir systemd does not search: say so
    # The installed configuration is valid as it is.
    check = subprocess.run(
        [BIN / "ringd", "check-config", str(config)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


def test_an_existing_configuration_is_never_overwritten(tmp_path: Path) -> None:
    config = tmp_path / "etc/ringd/ringd.toml"
    config.parent.mkdir(parents=True)
    config.write_text('name = "mine"\n')
    out = install("--bindir", BIN, tmp_path).stdout
    assert config.read_text() == 'name = "mine"\n'
    assert f"kept {config}" in out
    # The current sample is still there to compare with.
    assert (tmp_path / "share/doc/ringd/ringd.toml").read_text() == (
        ROOT / "etc/ringd.toml"
    ).read_text()


def test_prefix_usr_with_destdir_stages_a_package(tmp_path: Path) -> None:
    """--destdir: files land under it, paths inside them do not mention it."""
    stage = tmp_path / "stage"
    install("--destdir", stage, "/usr")
    unit = stage / "usr/lib/systemd/system/ringd.service"
    assert "ExecStart=/usr/bin/ringd start --config /etc/ringd/ringd.toml" in unit.read_text()
    assert (stage / "etc/ringd/ringd.toml").exists()  # /usr's configuration is in /etc
    assert (stage / "usr/share/man/man8/ringd.8").exists()
    assert str(stage) not in unit.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "PREFIX is missing"),
        (["relative/prefix"], "absolute paths"),
        (["/tmp/a b"], "not supported"),
        (["--bogus", "/x"], "unknown option --bogus"),
        (["--bindir"], "--bindir needs a value"),
    ],
)
def test_bad_arguments_are_usage_errors(args: list[str], message: str) -> None:
    result = install(*args, check=False)
    assert result.returncode == 2
    assert message in result.stderr


def test_man_finds_the_installed_pages(tmp_path: Path) -> None:
    man = shutil.which("man")
    if man is None:
        pytest.skip("man is not installed (apt-get install man-db): lookup not checked")
    install("--bindir", BIN, tmp_path)
    mandir = tmp_path / "share" / "man"
    for name, section in (("ringctl", "1"), ("ringd.toml", "5"), ("ringd", "8")):
        result = subprocess.run(
            [man, "-M", str(mandir), "-w", section, name], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == str(mandir / f"man{section}" / f"{name}.{section}")
