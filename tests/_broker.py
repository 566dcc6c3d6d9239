"""A real Mosquitto broker for tests: free port, generated config, optional TLS with a test CA.

Usage (any test module):

    from _broker import start_mosquitto   # tests/ is on sys.path under pytest
    broker = start_mosquitto(tmp_path, tls=True, mtls=True)
    try:
        ... broker.host, broker.port, broker.ca_file, broker.client_cert, broker.client_key ...
        broker.restart()        # graceful stop (saves persistence) + start on the same port
    finally:
        broker.stop()

Persistence is on (`persistence_location` under tmp_path) so QoS 1 messages queued for a
persistent session survive a graceful restart. The CA and certificates are generated here with
`cryptography`; nothing is read from the system.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- test PKI


@dataclass(frozen=True)
class TestPki:
    """Files of a throw-away CA, a server cert (127.0.0.1, localhost) and a client cert."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    ca_key: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(
    subject_cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    san: list[x509.GeneralName] | None = None,
    usage: list[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_test_pki(directory: Path) -> TestPki:
    """Generate a CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    import ipaddress

    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "facegate test CA")])
    ca_cert = _issue("facegate test CA", ca_key, ca_name, ca_key, ca=True)

    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv_cert = _issue(
        "localhost", srv_key, ca_name, ca_key, ca=False,
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        usage=[ExtendedKeyUsageOID.SERVER_AUTH],
    )
    cli_key = ec.generate_private_key(ec.SECP256R1())
    cli_cert = _issue(
        "facegate-test-client", cli_key, ca_name, ca_key, ca=False,
        usage=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )

    def write(name: str, data: bytes) -> Path:
        p = directory / name
        p.write_bytes(data)
        p.chmod(0o600)
        return p

    pem = serialization.Encoding.PEM
    return TestPki(
        ca_file=write("ca.crt", ca_cert.public_bytes(pem)),
        ca_key=write("ca.key", _key_pem(ca_key)),
        server_cert=write("server.crt", srv_cert.public_bytes(pem)),
        server_key=write("server.key", _key_pem(srv_key)),
        client_cert=write("client.crt", cli_cert.public_bytes(pem)),
        client_key=write("client.key", _key_pem(cli_key)),
    )


# ---------------------------------------------------------------------------- broker


@dataclass
class Broker:
    """A running mosquitto process owned by one test."""

    host: str
    port: int
    workdir: Path
    config_file: Path
    log_file: Path
    tls: bool = False
    mtls: bool = False
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """`mqtt://host:port` or `mqtts://host:port` (the backend CLI's --broker form)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        """Start mosquitto with the generated config; returns once the port accepts."""
        if self.running:
            return
        log = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_file)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited early: {self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log_tail()}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Graceful stop (SIGTERM): mosquitto writes its persistence file before exiting."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Abrupt stop (SIGKILL): whatever was not autosaved is gone, like a power cut."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        """Graceful stop, optionally stay down `down_s` seconds, start again on the same port."""
        self.stop()
        if down_s > 0:
            time.sleep(down_s)
        self.start()

    def log_tail(self, n_bytes: int = 2000) -> str:
        try:
            return self.log_file.read_bytes()[-n_bytes:].decode(errors="replace")
        except OSError:
            return ""

    def client_tls_kwargs(self) -> dict[str, str | None]:
        """ca_certs/certfile/keyfile for paho's `tls_set` (None when not applicable)."""
        return {
            "ca_certs": str(self.ca_file) if self.ca_file else None,
            "certfile": str(self.client_cert) if self.mtls and self.client_cert else None,
            "keyfile": str(self.client_key) if self.mtls and self.client_key else None,
        }

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_mosquitto(
    tmp_path: Path,
    *,
    tls: bool = False,
    mtls: bool = False,
    port: int | None = None,
    extra_config: str = "",
) -> Broker:
    """Start a private mosquitto on a free 127.0.0.1 port; TLS (and mTLS) with a fresh test CA."""
    if not os.path.exists(MOSQUITTO):
        from conftest import require_service

        require_service("mosquitto", f"no binary at {MOSQUITTO}; apt-get install mosquitto")
    workdir = tmp_path / f"mosquitto-{'tls' if tls else 'plain'}-{time.monotonic_ns()}"
    data = workdir / "data"
    data.mkdir(parents=True)
    port = port or free_port()
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "persistence true",
        f"persistence_location {data}/",
        # Unlimited queue for offline persistent sessions: the fault tests queue whole bursts.
        "max_queued_messages 0",
        "max_inflight_messages 100",
        "persistent_client_expiration 1h",
        "set_tcp_nodelay true",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "log_dest stdout",
    ]
    if os.geteuid() == 0:
        # As root mosquitto would drop to user `mosquitto`, which cannot write tmp_path.
        lines.append("user root")
    pki: TestPki | None = None
    if tls or mtls:
        pki = make_test_pki(workdir / "pki")
        lines += [
            f"cafile {pki.ca_file}",
            f"certfile {pki.server_cert}",
            f"keyfile {pki.server_key}",
            "tls_version tlsv1.2",
        ]
        if mtls:
            lines += ["require_certificate true", "use_identity_as_username true"]
    if extra_config:
        lines.append(extra_config)
    config = workdir / "mosquitto.conf"
    config.write_text("\n".join(lines) + "\n")
    broker = Broker(
        host="127.0.0.1",
        port=port,
        workdir=workdir,
        config_file=config,
        log_file=workdir / "mosquitto.log",
        tls=tls or mtls,
        mtls=mtls,
        ca_file=pki.ca_file if pki else None,
        client_cert=pki.client_cert if pki else None,
        client_key=pki.client_key if pki else None,
    )
    broker.start()
    return broker
