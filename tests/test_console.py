"""Technician console over a real pseudo-terminal: auth, lockout, garbage, audit, redaction."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pty
import select
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.config import ConsoleConfig
from edge.console.auth import MAX_CODES, AuthStore, ConsoleAuthError, check_pin, hash_code, hash_pin
from edge.console.session import BUCKET_RATE, TOO_FAST, Console, redact

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
        self.transcript = b""  # everything the console ever wrote to the line

    def _read(self, wait_s: float = 0.01) -> None:
        readable, _, _ = select.select([self.master], [], [], wait_s)
        if readable:
            with contextlib.suppress(BlockingIOError, OSError):
                chunk = os.read(self.master, 65536)
                self.seen += chunk
                self.transcript += chunk

    def send(self, data: bytes, timeout_s: float = 30.0) -> None:
        """Write all of `data`, reading the console's replies meanwhile (the pty buffer is
        small, and a console blocked on a full output buffer would stop reading)."""
        view, deadline = memoryview(data), time.monotonic() + timeout_s
        while view:
            assert time.monotonic() < deadline, f"console stopped reading ({len(view)} B left)"
            _, writable, _ = select.select([], [self.master], [], 0.05)
            if writable:
                with contextlib.suppress(BlockingIOError):
                    view = view[os.write(self.master, view[:65536]):]
            self._read(0)

    def expect(self, *fragments: str, timeout_s: float = 15.0) -> str:
        """Text up to and including the first of `fragments` to appear."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._read()
            hits = [(i, f) for f in fragments if (i := self.seen.find(f.encode())) >= 0]
            if hits:
                idx, frag = min(hits)
                end = idx + len(frag.encode())
                out, self.seen = self.seen[:end], self.seen[end:]
                return out.decode("utf-8", "replace")
        raise AssertionError(f"did not see {fragments!r}; got {self.seen[-500:]!r}")

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


def send_past_the_bucket(term: Terminal, line: bytes, want: str) -> None:
    """Send `line` until it is answered with `want`, not dropped with the flood notice."""
    for _ in range(20):
        term.send(line + b"\r\n")
        if term.expect(want, TOO_FAST).endswith(want):
            return
        time.sleep(1 / BUCKET_RATE)
    raise AssertionError(f"{line!r} was still dropped after 20 tries")


def write_config(tmp_path: Path, pin_hash: str, extra: str = "") -> Path:
    cfg = tmp_path / "kiosk.toml"
    cfg.write_text(
        f'[device]\nid = "kiosk-con-1"\nsite = "lab"\n[paths]\nstate_dir = "{tmp_path / "st"}"\n'
        f'[console]\npin_hash = "{pin_hash}"\nmax_attempts = 3\nlockout_s = 60.0\n'
        f"[mqtt]\nenabled = false\n{extra}"
    )
    return cfg


def start_console(
    tmp_path: Path, port: str, pin_hash: str, extra: str = ""
) -> subprocess.Popen[bytes]:
    """`facegate console --port PTY --config F`, as the systemd unit starts it (no
    $FACEGATE_CONFIG); its stdout/stderr go to `console.out` in tmp_path."""
    cfg = write_config(tmp_path, pin_hash, extra)
    env = {**os.environ}
    for var in ("FACEGATE_CONFIG", "FACEGATE_STATE_DIR", "CREDENTIALS_DIRECTORY"):
        env.pop(var, None)
    if not (tmp_path / "st" / "keys").exists():
        subprocess.run([sys.executable, "-m", "edge", "--config", str(cfg), "keys", "init"],
                       env=env, check=True, capture_output=True, timeout=60)
    out = open(tmp_path / "console.out", "ab")  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "edge", "console", "--port", port, "--config", str(cfg)],
            env=env, stdout=out, stderr=out,
        )
    finally:
        out.close()


def audit_rows(tmp_path: Path) -> list[str]:
    db = sqlite3.connect(tmp_path / "st" / "outbox.db")
    try:
        return [bytes(r[0]).decode() for r in db.execute("SELECT payload FROM outbox ORDER BY id")]
    finally:
        db.close()


def audits(tmp_path: Path) -> list[dict[str, object]]:
    rows = [json.loads(r) for r in audit_rows(tmp_path)]
    assert all(r["type"] == "console.audit" for r in rows)
    return rows


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


