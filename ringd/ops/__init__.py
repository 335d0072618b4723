"""The operations the control socket offers (``ringctl`` commands map one to one),
one module per family: ``children``, ``local``, ``groups``, ``updates``, ``nodes``,
``streams``.

Each op is ``async def op(ctx: Context, args: <its request struct>) -> <its result
struct>``; ``registry`` names them and binds them to a daemon's ``Context``.
"""

from __future__ import annotations

from .context import Context as Context
from .registry import handlers as handlers
from .registry import stream_handlers as stream_handlers
