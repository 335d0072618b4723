"""which_children's group filter over specs held as ``SpecKV`` (the view's compact
form): a group that only specs name still filters, one nothing names is not found."""

from __future__ import annotations

from typing import Any

import msgspec

from ringd.errors import NotFound
from ringd.protocol import ChildRow, Encoded
from ringd.view import SpecKV
from tests.test_ops import Ops, sleeper
from tests.test_ops import ops as ops  # the fixture


async def test_a_group_only_specs_name_filters_and_an_unknown_one_is_not_found(ops: Ops) -> None:
    for child_id, group in (("a", None), ("b", "later"), ("c", "later")):
        await ops.call("start_child", spec=sleeper(child_id, group=group))
    await ops.settle()
    assert all(isinstance(kv, SpecKV) for kv in ops.ctx.view.stored_specs().values())

    async def ids(**args: Any) -> list[str]:
        rows = await ops.call("which_children", **args)
        if isinstance(rows, Encoded):
            rows = msgspec.json.decode(rows.json, type=list[ChildRow])
        return [row.instance for row in rows]

    assert await ids(group="later") == ["b", "c"]  # no group record: its specs name it
    error = await ops.fails("which_children", group="nosuch")
    assert isinstance(error, NotFound)