HOSTILE_PRELOGIN = [
    PIN.encode(),  # the PIN typed at the command prompt instead of after `login`
    b"status",
    b"data:image/jpeg;base64,/9j/4AAQSkZJRg",  # the event guard's image prefixes
    b"/9j/4AAQSkZJRgABAQ",
    b"\xff\xfe\x00\x9c",  # invalid UTF-8 and a NUL
    b"\x00\x00login\x00",
    b"\x03\x1a\x13\x11\x1b[2J",  # ^C ^Z XOFF XON and an escape sequence
    b"\xe2\x80\xae" + PIN.encode(),  # right-to-left override + PIN: not printable
    b"A" * 400,
    b"B" * (1 << 20),  # 1 MB without a terminator until the end
]


def test_console_session_over_a_real_pty(tmp_path: Path, pin_hash: str) -> None:
    """Hostile pre-login input (a PIN at the wrong prompt, image prefixes, invalid UTF-8, NULs,
    a 1 MB line, a flood) gets only fixed replies, never crashes the console, and reaches the
    outbox as one counted summary; the right PIN still logs in afterwards."""
    term = Terminal()
    proc = start_console(tmp_path, term.name, pin_hash)
    try:
        term.expect("facegate> ")
        for line in HOSTILE_PRELOGIN:
            term.send(line + b"\r\n")
            term.expect("facegate> ")
        # A flood: the token bucket lets a burst through, then drops lines with one notice.
        term.send(b"".join(b"%s %d\r\n" % (PIN.encode(), i) for i in range(300)))
        term.expect(TOO_FAST)
        # The bucket refills at BUCKET_RATE lines/s: poll for a help reply (dropped lines get
        # no answer while throttled), then retry `login` while it is dropped with the notice.
        for _ in range(100):
            term.send(b"help\r\n")
            with contextlib.suppress(AssertionError):
                term.expect("commands (after login)", timeout_s=0.3)
                break
        term.expect("facegate> ")
        send_past_the_bucket(term, b"login", "PIN: ")
        send_past_the_bucket(term, PIN.encode(), "logged in (pin)\r\nfacegate> ")
        term.send(b"status\r\n")  # a login refills the bucket: the technician is not slowed
        out = term.expect("facegate> ")
        assert '"device": "kiosk-con-1"' in out and '"templates_active": 0' in out
        assert '"held": false' in out  # no kiosk streams the camera (edge/camera/lease.py)
        term.send(b"templates\r\n")
        term.expect("(no templates)")
        term.send(b"revoke ../etc\r\n")
        term.expect("needs a subject id")
        term.send(b"wipe\r\n")
        term.expect("type 'wipe CONFIRM'")
        for line in (b"frobnicate", b"data:,x", b"/9j/4AAQ", PIN.encode()):
            term.send(line + b"\r\n")
            assert "frobnicate" not in term.expect("error: unknown command; type 'help'")
        term.send(b"logout\r\n")
        term.expect("logged out")
        term.send(b"status\r\n")
        term.expect("error: not logged in")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        term.close()
    rows = audits(tmp_path)
    assert [r["action"] for r in rows] == [
        "prelogin_summary", "login", "status", "templates", "revoke", "wipe",
        "unknown_command", "unknown_command", "unknown_command", "unknown_command", "logout",
        "prelogin_summary",  # the `status` after logout, flushed when the console stopped
    ]
    summary = dict(kv.split("=") for kv in str(rows[0]["detail"]).split())
    assert summary["unknown_lines"] != "0" and int(summary["unreadable_lines"]) >= 5
    assert int(summary["dropped_lines"]) >= 200 and rows[0]["ok"] is False
    assert rows[-1]["detail"] == (
        "failed_logins=0 locked_attempts=0 unknown_lines=1 unreadable_lines=0 dropped_lines=0"
    )
    assert (rows[1]["detail"], rows[1]["ok"]) == ("pin", True)
    raw = b"".join(r.encode() for r in audit_rows(tmp_path))
    for secret in (PIN.encode(), b"data:", b"/9j/", b"frobnicate"):
        assert secret not in raw  # the outbox (what the broker would get) never holds typed text
        assert secret not in term.transcript  # the screen never shows it either
        assert secret not in (tmp_path / "console.out").read_bytes()  # nor stdout/stderr/logs
    assert b"Traceback" not in (tmp_path / "console.out").read_bytes()


