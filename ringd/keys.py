"""The etcd key layout (docs/design.md, "etcd keys"). All keys share one prefix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key names under ``prefix`` (``/ringd/<cluster>/``)."""

    prefix: str

    @property
    def data_prefix(self) -> str:
        """Keys no daemon mirrors (``/ringd/<cluster>:data/``): per-node figures and
        handoff state, read only when needed. Kept out of ``prefix`` so that the
        watch every daemon holds carries what decides placement, nothing bulky and
        nothing that changes every minute on every node."""
        return self.prefix.rstrip("/") + ":data/"

    def alive(self, node: str) -> str:
        return f"{self.prefix}nodes/{node}/alive"

    def status(self, node: str) -> str:
        return f"{self.prefix}nodes/{node}/status"

    def figures(self, node: str = "") -> str:
        """A node's published figures (all nodes' under ``figures()``)."""
        return f"{self.data_prefix}figures/{node}"

    def drain(self, node: str) -> str:
        return f"{self.prefix}nodes/{node}/drain"

    def child(self, child_id: str) -> str:
        return f"{self.prefix}children/{child_id}"

    def claim(self, child_id: str) -> str:
        return f"{self.prefix}claims/{child_id}"

    def group(self, group: str) -> str:
        return f"{self.prefix}groups/{group}"

    def handoff(self, child_id: str) -> str:
        return f"{self.data_prefix}handoff/{child_id}"

    def parse(self, key: str) -> tuple[str, str, str] | None:
        """Split a full key into (kind, name, sub): ``nodes/n1/alive`` -> (nodes, n1, alive)."""
        if not key.startswith(self.prefix):
            return None
        parts = key[len(self.prefix) :].split("/")
        if len(parts) == 3 and parts[0] == "nodes":
            return "nodes", parts[1], parts[2]
        if len(parts) == 2 and parts[0] in ("children", "claims", "groups"):
            return parts[0], parts[1], ""
        if len(parts) == 3 and parts[0] == "claims" and parts[2].isdigit():
            return parts[0], f"{parts[1]}/{parts[2]}", ""  # a replica's instance key
        return None
