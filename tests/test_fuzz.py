"""Fuzzing the control socket of a real daemon with hypothesis: malformed,
oversized, wrong-typed and unicode requests, and half-closed connections. Every
request gets a well-formed reply (never ``internal``), and the daemon keeps serving.

The default run sends a few hundred cases; ``pytest -m slow -k fuzz`` sends
RINGD_FUZZ_EXAMPLES (10,000 by default).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringd.errors import InvalidSpec
from ringd.spec import parse_child

from .helpers import exchange

if TYPE_CHECKING:
    from .conftest import Cluster

OPS = [
    "ping", "status", "start_child", "start_children", "delete_child", "find", "which_children", "nodes",
    "create_group", "groups", "delete_group", "reset_group", "terminate_child",
    "restart_child", "signal_child", "logs", "drain", "undrain", "forget_node",
]  # fmt: skip
SAFE_ARGV0 = ["true", "/nonexistent/ringd-fuzz"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
names = st.one_of(st.sampled_from(["f", "x", "g", "web", "n1"]), st.text(max_size=20))
spec_like = st.fixed_dictionaries(
    {
        "id": names,
        "argv": st.one_of(st.lists(st.sampled_from(SAFE_ARGV0), min_size=1, max_size=2), values),
    },
    optional={
        "env": values,
        "restart": st.one_of(st.sampled_from(["permanent", "transient", "temporary"]), values),
        "group": names,
        "replicas": values,
        "on": values,
        "max_restarts": values,
        "cwd": values,
        "extra": values,
    },
)
args = st.fixed_dictionaries(
    {},
    optional={
        "id": names,
        "name": names,
        "node": names,
        "spec": st.one_of(spec_like, values),
        "specs": st.one_of(st.lists(st.one_of(spec_like, values), max_size=3), values),
        "signal": st.one_of(st.sampled_from(["HUP", "0", "KILL", "SIGNOPE"]), values),
        "lines": values,
        "wait": st.booleans(),
        "timeout": st.one_of(st.floats(0.01, 0.05), values),
        "force": values,
        "local": values,
    },
)
requests = st.one_of(
    st.fixed_dictionaries({"id": values, "op": st.sampled_from(OPS), "args": args}).map(
        lambda r: json.dumps(r).encode() + b"\n"
    ),
    st.fixed_dictionaries({"id": values, "op": values, "args": values}).map(
        lambda r: json.dumps(r).encode() + b"\n"
    ),
    st.binary(max_size=200).map(lambda b: b.replace(b"\n", b" ") + b"\n"),
    st.text(max_size=100).map(
        lambda t: t.encode("utf-8", "surrogatepass").replace(b"\n", b" ") + b"\n"
    ),
)


def is_safe(line: bytes) -> bool:
    """Never let the fuzzer start a real program: only SAFE_ARGV0 children may start.
    (Blank lines are skipped by the server without a reply: test_control covers them.)"""
    if not line.strip():
        return False
    try:
        args = json.loads(line)["args"]
    except (ValueError, KeyError, TypeError):
        return True
    if not isinstance(args, dict):
        return True
    specs = args.get("specs")
    return all(
        _starts_nothing_unsafe(spec)
        for spec in [args.get("spec"), *(specs if isinstance(specs, list) else [])]
    )


def _starts_nothing_unsafe(spec: object) -> bool:
    try:
        child = parse_child(spec)  # type: ignore[arg-type]
    except (ValueError, TypeError, InvalidSpec):
        return True
    return child.argv[0] in SAFE_ARGV0


def run_fuzz(cluster: Cluster, examples: int) -> None:
    node = cluster.daemon("f")
    seen_codes: set[str] = set()

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )
    @given(payload=requests.filter(is_safe), half_close=st.booleans())
    def check(payload: bytes, half_close: bool) -> None:
        replies = exchange(node.socket, payload, half_close=half_close)
        assert len(replies) == 1, replies
        (reply,) = replies
        assert isinstance(reply, dict) and set(reply) >= {"id", "ok"}
        if not reply["ok"]:
            assert reply["error"]["code"] != "internal", reply
            assert reply["error"]["message"]
            seen_codes.add(reply["error"]["code"])

    check()
    assert {"protocol", "invalid"} <= seen_codes
    assert node.call("ping")["node"] == "f"
    assert node.process is not None and node.process.poll() is None
    assert "Traceback" not in node.log.read_text()


def test_fuzz_control_socket(cluster: Cluster) -> None:
    run_fuzz(cluster, 300)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fuzz_control_socket_long(cluster: Cluster) -> None:
    run_fuzz(cluster, int(os.environ.get("RINGD_FUZZ_EXAMPLES", "10000")))