def test_failed_logins_lock_the_console_even_across_sigkills(tmp_path: Path, pin_hash: str) -> None:
    """Each failure is on disk before its reply: a SIGKILL right after the reply loses none."""
    term = Terminal()
    proc = start_console(tmp_path, term.name, pin_hash)
    try:
        term.expect("facegate> ")
        for _ in range(2):
            term.send(b"login\r\n")
            term.expect("PIN: ")
            term.send(b"0000\r\n")
            term.expect("error: wrong PIN or code")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=15)
    auth = tmp_path / "st" / "console_auth.json"
    assert json.loads(auth.read_text())["failures"] == 2
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    assert not list(auth.parent.glob(".*.tmp"))
    term.seen = b""
    proc = start_console(tmp_path, term.name, pin_hash)
    try:
        term.expect("technician console. Type 'login' to start, 'help' for commands.\r\nfacegate> ")
        term.send(b"login\r\n")
        term.expect("PIN: ")
        term.send(b"0000\r\n")
        term.expect("console locked for 60 s")  # the third failure, counted across the kill
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
    # SIGKILLed consoles flushed no summary; the last one did, on SIGTERM: counts, no text.
    rows = audits(tmp_path)
    assert [(r["action"], r["detail"]) for r in rows] == [
        ("prelogin_summary",
         "failed_logins=0 locked_attempts=1 unknown_lines=0 unreadable_lines=0 dropped_lines=0")
    ]


def test_console_enrol_uses_the_consoles_config_and_audits_the_real_outcome(
    tmp_path: Path, pin_hash: str, portrait_enrol: Path
) -> None:
    """`enrol` runs `facegate enroll` with the console's own --config (its device id, keys and
    camera); a refused enrolment is audited ok=false with a fixed reason word."""
    extra = f'[camera]\nsource = "file:{portrait_enrol}"\n[templates]\nenroll_frames = 5\n'
    term = Terminal()
    proc = start_console(tmp_path, term.name, pin_hash, extra)
    try:
        term.expect("facegate> ")
        term.send(b"login\r\n")
        term.expect("PIN: ")
        term.send(PIN.encode() + b"\r\n")
        term.expect("logged in (pin)\r\nfacegate> ")
        term.send(b"enrol alice\r\n")
        out = term.expect("facegate> ", timeout_s=180)
        assert '"subject": "alice"' in out and '"state": "active"' in out, out
        term.send(b"enrol alice\r\n")  # already enrolled: refused before the camera opens
        out = term.expect("facegate> ", timeout_s=60)
        assert "already enrolled" in out, out
        term.send(b"templates\r\n")
        assert '"subject": "alice"' in term.expect("facegate> ")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        term.close()
    rows = [(r["action"], r["ok"], r.get("detail"), r.get("subject")) for r in audits(tmp_path)]
    assert rows == [
        ("login", True, "pin", None),
        ("enrol", True, None, "alice"),
        ("enrol", False, "template_error", "alice"),
        ("templates", True, "1 templates", None),
    ]


def test_one_time_codes_are_salted_slow_hashes_used_once(tmp_path: Path) -> None:
    code = "0123456789"
    h1, h2 = hash_code(code), hash_code(code)
    assert h1 != h2 and h1.startswith("scrypt$8192$8$1$") and code not in h1
    assert check_pin(code, h1) and check_pin(code, h2) and not check_pin("0123456788", h1)
    store = AuthStore(tmp_path, ConsoleConfig(pin_hash=""), time.time)
    codes = store.issue_codes(3)
    stored = json.loads(store.codes_path.read_text())
    assert len(set(stored)) == 3 and not any(c in store.codes_path.read_text() for c in codes)
    assert len({h.split("$")[4] for h in stored}) == 3  # a salt per code
    assert stat.S_IMODE(store.codes_path.stat().st_mode) == 0o600
    assert store.attempt(codes[1]) == (True, "one_time_code")
    assert store.attempt(codes[1]) == (False, "login_failed")  # single use
    assert len(json.loads(store.codes_path.read_text())) == 2
    with pytest.raises(ConsoleAuthError, match=f"at most {MAX_CODES - 2}"):
        store.issue_codes(MAX_CODES)
    # Unsalted codes of older releases are void, not accepted.
    store.codes_path.write_text(json.dumps([hashlib.sha256(code.encode()).hexdigest()]))
    assert store.attempt(code) == (False, "login_failed")


