"""Per-claim lockout: back-off after repeated failures, persisted across restarts."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from edge.config import SessionConfig
from edge.errors import FacegateError
from edge.session.lockout import DB_NAME, LockoutStore

CFG = SessionConfig()  # 5 failures, 30 s doubling, 3600 s cap
PHONE = "+8613800138000"


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_four_failures_do_not_lock_the_fifth_locks_for_thirty_seconds(state_dir: Path) -> None:
    clock = Clock()
    with LockoutStore.open(state_dir, CFG, clock) as store:
        for _ in range(4):
            assert store.record_failure(PHONE) == 0.0
            assert store.remaining_s(PHONE) == 0.0
        assert store.record_failure(PHONE) == 30.0
        assert store.remaining_s(PHONE) == 30.0
        clock.t += 12.5
        assert store.remaining_s(PHONE) == pytest.approx(17.5)
        clock.t += 17.5
        assert store.remaining_s(PHONE) == 0.0


def test_each_further_failure_doubles_the_lock_up_to_the_cap(state_dir: Path) -> None:
    cfg = replace(CFG, lockout_max_s=200.0)
    with LockoutStore.open(state_dir, cfg, Clock()) as store:
        locks = [store.record_failure(PHONE) for _ in range(9)]
    assert locks == [0, 0, 0, 0, 30, 60, 120, 200, 200]


def test_a_success_clears_the_claim(state_dir: Path) -> None:
    with LockoutStore.open(state_dir, CFG, Clock()) as store:
        for _ in range(5):
            store.record_failure(PHONE)
        store.record_success(PHONE)
        assert store.remaining_s(PHONE) == 0.0
        assert store.failures(PHONE) == 0
        assert store.record_failure(PHONE) == 0.0


def test_claims_are_locked_independently(state_dir: Path) -> None:
    with LockoutStore.open(state_dir, CFG, Clock()) as store:
        for _ in range(5):
            store.record_failure(PHONE)
        assert store.remaining_s("+8613900139000") == 0.0


def test_the_database_never_holds_the_claim_itself(state_dir: Path) -> None:
    with LockoutStore.open(state_dir, CFG, Clock()) as store:
        store.record_failure(PHONE)
    raw = b"".join(p.read_bytes() for p in state_dir.iterdir() if p.is_file())
    assert PHONE.encode() not in raw
    assert b"13800138000" not in raw


def test_the_lock_survives_a_killed_process(state_dir: Path) -> None:
    # A real process records five failures and is killed with SIGKILL (no clean close);
    # a fresh store in this process must still see the lock.
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from edge.config import SessionConfig\n"
        "from edge.session.lockout import LockoutStore\n"
        "store = LockoutStore.open(Path(sys.argv[1]), SessionConfig())\n"
        "for _ in range(5):\n"
        "    store.record_failure(sys.argv[2])\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(state_dir), PHONE], capture_output=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    with LockoutStore.open(state_dir, CFG) as store:
        assert store.failures(PHONE) == 5
        assert 25.0 < store.remaining_s(PHONE) <= 30.0


def test_a_corrupt_database_is_a_clear_error(state_dir: Path) -> None:
    (state_dir / DB_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(FacegateError, match="lockout database .* move it aside"):
        LockoutStore.open(state_dir, CFG)


def test_database_is_created_private(state_dir: Path) -> None:
    sub = state_dir / "nested"
    old_umask = os.umask(0o022)
    try:
        with LockoutStore.open(sub, CFG, Clock()) as store:
            store.record_failure(PHONE)
            files = [p for p in sub.iterdir() if p.name.startswith(DB_NAME)]
            assert len(files) >= 2  # the WAL side files exist while the store is open
            assert all(p.stat().st_mode & 0o077 == 0 for p in files)
    finally:
        os.umask(old_umask)
    assert (sub / DB_NAME).is_file()
    assert os.stat(sub).st_mode & 0o077 == 0
    # The database and SQLite's side files are private even under a permissive umask.
    files = [p for p in sub.iterdir() if p.name.startswith(DB_NAME)]
    assert files and all(p.stat().st_mode & 0o077 == 0 for p in files)
    with sqlite3.connect(sub / DB_NAME) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
