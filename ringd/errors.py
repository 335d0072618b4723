"""The ringd exception tree.

Every error that crosses a module boundary is a ``RingdError``; its ``code`` is the
stable string the control protocol sends to clients.
"""

from __future__ import annotations


class RingdError(Exception):
    """Base of every ringd error."""

    code = "error"


class InvalidSpec(RingdError):
    """A child or group spec, or a config value, failed validation."""

    code = "invalid"

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class InvalidSpecs(InvalidSpec):
    """Several specs or fields failed validation (a specs file): every one named,
    one line each (``problems``); ``field`` and ``problem`` are the first's."""

    def __init__(self, problems: list[str], what: str = "specs") -> None:
        self.problems = problems
        RingdError.__init__(
            self,
            f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in the {what}, "
            "nothing changed:\n" + "\n".join(f"  {line}" for line in problems),
        )
        self.field, _, self.problem = problems[0].partition(": ")


class ConfigError(RingdError):
    """The daemon configuration is unusable."""

    code = "config"


class StartupFailed(RingdError):
    """The daemon could not start (etcd not reached within ``etcd_wait``): exit 1."""

    code = "startup"


class EtcdUnavailable(RingdError):
    """etcd could not be reached (or did not answer in time)."""

    code = "etcd_unavailable"

    def __init__(self, endpoint: str, reason: str) -> None:
        self.endpoint = endpoint
        self.reason = reason
        super().__init__(f"etcd at {endpoint} unavailable: {reason}")


class WatchBroken(RingdError):
    """A watch stream ended; the caller must re-list (``compacted`` says why)."""

    code = "watch_broken"

    def __init__(self, reason: str, *, compacted: bool = False) -> None:
        self.compacted = compacted
        super().__init__(reason)


class LeaseLost(RingdError):
    """This node's lease expired or was revoked: its claims are gone."""

    code = "lease_lost"


class NotFound(RingdError):
    """A child, group or node that does not exist."""

    code = "not_found"

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = name
        super().__init__(f"no {kind} named {name!r}")


class AlreadyExists(RingdError):
    """A create that found the name taken."""

    code = "exists"

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} {name!r} already exists")


class Refused(RingdError):
    """The request is valid but cannot be done in the current state."""

    code = "refused"


class ProtocolError(RingdError):
    """A control message that is not well-formed."""

    code = "protocol"


class RestartIntensityExceeded(RingdError):
    """More restarts than the intensity allows: supervision gives up and escalates."""

    code = "intensity"

    def __init__(self, max_restarts: int, max_seconds: float) -> None:
        super().__init__(f"more than {max_restarts} restarts in {max_seconds:g} s")


class CannotRun(RingdError):
    """A ``--wait`` that ended early: the daemon already knows the child cannot run
    (it failed, or no node may run it); the message says why, per child."""

    code = "cannot_run"


class RolloutHalted(RingdError):
    """A ``--wait`` on an update that ended early: an instance of the new spec
    failed before it was ready, so the rollout stopped (the message says which
    child and why)."""

    code = "halted"


class TimedOut(RingdError):
    """A ``--wait`` that did not see the change happen in time."""

    code = "timeout"
