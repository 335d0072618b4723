"""The ops that change stored specs in place (``ringd/ops/updates.py``: update_child,
update_group, apply, export, rollout) on the in-memory store, with the fixture of
test_ops: what they write, what they leave alone, the plan, the errors of a
file named by position, and where a rollout stands from the claims. Real daemons
and real children: test_rollout."""

# ruff: noqa: F811 - every test takes the fixture "ops", imported from test_ops
from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from ringd.errors import CannotRun, InvalidSpecs, NotFound, Refused, RolloutHalted, TimedOut
from ringd.spec import GroupRecord, parse_child, parse_group, spec_digest

from .test_ops import KEYS, NODE, Ops, ops, sleeper  # noqa: F401 - the fixture


def digest(**spec: Any) -> str:
    return spec_digest(parse_child(spec))


def plan(result: Any) -> list[tuple[str, str, str]]:
    return [(e.kind, e.id, e.action) for e in result.plan]


# -- update_child ----------------------------------------------------------------------


async def test_update_of_a_missing_child_is_not_found_and_writes_nothing(ops: Ops) -> None:
    error = await ops.fails("update_child", spec=sleeper("ghost"))
    assert isinstance(error, NotFound) and error.code == "not_found"
    assert ops.stored(KEYS.child("ghost")) is None


async def test_an_unchanged_spec_writes_nothing_a_changed_one_is_stored(ops: Ops) -> None:
    await ops.call("start_child", spec=sleeper("web"))
    before = ops.etcd.kvs[KEYS.child("web")]
    same = await ops.call("update_child", spec=sleeper("web"))
    assert (same.changed, same.digest) == (False, digest(**sleeper("web")))
    assert ops.etcd.kvs[KEYS.child("web")] is before
    assert ops.etcd.calls.get("put_if", 0) == 0
    changed = await ops.call("update_child", spec=sleeper("web", argv=["sleep", "61"]))
    assert changed.changed and changed.digest == digest(**sleeper("web", argv=["sleep", "61"]))
    stored = ops.etcd.kvs[KEYS.child("web")]
    assert msgspec.json.decode(stored.value)["argv"] == ["sleep", "61"]
    assert stored.create_revision == before.create_revision  # the same key, updated


async def test_the_whole_spec_is_replaced(ops: Ops) -> None:
    """A field left out goes back to its default, as start-child would build it."""
    await ops.call("start_child", spec=sleeper("web", env={"A": "1"}, replicas=2))
    await ops.call("update_child", spec=sleeper("web"))
    stored = parse_child(ops.stored(KEYS.child("web")) or b"")
    assert (stored.env, stored.replicas) == ({}, 1)


async def test_a_concurrent_change_is_not_overwritten(
    ops: Ops, monkeypatch: pytest.MonkeyPatch
) -> None:
    await ops.call("start_child", spec=sleeper("web"))
    stale = ops.etcd.kvs[KEYS.child("web")]
    await ops.etcd.put(KEYS.child("web"), msgspec.json.encode(sleeper("web", argv=["true"])))
    theirs = ops.stored(KEYS.child("web"))

    async def read_before_their_write(key: str) -> Any:
        return stale

    monkeypatch.setattr(ops.etcd, "get", read_before_their_write)
    error = await ops.fails("update_child", spec=sleeper("web", argv=["sleep", "62"]))
    assert isinstance(error, Refused)
    assert "child web was changed by someone else while this updated it" in str(error)
    assert ops.stored(KEYS.child("web")) == theirs


async def test_a_bad_new_spec_or_timeout_changes_nothing(ops: Ops) -> None:
    await ops.call("start_child", spec=sleeper("web"))
    before = ops.stored(KEYS.child("web"))
    error = await ops.fails("update_child", spec=sleeper("web", argv=[]))
    assert str(error) == "argv: must not be empty"
    error = await ops.fails("update_child", spec=sleeper("web", argv=["x"]), wait=True, timeout=0)
    assert str(error).startswith("timeout: ")
    assert ops.stored(KEYS.child("web")) == before