class _Line:
    """An in-memory LineIO: the protocol logic of a flood, on a simulated clock."""

    def __init__(self) -> None:
        self.out: list[str] = []

    def read_line(self, timeout_s: float) -> bytes | None:
        return None

    def write(self, text: str) -> None:
        self.out.append(text)


def test_a_long_prelogin_flood_audits_at_most_one_summary_a_minute(tmp_path: Path) -> None:
    now = [1000.0]
    events: list[tuple[str, bool, str, str]] = []
    console = Console(
        _Line(), services=None,  # type: ignore[arg-type]  # never reached before login
        auth=AuthStore(tmp_path, ConsoleConfig(pin_hash=hash_pin(PIN)), time.time),
        audit=lambda a, ok, d, s="": events.append((a, ok, d, s)), clock=lambda: now[0],
    )
    for i in range(20 * 600):  # 20 lines/s for 10 simulated minutes
        now[0] += 0.05
        console.step(b"data:" + PIN.encode() if i % 2 else b"\xff/9j/")
    console.flush_summary(force=True)
    assert 10 <= len(events) <= 11
    assert all(a == "prelogin_summary" and not ok for a, ok, _, _ in events)
    assert not any(PIN in d or "data" in d for _, _, d, _ in events)
    counts = [dict(kv.split("=") for kv in d.split()) for _, _, d, _ in events]
    handled = sum(int(c["unknown_lines"]) + int(c["unreadable_lines"]) for c in counts)
    dropped = sum(int(c["dropped_lines"]) for c in counts)
    assert handled + dropped == 20 * 600 and handled <= 20 + 5 * 600 + 1


def test_console_refuses_to_start_without_a_pin_or_port(tmp_path: Path) -> None:
    cfg = tmp_path / "k.toml"
    cfg.write_text(f'[paths]\nstate_dir = "{tmp_path / "st"}"\n')
    env = {**os.environ, "FACEGATE_CONFIG": str(cfg)}
    env.pop("FACEGATE_STATE_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "edge", "console", "--port", "/dev/null"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "no technician PIN configured" in proc.stderr and "Traceback" not in proc.stderr


def test_status_names_who_streams_the_camera_and_diag_checks_every_model_the_kiosk_loads(
    tmp_path: Path,
) -> None:
    from edge.camera.lease import CameraLease
    from edge.config import load_config
    from edge.console.services import DeviceServices
    from edge.transport.outbox import Outbox
    from edge.trust.keys import init_keys
    from edge.vision.pad import PAD_V1SE

    repo_models = Path(__file__).resolve().parent.parent / "models"
    models = tmp_path / "models"
    models.mkdir()
    for f in repo_models.iterdir():
        if f.is_file() and f.name != PAD_V1SE:  # one anti-spoofing model lost on the board
            (models / f.name).symlink_to(f)
    cfg_path = tmp_path / "k.toml"
    cfg_path.write_text(
        f'profile = "bakery"\n[device]\nid = "kiosk-con-2"\n'
        f'[paths]\nstate_dir = "{tmp_path / "st"}"\nmodels_dir = "{models}"\n'
        "[mqtt]\nenabled = false\n"
    )
    cfg = load_config(cfg_path)
    keys = init_keys(cfg.state_dir, cfg.device.id)
    with Outbox(cfg.state_dir / "outbox.sqlite", 100) as outbox:
        services = DeviceServices(cfg, keys, outbox)
        assert services.status()["camera"] == {"held": False, "holder": None, "lent": False}
        kiosk = CameraLease(cfg.state_dir)
        assert kiosk.try_hold()  # as `facegate run` does
        assert services.status()["camera"] == {
            "held": True, "holder": f"pid {os.getpid()}", "lent": False,
        }  # fmt: skip
        kiosk.release()
        report = services.diagnostics()
    assert report["models"]["ok"] is False
    assert PAD_V1SE in report["models"]["detail"], report
