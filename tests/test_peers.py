"""Operating a child from a node that does not run it: the peer listener
(``peer_address``), its authentication (TLS client certificates and a shared
token), and the ops a daemon forwards there (logs, logs -f across a move,
restart, signal, terminate, exec). Real etcd, real daemons, real children,
loopback only."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ringd.config import load
from ringd.errors import ConfigError
from ringd.protocol import RemoteError
from ringd.standalone import free_port

from .helpers import wait_until
from .test_etcd_security import CA

if TYPE_CHECKING:
    from .conftest import Cluster
    from .helpers import Daemon

TOKEN = "peer-s3cret-token"
# Prints where it runs, then ticks: its output shows which instance wrote it.
TICKER = "echo start $RINGD_NODE $RINGD_FENCE; while true; do echo tick; sleep 0.2; done"


def issue_peer(ca: CA, cn: str) -> tuple[Path, Path]:
    """A certificate for a daemon: server and client (it is both), for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    cert_path, key_path = ca.directory / f"{cn}.pem", ca.directory / f"{cn}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


class Pki:
    """The cluster's CA and one certificate for every daemon; another CA too."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "pki"
        self.dir.mkdir()
        self.ca = CA(self.dir, "peer-ca")
        self.other_ca = CA(self.dir, "other-ca")
        self.cert, self.key = issue_peer(self.ca, "ringd-peer")
        self.token = self.dir / "token"
        self.token.write_text(TOKEN + "\n")
        self.token.chmod(0o600)

    def config(self, base: Path, name: str) -> Path:
        path = base / f"{name}.toml"
        path.write_text(
            f'peer_ca_cert = "{self.ca.path}"\npeer_cert = "{self.cert}"\n'
            f'peer_key = "{self.key}"\npeer_token_file = "{self.token}"\n'
        )
        return path


def peer_daemon(cluster: Cluster, name: str, pki: Pki) -> tuple[Daemon, int]:
    """A daemon with a peer listener on a free loopback port (TLS and the token)."""
    port = free_port()
    d = cluster.daemon(name, start=False, config=pki.config(cluster.base, name))
    d.extra_args += ["--peer-address", f"127.0.0.1:{port}"]
    d.start()
    return d, port


def ticker(cluster: Cluster, child_id: str) -> dict[str, Any]:
    return {
        "id": child_id,
        "argv": ["sh", "-c", TICKER],
        "env": {"TEST_CLUSTER": cluster.name},
        "stop_timeout": 2,
    }


def running(d: Daemon, child_id: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        row: dict[str, Any] = d.call("find", id=child_id)
        return row if row["state"] == "running" and row["node"] else None

    result: dict[str, Any] = wait_until(found, 20, f"{child_id} running")
    return result


class Follower:
    """``ringctl logs -f`` as a process, its lines collected by a thread."""

    def __init__(self, d: Daemon, *args: str) -> None:
        ringctl = str(Path(sys.executable).with_name("ringctl"))
        self.process = subprocess.Popen(
            [ringctl, "--socket", d.socket, "logs", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(10)
        self.reader.join(10)
        assert self.process.stdout is not None
        self.process.stdout.close()


def test_every_command_works_from_a_node_that_does_not_run_the_child(
    cluster: Cluster,
) -> None:
    pki = Pki(cluster.base)
    a, _ = peer_daemon(cluster, "a", pki)
    b, _ = peer_daemon(cluster, "b", pki)
    a.call("start_child", spec=ticker(cluster, "web"))
    row = running(a, "web")
    owner = cluster.daemons[row["node"]]
    other = b if owner is a else a
    fence = row["fence"]

    logs = other.ctl("logs", "web", "-n", "50")
    assert logs.returncode == 0, logs.stderr
    assert f"start {owner.name} {fence}" in logs.stdout.splitlines()

    done = other.ctl("exec", "web", "--", "sh", "-c", "echo $RINGD_NODE $RINGD_FENCE")
    assert (done.returncode, done.stdout) == (0, f"{owner.name} {fence}\n"), done.stderr
    done = other.ctl("exec", "web", "--", "sh", "-c", "echo to-err >&2; exit 3")
    assert (done.returncode, done.stdout, done.stderr) == (3, "", "to-err\n")
    done = other.ctl("exec", "web", "--timeout", "1", "--", "sleep", "30", timeout=20)
    assert done.returncode == 5
    assert done.stderr == "ringctl: exec on web: sleep killed after 1 s\n"

    done = other.ctl("signal-child", "web", "TERM")
    assert done.returncode == 0, done.stderr
    row = wait_until(
        lambda: (r := a.call("find", id="web"))["restarts"] >= 1 and r["state"] == "running" and r,
        20,
        "web restarted after SIGTERM",
    )
    # logs -f from the other node: it goes on across a restart (the same instance,
    # no marker) and a move (a marker, then the new instance's output).
    # -n 50: after the move, the new instance's last 50 lines, its start among them
    follower = Follower(other, "web", "-f", "-n", "50")
    restarted = f"start {owner.name} {fence}"
    try:
        wait_until(lambda: "tick" in follower.lines, 20, "ticks followed")
        seen = follower.lines.count(restarted)
        done = other.ctl("restart-child", "web")
        assert done.returncode == 0, done.stderr
        wait_until(
            lambda: (
                (r := a.call("find", id="web"))["pid"] not in (None, row["pid"])
                and r["state"] == "running"
            ),
            20,
            "web restarted with another pid",
        )
        assert a.call("find", id="web")["fence"] == fence  # the same instance, restarted
        wait_until(
            lambda: follower.lines.count(restarted) > seen, 20, "the restart's output followed"
        )

        # terminate-child from the other node: stopped on its node, not cluster-wide.
        done = other.ctl("terminate-child", "web")
        assert done.returncode == 0, done.stderr
        wait_until(lambda: a.call("find", id="web")["state"] == "stopped", 20, "web stopped")

        # The owner drains: web moves to the other node, where it runs again (a
        # terminated child that moves is started on its new node).
        done = a.ctl("drain", owner.name, "--wait", "--timeout", "30")
        assert done.returncode == 0, done.stderr
        moved = running(a, "web")
        assert moved["node"] == other.name and moved["fence"] != fence
        marker = f"-- web: now on {other.name} (fence {moved['fence']}) --"
        wait_until(lambda: marker in follower.lines, 20, f"{marker!r} in {follower.lines}")
        started = f"start {other.name} {moved['fence']}"
        wait_until(
            lambda: started in follower.lines[follower.lines.index(marker) :],
            20,
            "the new instance's output followed",
        )
        assert follower.process.poll() is None  # still following
    finally:
        follower.stop()
    assert follower.lines.count(marker) == 1
    assert [line for line in follower.lines if line.startswith("--")] == [marker]
    # logs shows the current instance's; the previous one's stays in its node's log.
    logs = owner.ctl("logs", "web", "-n", "100")
    assert logs.returncode == 0, logs.stderr
    assert f"start {other.name} {moved['fence']}" in logs.stdout.splitlines()
    old_log = (owner.state_dir / "logs" / "web.log").read_text()
    assert f"start {owner.name} {fence}" in old_log.splitlines()
    # ... and is readable from the other node too: logs --node names where it ran.
    previous = other.ctl("logs", "web", "--node", owner.name, "-n", "100")
    assert previous.returncode == 0, previous.stderr
    assert f"start {owner.name} {fence}" in previous.stdout.splitlines()
    assert f"start {other.name} {moved['fence']}" not in previous.stdout.splitlines()
    nowhere = other.ctl("logs", "web", "--node", "nosuch")
    assert nowhere.returncode == 3, nowhere.stderr
    # exec as seen before the move is refused, naming where it runs now.
    with pytest.raises(RemoteError, match=f"it runs on node {other.name} now"):
        owner.call("exec", id="web", argv=["true"], fence=fence)
    done = owner.ctl("exec", "web", "--", "sh", "-c", "echo $RINGD_NODE $RINGD_FENCE")
    assert (done.returncode, done.stdout) == (0, f"{other.name} {moved['fence']}\n")


def test_without_peer_access_the_commands_name_the_node(cluster: Cluster) -> None:
    pki = Pki(cluster.base)
    a, _ = peer_daemon(cluster, "a", pki)  # listens, has credentials
    b = cluster.daemon("b")  # neither
    for i in range(8):
        a.call("start_child", spec=ticker(cluster, f"c{i}"))
    rows = [running(a, f"c{i}") for i in range(8)]
    on_a = next(r["id"] for r in rows if r["node"] == "a")
    on_b = next(r["id"] for r in rows if r["node"] == "b")
    for args in (("logs", on_b), ("terminate-child", on_b), ("exec", on_b, "--", "true")):
        done = a.ctl(*args)
        assert done.returncode == 1
        assert done.stderr == (
            f"ringctl: child {on_b} runs on node b, not a, and peer access is off "
            "(b has no peer_address): use that node's ringctl\n"
        )
    done = b.ctl("logs", on_a, "-f")
    assert done.returncode == 1
    assert done.stderr == (
        f"ringctl: child {on_a} runs on node a, not b, and peer access is off "
        "(no peer credentials here): use that node's ringctl\n"
    )


def _exchange(sock: socket.socket | ssl.SSLSocket, payload: bytes) -> list[dict[str, Any]]:
    """Send ``payload``; every line until the peer closes (or nothing, at a reset)."""
    sock.settimeout(15)
    data = b""
    try:
        sock.sendall(payload)
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
        pass
    return [json.loads(line) for line in data.splitlines()]


def test_peer_connections_that_do_not_authenticate_are_refused(cluster: Cluster) -> None:
    pki = Pki(cluster.base)
    a, port = peer_daemon(cluster, "a", pki)
    ping = b'{"id": 1, "op": "ping"}\n'
    token = json.dumps({"token": TOKEN}).encode() + b"\n"
    refusal = [
        {
            "id": None,
            "ok": False,
            "error": {"code": "unauthorized", "message": "peer authentication failed"},
        }
    ]

    def tls(cert: Path | None, key: Path | None) -> ssl.SSLSocket:
        context = ssl.create_default_context(cafile=str(pki.ca.path))
        if cert is not None and key is not None:
            context.load_cert_chain(str(cert), str(key))
        raw = socket.create_connection(("127.0.0.1", port), timeout=15)
        return context.wrap_socket(raw, server_hostname="127.0.0.1")

    # No TLS at all: plain JSON (even with the token), and garbage bytes.
    for payload in (ping, token + ping, b"\x00\xff" * 5000 + b"\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=15) as plain:
            assert _exchange(plain, payload) == []
    # TLS without a client certificate, or with one from another CA.
    other_cert, other_key = issue_peer(pki.other_ca, "intruder")
    for cert, key in ((None, None), (other_cert, other_key)):
        try:  # TLS 1.3: the server's refusal arrives after the client's handshake
            with tls(cert, key) as conn:
                replies = _exchange(conn, token + ping)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            replies = []
        assert replies == []
    # The cluster's certificate, but no token, a wrong one, or garbage.
    for payload in (ping, b'{"token": "guess"}\n' + ping, b"\x00\xff" * 5000 + b"\n"):
        with tls(pki.cert, pki.key) as conn:
            assert _exchange(conn, payload) == refusal
    # Still serving: the control socket, and a peer that authenticates.
    assert a.call("ping")["node"] == "a"
    with tls(pki.cert, pki.key) as conn, conn.makefile("rb") as lines:
        conn.settimeout(15)
        conn.sendall(token + ping + b'{"id": 2, "op": "drain", "args": {}}\n')
        replies = [json.loads(lines.readline()) for _ in range(2)]
    assert replies[0]["result"]["node"] == "a"
    assert replies[1]["error"]["code"] == "protocol"  # not a peer op


def test_a_token_only_listener_refuses_with_one_line_and_keeps_serving(
    cluster: Cluster,
) -> None:
    token_file = cluster.base / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    d = cluster.daemon("a", start=False)
    d.extra_args += ["--peer-address", f"127.0.0.1:{port}", "--peer-token-file", str(token_file)]
    d.start()
    ping = b'{"id": 1, "op": "ping"}\n'
    for payload in (ping, b'{"token": "guess"}\n' + ping, b"\x00\xff" * 5000 + b"\n", b"[]\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=15) as plain:
            replies = _exchange(plain, payload)
        assert [r["error"]["code"] for r in replies] == ["unauthorized"]
    assert d.call("ping")["node"] == "a"
    with socket.create_connection(("127.0.0.1", port), timeout=15) as plain:
        plain.sendall(json.dumps({"token": TOKEN}).encode() + b"\n")
        plain.shutdown(socket.SHUT_WR)  # and nothing else: it just ends
        assert _exchange(plain, b"") == []
    with socket.create_connection(("127.0.0.1", port), timeout=15) as plain:
        plain.settimeout(15)
        plain.sendall(json.dumps({"token": TOKEN}).encode() + b"\n" + ping)
        with plain.makefile("rb") as lines:
            assert json.loads(lines.readline())["result"]["node"] == "a"


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ({"peer_address": "127.0.0.1:7000"}, "needs peer_token_file or peer_ca_cert"),
        ({"peer_address": "7000", "peer_token_file": "t"}, "is not HOST:PORT"),
        ({"peer_ca_cert": "ca.pem", "peer_cert": "c.pem"}, "give all three or none"),
    ],
)
def test_peer_keys_are_checked_together(keys: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load(None, keys)


def test_an_unreadable_token_file_ends_the_start_before_the_node_joins(
    cluster: Cluster,
) -> None:
    d = cluster.daemon("a", start=False)
    port = free_port()
    d.extra_args += [
        "--peer-address",
        f"127.0.0.1:{port}",
        "--peer-token-file",
        str(cluster.base / "missing"),
    ]
    process = d.spawn()
    assert process.wait(30) == 2
    assert "peer_token_file: cannot read" in d.log_tail()
    assert cluster.daemon("b").call("nodes") == [] or all(
        row["node"] != "a" for row in cluster.daemons["b"].call("nodes")
    )
