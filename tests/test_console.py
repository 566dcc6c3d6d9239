"""Technician console over a real pseudo-terminal: auth, lockout, garbage, audit, redaction."""

from __future__ import annotations

import os
import pty
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.console.auth import check_pin, hash_pin
from edge.console.session import redact

PIN = "482915"


@pytest.fixture(scope="module")
def pin_hash() -> str:
    return hash_pin(PIN)


class Terminal:
    """The technician's side of the serial line: a pty master."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        self.name = os.ttyname(self.slave)
        os.set_blocking(self.master, False)
        self.seen = b""

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, fragment: str, timeout_s: float = 15.0) -> str:
        deadline = time.monotonic() + timeout_s
        want = fragment.encode()
        while time.monotonic() < deadline:
            try:
                self.seen += os.read(self.master, 4096)
            except (BlockingIOError, OSError):
                time.sleep(0.02)
            idx = self.seen.find(want)
            if idx >= 0:
                out, self.seen = self.seen[: idx + len(want)], self.seen[idx + len(want):]
                return out.decode("utf-8", "replace")
        raise AssertionError(f"did not see {fragment!r}; got {self.seen[-500:]!r}")

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


def start_console(tmp_path: Path, port: str, pin_hash: str) -> subprocess.Popen[bytes]:
    cfg = tmp_path / "kiosk.toml"
    cfg.write_text(
        f'[device]\nid = "kiosk-con-1"\nsite = "lab"\n[paths]\nstate_dir = "{tmp_path / "st"}"\n'
        f'[console]\npin_hash = "{pin_hash}"\nmax_attempts = 3\nlockout_s = 60.0\n'
        "[mqtt]\nenabled = false\n"
    )
    env = {**os.environ, "FACEGATE_CONFIG": str(cfg)}
    env.pop("FACEGATE_STATE_DIR", None)
    if not (tmp_path / "st" / "keys").exists():
        subprocess.run([sys.executable, "-m", "edge", "keys", "init"], env=env, check=True,
                       capture_output=True, timeout=60)
    return subprocess.Popen([sys.executable, "-m", "edge", "console", "--port", port], env=env)


def audit_rows(tmp_path: Path) -> list[str]:
    db = sqlite3.connect(tmp_path / "st" / "outbox.db")
    try:
        return [bytes(r[0]).decode() for r in db.execute("SELECT payload FROM outbox ORDER BY id")]
    finally:
        db.close()


def test_pin_hash_round_trip_and_malformed_hashes() -> None:
    h = hash_pin("2468")
    assert check_pin("2468", h) and not check_pin("2469", h)
    assert "2468" not in h
    for bad in ("", "plain", "scrypt$x$y$z$00$00", "md5$1$1$1$00$00"):
        assert not check_pin("2468", bad)
    with pytest.raises(ValueError):
        hash_pin("12")


def test_redaction_masks_phone_numbers_and_key_material() -> None:
    assert redact("claim 13812345678 ok") == "claim *******5678 ok"
    masked = redact("+86 138 1234 5678")
    assert masked.endswith("5678") and "138" not in masked
    assert redact("key=" + "ab" * 32) == "key=[redacted]"
    assert redact("subject tenant-7 v3") == "subject tenant-7 v3"


def test_console_session_over_a_real_pty(tmp_path: Path, pin_hash: str) -> None:
    term = Terminal()
    proc = start_console(tmp_path, term.name, pin_hash)
    try:
        term.expect("facegate> ")
        term.send(b"status\r\n")
        term.expect("error: not logged in")
        term.send(b"\xff\xfe\x00\x9c\r\n")
        term.expect("unreadable input")
        term.send(b"A" * 400 + b"\r\n")
        term.expect("longer than 256 bytes")
        term.send(b"login\r\n")
        term.expect("PIN: ")
        term.send(PIN.encode() + b"\r\n")
        term.expect("logged in (pin)\r\nfacegate> ")
        term.send(b"status\r\n")
        out = term.expect("facegate> ")
        assert '"device": "kiosk-con-1"' in out and '"templates_active": 0' in out
        term.send(b"templates\r\n")
        term.expect("(no templates)")
        term.send(b"revoke ../etc\r\n")
        term.expect("needs a subject id")
        term.send(b"wipe\r\n")
        term.expect("type 'wipe CONFIRM'")
        term.send(b"frobnicate\r\n")
        term.expect("unknown command")
        term.send(b"logout\r\n")
        term.expect("logged out")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        term.close()
    rows = audit_rows(tmp_path)
    assert all('"type":"console.audit"' in r for r in rows)
    actions = [r.split('"action":"')[1].split('"')[0] for r in rows]
    assert actions == ["status", "login", "status", "templates", "revoke", "wipe", "frobnicate",
                       "logout"]
    assert not any(PIN in r for r in rows)


def test_failed_logins_lock_the_console_even_across_a_kill_and_restart(
    tmp_path: Path, pin_hash: str
) -> None:
    term = Terminal()
    proc = start_console(tmp_path, term.name, pin_hash)
    try:
        term.expect("facegate> ")
        for _ in range(3):
            term.send(b"login\r\n")
            term.expect("PIN: ")
            term.send(b"0000\r\n")
        term.expect("console locked for")
        term.send(b"login\r\n")
        term.expect("try again in")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=15)
    term.seen = b""
    proc = start_console(tmp_path, term.name, pin_hash)
    try:
        term.expect("technician console. Type 'login' to start, 'help' for commands.\r\nfacegate> ")
        term.send(b"login\r\n")
        term.expect("try again in")  # even the right PIN is not asked for while locked
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        term.close()


def test_console_refuses_to_start_without_a_pin_or_port(tmp_path: Path) -> None:
    cfg = tmp_path / "k.toml"
    cfg.write_text(f'[paths]\nstate_dir = "{tmp_path / "st"}"\n')
    env = {**os.environ, "FACEGATE_CONFIG": str(cfg)}
    env.pop("FACEGATE_STATE_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "edge", "console", "--port", "/dev/null"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "no technician PIN configured" in proc.stderr and "Traceback" not in proc.stderr