async def test_wait_returns_once_every_instance_runs_the_new_spec_ready(
    ops: Ops, autojump_clock: trio.testing.MockClock
) -> None:
    await ops.node(NODE)
    await ops.call("start_child", spec=sleeper("web"))
    old = digest(**sleeper("web"))
    await ops.claim("web", NODE, digest=old, ready=True, revision=3)
    new_spec = sleeper("web", argv=["sleep", "61"])
    new = digest(**new_spec)

    async def roll() -> None:
        await trio.sleep(1)
        await ops.claim("web", NODE, digest=new, ready=False, revision=9)  # not ready yet
        await trio.sleep(1)
        await ops.claim("web", NODE, digest=new, ready=True, revision=9)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(roll)
        result = await ops.call("update_child", spec=new_spec, wait=True, timeout=30)
    assert trio.current_time() == pytest.approx(2, abs=0.1)
    assert (result.changed, result.rollout) == (True, "done")


async def test_wait_ends_at_once_when_the_rollout_halts(
    ops: Ops, autojump_clock: trio.testing.MockClock
) -> None:
    await ops.node(NODE)
    await ops.node("n2")
    await ops.call("start_child", spec=sleeper("web", replicas=2))
    await ops.settle()
    old = digest(**sleeper("web", replicas=2))
    placed = ops.ctx.reconciler.place()["web"]
    for instance in placed:
        await ops.claim(instance.key, instance.node, digest=old, ready=True)
    bad = sleeper("web", replicas=2, argv=["false"])

    async def fail() -> None:
        await trio.sleep(1)
        await ops.claim(
            "web",
            placed[0].node,
            state="restarting",
            pid=None,
            digest=digest(**bad),
            halted="exit status 1 before it was ready",
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fail)
        with pytest.raises(RolloutHalted) as info:
            await ops.call("update_child", spec=bad, wait=True, timeout=60)
    assert trio.current_time() == pytest.approx(1, abs=0.1)
    assert str(info.value) == "child web: rollout halted: exit status 1 before it was ready"
    assert info.value.code == "halted"
    found = await ops.call("find", id="web")
    assert found.rollout == "halted"
    assert found.reason.startswith("rollout halted: exit status 1 before it was ready")
    assert [row.rollout for row in found.instances] == ["halted", "halted"]


async def test_wait_times_out_naming_what_is_not_done(
    ops: Ops, autojump_clock: trio.testing.MockClock
) -> None:
    await ops.node(NODE)
    await ops.call("start_child", spec=sleeper("web"))
    with pytest.raises(TimedOut, match=r"rollout not done within 5 s: child web \(in progress\)"):
        await ops.call("update_child", spec=sleeper("web", argv=["x"]), wait=True, timeout=5)


async def test_wait_ends_at_once_when_the_new_spec_cannot_run_anywhere(
    ops: Ops, autojump_clock: trio.testing.MockClock
) -> None:
    await ops.node(NODE)
    await ops.call("start_child", spec=sleeper("web"))
    with pytest.raises(CannotRun, match="child web cannot run: no eligible node: needs zone=eu"):
        await ops.call(
            "update_child", spec=sleeper("web", on={"zone": "eu"}), wait=True, timeout=60
        )
    assert trio.current_time() < 1


# -- update_group ----------------------------------------------------------------------


async def test_update_group_replaces_the_spec_and_keeps_its_state(ops: Ops) -> None:
    error = await ops.fails("update_group", spec={"name": "ghost"})
    assert isinstance(error, NotFound)
    failed = GroupRecord(
        spec=parse_group({"name": "g"}), state="failed", reason="boom", node="n2", since=5.0
    )
    await ops.put(KEYS.group("g"), failed)
    same = await ops.call("update_group", spec={"name": "g"})
    assert (same.changed, same.state) == (False, "failed")
    assert ops.etcd.calls.get("put_if", 0) == 0
    row = await ops.call("update_group", spec={"name": "g", "strategy": "one_for_all"})
    assert (row.changed, row.strategy, row.state, row.reason) == (
        True,
        "one_for_all",
        "failed",
        "boom",
    )
    stored = msgspec.json.decode(ops.stored(KEYS.group("g")) or b"", type=GroupRecord)
    assert stored == msgspec.structs.replace(failed, spec=parse_group(row_spec(row)))


def row_spec(row: Any) -> dict[str, Any]:
    return {"name": row.name, "strategy": row.strategy}


# -- apply -----------------------------------------------------------------------------


