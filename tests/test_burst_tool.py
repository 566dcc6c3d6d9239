"""The burst/fault publisher (`python -m edge.measure.burst`) only ever uses keys it created."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edge.trust.keys import init_keys, keys_dir

TOOL = [sys.executable, "-m", "edge.measure.burst"]


def _pubkey(state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TOOL, "pubkey", "--state-dir", str(state), "--device", "kiosk-burst"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_burst_tool_refuses_a_state_dir_holding_a_kiosks_keys(tmp_path: Path) -> None:
    state = tmp_path / "kiosk-state"
    kiosk = init_keys(state, "kiosk-burst")
    before = {p.name: p.read_bytes() for p in keys_dir(state).iterdir()}
    r = _pubkey(state)
    assert r.returncode == 2, r.stderr
    assert "did not create" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    after = {p.name: p.read_bytes() for p in keys_dir(state).iterdir()}
    assert after == before  # untouched, never replaced
    assert kiosk.signing_key.public_key()  # the kiosk's key still loads from the same files


def test_burst_tool_creates_and_reuses_its_own_keys(tmp_path: Path) -> None:
    state = tmp_path / "burst-state"
    first = _pubkey(state)
    assert first.returncode == 0, first.stderr
    second = _pubkey(state)
    assert second.returncode == 0, second.stderr
    assert first.stdout.strip() == second.stdout.strip() and len(first.stdout.strip()) == 64


def test_burst_tool_starts_over_after_its_own_partial_key_set(tmp_path: Path) -> None:
    state = tmp_path / "burst-state"
    assert _pubkey(state).returncode == 0
    (keys_dir(state) / "device-id").unlink()  # as if SIGKILLed inside init_keys
    r = _pubkey(state)
    assert r.returncode == 0, r.stderr
