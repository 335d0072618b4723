"""What every op may use: this daemon's parts, in one small object."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from ..errors import TimedOut
from ..figures import PublishedFigures
from ..listing import Listing

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..config import Config
    from ..etcd import Etcd
    from ..figures import Figures
    from ..keys import Keys
    from ..membership import Membership
    from ..peers import PeerClient
    from ..reconciler import Reconciler
    from ..supervisor import Supervisor
    from ..view import ClusterView


@dataclass(eq=False)
class Context:
    """This daemon's parts as the ops see them; built once, shared by every op.

    Reads come from ``view`` (and ``listing``, the cached rows of find and
    which-children, built here from the others); writes go to ``etcd`` and are
    in etcd before an op answers that they succeeded.
    """

    config: Config
    etcd: Etcd
    keys: Keys
    view: ClusterView
    membership: Membership
    supervisor: Supervisor
    reconciler: Reconciler
    figures: Figures
    started: float = field(default_factory=time.time)  # unix time: status's uptime
    web: str | None = None  # the status page's URL, once it serves (``ringd.web``)
    peers: PeerClient | None = None  # asks other nodes (None: no peer credentials)
    listing: Listing = field(init=False)

    def __post_init__(self) -> None:
        self.listing = Listing(
            node=self.config.name,
            view=self.view,
            reconciler=self.reconciler,
            figures=self.figures,
            published=PublishedFigures(self.etcd, self.keys, self.figures.fresh),
            fresh=self.figures.fresh,
        )

    @property
    def node(self) -> str:
        """This node's name."""
        return self.config.name

    async def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Return once ``condition()`` holds, looking again at each change of the view.

        Raises:
            TimedOut: it did not hold within ``timeout`` seconds.
        """
        seen = -1
        with trio.move_on_after(timeout):
            while not condition():
                seen = await self.view.wait_changed(seen)
            return
        raise TimedOut(f"{what} did not happen within {timeout:g} s")