async def test_apply_creates_updates_and_leaves_the_same_untouched(ops: Ops) -> None:
    await ops.call("create_group", spec={"name": "g"})
    await ops.call("start_child", spec=sleeper("same"))
    await ops.call("start_child", spec=sleeper("changed"))
    await ops.call("start_child", spec=sleeper("other"))
    same = ops.etcd.kvs[KEYS.child("same")]
    args: dict[str, Any] = {
        "groups": [{"name": "g"}, {"name": "h", "strategy": "one_for_all"}],
        "children": [sleeper("same"), sleeper("changed", argv=["true"]), sleeper("new")],
    }

    dry = await ops.call("apply", **args, dry_run=True, prune=True)
    expected = [
        ("group", "g", "unchanged"),
        ("group", "h", "create"),
        ("child", "same", "unchanged"),
        ("child", "changed", "update"),
        ("child", "new", "create"),
    ]
    assert (dry.dry_run, plan(dry)) == (True, [*expected, ("child", "other", "delete")])
    assert ops.stored(KEYS.child("new")) is None and ops.stored(KEYS.child("other")) is not None

    result = await ops.call("apply", **args)  # without --prune: "other" stays
    assert (result.dry_run, plan(result), result.transactions) == (False, expected, 1)
    assert ops.etcd.kvs[KEYS.child("same")] is same  # not written: nothing restarts
    assert parse_child(ops.stored(KEYS.child("changed")) or b"").argv == ["true"]
    assert ops.stored(KEYS.child("new")) is not None and ops.stored(KEYS.group("h")) is not None
    assert ops.stored(KEYS.child("other")) is not None

    pruned = await ops.call("apply", **args, prune=True)
    assert plan(pruned) == [
        ("group", "g", "unchanged"),
        ("group", "h", "unchanged"),
        ("child", "same", "unchanged"),
        ("child", "changed", "unchanged"),
        ("child", "new", "unchanged"),
        ("child", "other", "delete"),
    ]
    assert ops.stored(KEYS.child("other")) is None
    again = await ops.call("apply", **args, prune=True)
    assert {e.action for e in again.plan} == {"unchanged"} and again.transactions == 0


async def test_apply_writes_in_transactions_of_txn_ops_keys(ops: Ops) -> None:
    specs = [sleeper(f"c{i}") for i in range(100)]
    result = await ops.call("apply", children=specs)
    assert result.transactions == 2  # 64 + 36
    assert all(ops.stored(KEYS.child(f"c{i}")) is not None for i in range(100))


async def test_apply_names_every_wrong_field_by_position_and_changes_nothing(ops: Ops) -> None:
    await ops.call("start_child", spec=sleeper("kept"))
    revision = ops.etcd.revision
    error = await ops.fails(
        "apply",
        groups=[{"name": "g", "strategy": "sometimes"}, {"name": "g"}, "nope"],
        children=[
            sleeper("ok"),
            sleeper("web", argv=[], restart="often"),
            {"argv": ["x"], "env": {"RINGD_X": "1"}, "shell": True},
            sleeper("ok"),
            sleeper("kept", cwd="relative", max_seconds=0),
        ],
        prune=True,
    )
    assert isinstance(error, InvalidSpecs) and error.code == "invalid"
    assert error.problems == [
        "group 1 (name g): strategy: 'sometimes' is not one of the allowed values",
        "group 3: group: must be a table",
        "child 2 (id web): argv: must not be empty",
        "child 2 (id web): restart: 'often' is not one of the allowed values",
        "child 3: shell: unknown key",
        "child 3: id: is required",
        "child 3: env.RINGD_X: names starting with RINGD_ are reserved",
        "child 4 (id ok): id: 'ok' appears twice (child 1)",
        "child 5 (id kept): max_seconds: it must be > 0",
        "child 5 (id kept): cwd: 'relative' is not an absolute path",
    ]
    assert str(error).startswith("10 problems in the file, nothing changed:\n  group 1 (name g)")
    assert ops.etcd.revision == revision  # nothing written, nothing deleted


async def test_apply_with_prune_refuses_to_delete_a_group_a_child_of_the_file_uses(
    ops: Ops,
) -> None:
    await ops.call("create_group", spec={"name": "g"})
    error = await ops.fails("apply", children=[sleeper("a"), sleeper("b", group="g")], prune=True)
    assert isinstance(error, InvalidSpecs)
    assert error.problems == [
        "child 2 (id b): group: group g is not in the file, and --prune would delete it"
    ]
    assert ops.stored(KEYS.child("b")) is None and ops.stored(KEYS.group("g")) is not None


