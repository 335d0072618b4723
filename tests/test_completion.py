"""Shell completion: the scripts, and real bash completing against a real daemon."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ringctl.completion import SHELLS

if TYPE_CHECKING:
    from .conftest import Cluster

BIN = Path(sys.executable).parent
RINGCTL = str(BIN / "ringctl")
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def ringctl_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("RINGD_SOCKET", None)
    return {**env, **extra}


@pytest.mark.parametrize("shell", SHELLS)
def test_completion_prints_the_script(shell: str) -> None:
    result = subprocess.run(
        [RINGCTL, "completion", shell], capture_output=True, text=True, env=ringctl_env()
    )
    assert result.returncode == 0, result.stderr
    assert "_RINGCTL_COMPLETE" in result.stdout
    assert f"{shell}_complete" in result.stdout  # the callback ringctl answers


def test_completion_of_an_unknown_shell_is_a_usage_error() -> None:
    result = subprocess.run(
        [RINGCTL, "completion", "tcsh"], capture_output=True, text=True, env=ringctl_env()
    )
    assert result.returncode == 2
    assert "tcsh" in result.stderr


def bash_complete(words: str, **env: str) -> list[str]:
    """What bash offers after typing ``words`` and TAB, with the script from ringctl."""
    bash = shutil.which("bash")
    assert bash is not None, "bash is needed to test bash completion"
    script = (
        'eval "$(ringctl completion bash)"\n'
        f"COMP_WORDS=({words})\n"
        "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n"
        "_ringctl_completion ringctl\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(
        [bash, "--norc", "--noprofile", "-c", script],
        capture_output=True,
        text=True,
        env=ringctl_env(**env),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return [line for line in result.stdout.splitlines() if line]


def test_bash_completes_commands_options_and_choices() -> None:
    assert bash_complete("ringctl st") == ["start-child", "start-children", "status"]
    assert "which-children" in bash_complete("ringctl ''")
    assert bash_complete("ringctl start-child web --restart ''") == [
        "permanent",
        "transient",
        "temporary",
    ]
    assert bash_complete("ringctl which-children --lo") == ["--local"]
    assert bash_complete("ringctl completion ''") == list(SHELLS)
    assert bash_complete("ringctl signal-child web US") == ["USR1", "USR2"]


def test_bash_completes_names_from_the_daemon(cluster: Cluster, short_tmp: Path) -> None:
    node = cluster.daemon("n1")
    node.call("create_group", spec={"name": "front"})
    for child in ("web-1", "web-2", "worker"):
        node.call(
            "start_child",
            spec={"id": child, "argv": SLEEPER, "env": {"TEST_CLUSTER": cluster.name}},
        )
    assert bash_complete(f"ringctl --socket {node.socket} find web") == ["web-1", "web-2"]
    assert bash_complete("ringctl delete-child w", RINGD_SOCKET=node.socket) == [
        "web-1",
        "web-2",
        "worker",
    ]
    assert bash_complete(f"ringctl --socket {node.socket} which-children --node ''") == ["n1"]
    assert bash_complete(f"ringctl --socket {node.socket} drain ''") == ["n1"]
    assert bash_complete(f"ringctl --socket {node.socket} reset-group f") == ["front"]
    assert bash_complete(f"ringctl --socket {node.socket} start-child x --group ''") == ["front"]
    assert bash_complete(f"ringctl --socket {node.socket} logs wo") == ["worker"]

    # No daemon: nothing to offer, and no error on the terminal.
    assert bash_complete(f"ringctl --socket {short_tmp / 'none.sock'} find w") == []
