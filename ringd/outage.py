"""How an unreachable etcd is reported: the first failure in full, naming the
endpoints, then once a minute while it lasts, then its end. A daemon retrying
every second must not write a line every second."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import trio

if TYPE_CHECKING:
    import logging

    from .errors import EtcdUnavailable


class HasEndpoints(Protocol):
    endpoints: list[str]


class OutageLog:
    """Reports the failures of one activity (``what``: "list cluster state")."""

    def __init__(
        self, logger: logging.Logger, what: str, etcd: HasEndpoints, every: float = 60.0
    ) -> None:
        self.logger = logger
        self.what = what
        self.etcd = etcd
        self.every = every
        self.failures = 0
        self._logged = 0.0

    def failed(self, exc: EtcdUnavailable) -> None:
        now = trio.current_time()
        self.failures += 1
        endpoints = ", ".join(self.etcd.endpoints)
        if self.failures == 1:
            self.logger.error(
                "cannot %s: etcd at %s: %s; retrying (logged again once a minute)",
                self.what, endpoints, exc.reason,
            )  # fmt: skip
        elif now - self._logged >= self.every:
            self.logger.warning(
                "still cannot %s after %d attempts: etcd at %s: %s",
                self.what, self.failures, endpoints, exc.reason,
            )  # fmt: skip
        else:
            return
        self._logged = now

    def succeeded(self) -> None:
        if self.failures:
            self.logger.info("%s: etcd reachable again after %d failed attempts", self.what,
                             self.failures)  # fmt: skip
            self.failures = 0