async def test_apply_refuses_when_a_spec_changed_since_it_was_read(
    ops: Ops, monkeypatch: pytest.MonkeyPatch
) -> None:
    await ops.call("start_child", spec=sleeper("web"))
    listed = await ops.etcd.list(KEYS.child(""))
    await ops.etcd.put(KEYS.child("web"), msgspec.json.encode(sleeper("web", argv=["true"])))
    real_list = ops.etcd.list

    async def stale_list(prefix: str) -> Any:
        return listed if prefix == KEYS.child("") else await real_list(prefix)

    monkeypatch.setattr(ops.etcd, "list", stale_list)
    error = await ops.fails("apply", children=[sleeper("web", argv=["sleep", "9"]), sleeper("x")])
    assert isinstance(error, Refused) and "0 of 2 changes were written" in str(error)
    assert parse_child(ops.stored(KEYS.child("web")) or b"").argv == ["true"]
    assert ops.stored(KEYS.child("x")) is None  # the same transaction: not written either


async def test_apply_wait_waits_for_created_and_updated_children(
    ops: Ops, autojump_clock: trio.testing.MockClock
) -> None:
    await ops.node(NODE)
    await ops.call("start_child", spec=sleeper("same"))
    with pytest.raises(TimedOut, match=r"child new \(in progress\)$"):
        await ops.call("apply", children=[sleeper("same"), sleeper("new")], wait=True, timeout=3)
    await ops.claim("new", NODE, digest=digest(**sleeper("new")), ready=True)
    result = await ops.call(
        "apply", children=[sleeper("same"), sleeper("new")], wait=True, timeout=3
    )
    assert {e.action for e in result.plan} == {"unchanged"}


# -- export ----------------------------------------------------------------------------


async def test_export_has_only_fields_that_differ_and_applies_back_unchanged(ops: Ops) -> None:
    await ops.call("create_group", spec={"name": "g", "strategy": "rest_for_one"})
    await ops.call("start_child", spec=sleeper("b", group="g", check=["true"], min_ready=2.5))
    await ops.call("start_child", spec=sleeper("a"))
    await ops.etcd.put(KEYS.child("broken"), b"{not json")
    exported = await ops.call("export")
    assert exported.groups == [{"name": "g", "strategy": "rest_for_one"}]
    # In creation order (their start order), not by name.
    assert exported.children == [
        {"id": "b", "argv": ["sleep", "60"], "group": "g", "min_ready": 2.5, "check": ["true"]},
        {"id": "a", "argv": ["sleep", "60"]},
    ]
    assert exported.invalid == ["child broken"]
    revision = ops.etcd.revision
    result = await ops.call("apply", groups=exported.groups, children=exported.children)
    assert {e.action for e in result.plan} == {"unchanged"}
    assert ops.etcd.revision == revision

    named = await ops.call("export", ids=["a", "g"])
    assert (named.groups, [c["id"] for c in named.children]) == (exported.groups, ["a"])
    error = await ops.fails("export", ids=["a", "ghost"])
    assert isinstance(error, NotFound) and str(error) == "no child or group named 'ghost'"


# -- rollout, and what find shows ------------------------------------------------------


async def test_rollout_says_which_instance_runs_which_revision(ops: Ops) -> None:
    error = await ops.fails("rollout", id="ghost")
    assert isinstance(error, NotFound)
    await ops.node(NODE)
    await ops.node("n2")
    await ops.node("n3")
    v1 = sleeper("web", replicas=3)
    await ops.call("start_child", spec=v1)
    v2 = sleeper("web", replicas=3, argv=["sleep", "61"])
    await ops.call("update_child", spec=v2)
    await ops.settle()
    await ops.claim("web", NODE, digest=digest(**v2), revision=20, ready=True, health="healthy")
    await ops.claim("web/1", "n2", digest=digest(**v1), revision=10, ready=True)
    status = await ops.call("rollout", id="web")
    assert (status.state, status.digest) == ("in progress", digest(**v2))
    assert status.revision == ops.etcd.kvs[KEYS.child("web")].mod_revision
    assert [(i.instance, i.node, i.revision, i.current, i.ready, i.health) for i in status.instances] == [
        ("web", NODE, 20, True, True, "healthy"),
        ("web/1", "n2", 10, False, True, ""),
        ("web/2", None, None, False, False, ""),
    ]  # fmt: skip
    found = await ops.call("find", id="web")
    assert found.rollout == "in progress"
    assert (found.revision, found.ready, found.health) == (20, True, "healthy")
    await ops.claim("web/1", "n2", digest=digest(**v2), revision=20, ready=True)
    await ops.claim("web/2", "n3", digest=digest(**v2), revision=20, ready=True)
    assert (await ops.call("rollout", id="web")).state == "done"
    assert (await ops.call("find", id="web")).rollout == "done"
