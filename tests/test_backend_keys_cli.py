"""`facegate-backend keys init|public` and `claims issue`: the backend side of QR claim tokens."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from edge.trust.claim_tokens import verify_claim_token
from edge.trust.keys import parse_ed25519_public


def backend(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "FACEGATE_BACKEND_KEYS"}
    return subprocess.run(
        [sys.executable, "-m", "edge.backend.cli", *args], env={**base, **(env or {})},
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def assert_usage_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    d = tmp_path / "backend-keys"
    proc = backend("keys", "init", "--key-dir", str(d))
    assert proc.returncode == 0, proc.stderr
    return d


def test_keys_init_creates_a_private_key_and_prints_its_public_hex(tmp_path: Path) -> None:
    d = tmp_path / "k"
    init = backend("keys", "init", "--key-dir", str(d))
    assert init.returncode == 0, init.stderr
    public = init.stdout.strip()
    parse_ed25519_public(public, "printed key", "")  # 64 hex chars of an Ed25519 key
    assert stat.S_IMODE((d / "backend-signing.key").stat().st_mode) == 0o600
    assert (d / "backend-signing.pub").read_text().strip() == public
    again = backend("keys", "public", "--key-dir", str(d))
    assert again.returncode == 0 and again.stdout.strip() == public
    assert (d / "backend-signing.key").read_bytes().hex() not in init.stdout + again.stdout


def test_keys_init_never_overwrites(key_dir: Path) -> None:
    before = (key_dir / "backend-signing.key").read_bytes()
    proc = backend("keys", "init", "--key-dir", str(key_dir))
    assert_usage_error(proc, "already exists", "never overwritten")
    assert (key_dir / "backend-signing.key").read_bytes() == before


def test_key_dir_defaults_to_the_environment_variable(key_dir: Path) -> None:
    pub = backend("keys", "public", env={"FACEGATE_BACKEND_KEYS": str(key_dir)})
    assert pub.returncode == 0, pub.stderr
    assert pub.stdout.strip() == (key_dir / "backend-signing.pub").read_text().strip()


def test_no_key_dir_or_an_empty_one_is_one_line_with_the_fix(tmp_path: Path) -> None:
    assert_usage_error(backend("keys", "public"), "--key-dir", "FACEGATE_BACKEND_KEYS")
    assert_usage_error(backend("claims", "issue", "rider-1"), "--key-dir")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_usage_error(backend("keys", "public", "--key-dir", str(empty)), "keys init")
    assert_usage_error(backend("claims", "issue", "rider-1", "--key-dir", str(empty)),
                       "keys init")  # fmt: skip


def test_claims_issue_prints_a_token_the_kiosk_verifies(key_dir: Path) -> None:
    proc = backend("claims", "issue", "rider-000042", "--ttl", "120", "--key-dir", str(key_dir))
    assert proc.returncode == 0, proc.stderr
    token = proc.stdout.strip()
    assert len(token) <= 120
    public = parse_ed25519_public((key_dir / "backend-signing.pub").read_text(), "pub", "")
    checked = verify_claim_token(token, public, time.time())
    assert checked.subject == "rider-000042"
    assert 100 <= checked.expires_at - time.time() <= 121


def test_claims_issue_png_is_a_qr_code_of_the_printed_token(key_dir: Path, tmp_path: Path) -> None:
    png = tmp_path / "ticket.PNG"
    proc = backend("claims", "issue", "rider-7", "--png", str(png), "--key-dir", str(key_dir))
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Read with the kiosk's own decoder (edge/kiosk/claims/qr.py). OpenCV's plain
    # QRCodeDetector fails on about 4 % of these codes (42 of 1,000 tokens), so this test
    # failed now and then; the Aruco-based decoder read all 1,000.
    text, _, _ = cv2.QRCodeDetectorAruco().detectAndDecode(cv2.imread(str(png)))
    assert text == proc.stdout.strip()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["not an id"], ["subject", "not a valid id"]),
        (["rider-1", "--ttl", "5"], ["--ttl", "10..86400"]),
        (["rider-1", "--ttl", "90000"], ["--ttl", "10..86400"]),
        (["rider-1", "--ttl", "nan"], ["--ttl"]),
        (["rider-1", "--png", "ticket.jpg"], ["--png", "PNG only"]),
        (["rider-1", "--png", "/nonexistent-dir/ticket.png"], ["--png", "writable"]),
    ],
)
def test_bad_claims_issue_input_is_one_line_with_the_fix_and_exit_2(
    key_dir: Path, args: list[str], needles: list[str]
) -> None:
    assert_usage_error(backend("claims", "issue", *args, "--key-dir", str(key_dir)), *needles)


def test_unwritable_png_is_refused_before_a_token_is_printed(key_dir: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # root ignores the mode: use a path under a file instead
        locked = tmp_path / "a-file"
        locked.write_text("")
    proc = backend("claims", "issue", "rider-1", "--png", str(locked / "t.png"),
                   "--key-dir", str(key_dir))  # fmt: skip
    assert_usage_error(proc, "--png")
