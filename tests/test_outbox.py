"""Durable outbox: commit before actuation, delete only on ack, bounded without losing payments."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import require_service
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.transport.outbox import Outbox, OutboxError, OutboxFullError
from edge.trust.event_schema import PAYMENT_TYPES
from edge.trust.events import EventFactory, verify_event

KEY = Ed25519PrivateKey.generate()
PAY = {
    "subject": "s-1",
    "decision": "accept",
    "score": 0.9,
    "liveness": {"blinks": 1, "challenge_ms": 800},
    "amount": 120,
    "currency": "EUR",
}
DOOR = {**{k: PAY[k] for k in ("subject", "decision", "score", "liveness")}, "door": "main"}


def factory() -> EventFactory:
    return EventFactory("kiosk-1", "site-1", KEY)


def emit(ob: Outbox, kind: str) -> Any:
    return (
        ob.emit(factory(), "payment.authorize", **PAY)
        if kind == "pay"
        else ob.emit(factory(), "door.unlock", **DOOR)
    )


def rows(path: Path) -> list[tuple[int, str, str]]:
    with sqlite3.connect(path) as db:
        return [
            (r[0], r[1], r[2]) for r in db.execute("SELECT id, key, type FROM outbox ORDER BY id")
        ]


def test_emit_commits_signed_event_with_seq_in_the_same_transaction(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db", seq_start=1) as ob:
        ev = emit(ob, "pay")
        # Another connection (another process after a power cut) sees it at once: it is committed.
        assert rows(tmp_path / "outbox.db") == [(1, "kiosk-1:1", "payment.authorize")]
        assert verify_event(ob.peek(1)[0].payload, KEY.public_key()) == ev.event
        assert ob.peek(1)[0].topic == "facegate/v1/site-1/kiosk-1/event/payment.authorize"
    with sqlite3.connect(tmp_path / "outbox.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (tmp_path / "outbox.db").stat().st_mode & 0o777 == 0o600


def test_rows_leave_only_by_ack_and_seq_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, seq_start=1) as ob:
        evs = [emit(ob, "door") for _ in range(3)]
        first = ob.peek(10)
        assert [i.key for i in first] == [e.key for e in evs]
        assert ob.peek(10, exclude=[first[0].id])[0].id == first[1].id
        assert ob.ack([first[0].id]) == 1
        assert ob.ack([first[0].id]) == 0  # a late duplicate PUBACK changes nothing
    with Outbox(path) as ob:  # the file's counter wins over a new start value
        assert [i.key for i in ob.peek(10)] == ["kiosk-1:2", "kiosk-1:3"]
        assert emit(ob, "door").seq == 4  # acked seq 1 is never reused
        st_ = ob.status()
        assert (st_["pending"], st_["enqueued_total"], st_["acked_total"]) == (3, 4, 1)


def test_full_outbox_drops_oldest_non_payment_and_reports_outbox_full(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db", max_events=4, seq_start=1) as ob:
        emit(ob, "door")  # seq 1
        emit(ob, "pay")  # seq 2
        emit(ob, "door")  # seq 3
        emit(ob, "pay")  # seq 4: now full
        emit(ob, "pay")  # seq 5: drops door 1, then seq 6 = device.status outbox_full drops door 3
        kept = [(i.key, json.loads(i.payload)["type"]) for i in ob.peek(10)]
        assert kept == [
            ("kiosk-1:2", "payment.authorize"),
            ("kiosk-1:4", "payment.authorize"),
            ("kiosk-1:5", "payment.authorize"),
            ("kiosk-1:6", "device.status"),
        ]
        assert json.loads(ob.peek(10)[-1].payload)["status"] == "outbox_full"
        status = ob.status()
        assert status["full"] and status["dropped_total"] == 2 and status["pending_payments"] == 3
        emit(ob, "pay")  # drops the status report; no second report until drained below 90 %
        assert [i.key for i in ob.peek(10)][-1] == "kiosk-1:7"
        with pytest.raises(OutboxFullError):
            emit(ob, "pay")  # only payments left: refuse, never drop a payment
        with pytest.raises(OutboxFullError):
            emit(ob, "door")
        assert ob.status()["pending_payments"] == 4
        assert emit_after_ack(ob).seq == 8  # refused emits did not burn a seq


def emit_after_ack(ob: Outbox) -> Any:
    ob.ack([ob.peek(1)[0].id])
    return emit(ob, "pay")


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("emit"), st.sampled_from(["pay", "door"])),
        st.tuples(st.just("ack"), st.integers(min_value=1, max_value=4)),
        st.tuples(st.just("reopen"), st.just("")),
    ),
    max_size=40,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS, st.integers(min_value=2, max_value=6))
def test_random_emit_ack_reopen_sequences_keep_the_invariants(
    ops: list[tuple[str, Any]], bound: int
) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "outbox.db"
        ob = Outbox(path, max_events=bound)
        created: dict[str, str] = {}  # key -> type
        acked: set[str] = set()
        last_seq = 0
        try:
            for op, arg in ops:
                if op == "emit":
                    try:
                        ev = emit(ob, arg)
                    except OutboxFullError:
                        assert all(t in PAYMENT_TYPES for _, _, t in rows(path))
                        continue
                    assert ev.seq > last_seq
                    created[ev.key] = ev.type
                    last_seq = max(int(k.split(":")[1]) for k in created)  # includes status reports
                    for _, key, type_ in rows(path):
                        created.setdefault(key, type_)
                elif op == "ack":
                    batch = ob.peek(arg)
                    assert ob.ack([i.id for i in batch]) == len(batch)
                    acked |= {i.key for i in batch}
                else:
                    ob.close()
                    ob = Outbox(path, max_events=bound)
                queued = {key for _, key, _ in rows(path)}
                assert not queued & acked, "an acked event is queued again"
                lost = set(created) - queued - acked
                assert all(created[k] not in PAYMENT_TYPES for k in lost), "a payment was dropped"
                assert len(queued) <= bound
                assert ob.status()["pending"] == len(queued)
                assert ob.status()["dropped_total"] == len(lost)
        finally:
            ob.close()


CHILD = r"""
import sys
from pathlib import Path
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from edge.trust.events import EventFactory
from edge.transport.outbox import Outbox
ob = Outbox(Path(sys.argv[1]))
f = EventFactory("kiosk-1", "site-1", Ed25519PrivateKey.generate())
while True:
    ev = ob.emit(f, "payment.authorize", subject="s", decision="accept", score=0.9,
                 liveness={"blinks": 1, "challenge_ms": 1}, amount=1, currency="EUR")
    print(ev.seq, flush=True)  # the kiosk "shows the decision" only after emit returned
"""


@pytest.mark.parametrize("kill_after_s", [0.05, 0.3, 0.7])
def test_sigkill_during_emits_loses_no_shown_event_and_reuses_no_seq(
    tmp_path: Path, kill_after_s: float
) -> None:
    path = tmp_path / "outbox.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    first = child.stdout.readline()  # start the clock once it is emitting, not while importing
    time.sleep(kill_after_s)
    os.kill(child.pid, signal.SIGKILL)
    out, _ = child.communicate()
    shown = [int(s) for s in (first + out).split()]
    assert len(shown) > 1, "the child emitted too little before being killed"
    with Outbox(path) as ob:
        stored = [int(i.key.split(":")[1]) for i in ob.peek(1_000_000)]
        assert set(shown) <= set(stored)  # every event the kiosk acted on is durable
        assert stored[0] == shown[0]  # nothing emitted before the first line the child printed
        assert stored == list(range(stored[0], stored[0] + len(stored)))  # no gap, no duplicate
        assert emit(ob, "pay").seq == stored[-1] + 1  # and the counter continues after them


def test_an_outbox_moved_aside_does_not_restart_seq_at_one(tmp_path: Path) -> None:
    """The recovery for a damaged outbox (move it aside, restart) or a state directory lost while
    the device keys survive must not reuse a `device:seq` the backend has already booked: the
    ledger would refuse every new event as a replay. A new file starts at the clock in µs; a
    burst faster than one event per millisecond once outran a start in ms."""
    path = tmp_path / "outbox.db"
    with Outbox(path) as ob:
        old = [emit(ob, "pay").seq for _ in range(200)]  # as fast as this machine emits
    assert old[0] >= int((time.time() - 60) * 1_000_000)  # starts at the wall clock, not at 1
    for name in ("outbox.db", "outbox.db-wal", "outbox.db-shm"):
        if (tmp_path / name).exists():
            (tmp_path / name).rename(tmp_path / f"{name}.damaged")
    with Outbox(path) as ob:  # at once: no sleep to hide a counter that outran the clock
        assert emit(ob, "pay").seq > max(old)
    # An injected clock decides the start; the start is where a new file's counter begins.
    with Outbox(tmp_path / "other.db", clock=lambda: 1_000.5) as ob:
        assert emit(ob, "door").seq == 1_000_500_000


# -- a full disk: SQLite's error becomes one OutboxError, and nothing half-done is left ----------


def outbox_on_a_full_disk(path: Path) -> Outbox:
    """A real outbox whose disk is full: SQLite's page limit on its connection stands in for the
    filesystem, so inserts fail exactly as on a full SD card ("database or disk is full")."""
    ob = Outbox(path, seq_start=1)
    pages = ob._db.execute("PRAGMA page_count").fetchone()[0]
    ob._db.execute(f"PRAGMA max_page_count = {pages}")
    filler = EventFactory("filler-1", "site-1", Ed25519PrivateKey.generate())
    with pytest.raises(OutboxError, match="database or disk is full"):
        for _ in range(1000):  # until the last free page is used
            ob.emit(filler, "device.status", status="online")
    return ob


def test_a_full_disk_is_an_outbox_error_naming_the_file_and_burns_no_seq(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with outbox_on_a_full_disk(path) as ob:
        stored = len(rows(path))
        with pytest.raises(OutboxError) as err:
            emit(ob, "pay")
        message = str(err.value)
        assert message.startswith("outbox error: cannot store a payment.authorize event in ")
        assert str(path) in message and "database or disk is full" in message and "df -h" in message
        assert isinstance(err.value.__cause__, sqlite3.OperationalError)
        assert len(rows(path)) == stored and not ob._db.in_transaction  # rolled back cleanly
        ob._db.execute("PRAGMA max_page_count = 1073741823")  # space freed
        assert emit(ob, "pay").seq == 1  # the failed emits used no seq of this device
        assert [r[1] for r in rows(path)][-1] == "kiosk-1:1"


# -- synchronous=FULL, measured: every commit is fsynced before emit returns ------------------

STRACE = shutil.which("strace") or "/usr/bin/strace"
SYNC_CHILD = r"""
import os, sqlite3, sys
from pathlib import Path

mode, path, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])

def mark(name):  # an openat the trace shows: the commits counted are those between the marks
    os.close(os.open(f"{path}.{name}", os.O_CREAT | os.O_WRONLY, 0o600))

if mode == "outbox":
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from edge.transport.outbox import Outbox
    from edge.trust.events import EventFactory
    ob = Outbox(path)
    f = EventFactory("kiosk-1", "site-1", Ed25519PrivateKey.generate())
    mark("begin")
    for _ in range(n):
        ob.emit(f, "door.unlock", subject="s", decision="accept", score=0.9,
                liveness={"blinks": 1, "challenge_ms": 1}, door="main")
else:  # the control: a plain connection in WAL mode with synchronous=<mode>, one commit per row
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA synchronous={mode}")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x BLOB)")
    mark("begin")
    for _ in range(n):
        db.execute("INSERT INTO t VALUES (?)", (os.urandom(300),))
mark("end")
os._exit(0)  # no close: closing checkpoints (and syncs) after the commits being counted
"""
_SYSCALL = re.compile(r"^(\d+)\s+(openat|close|fsync|fdatasync)\((.*)\)\s+=\s+(-?\d+)")


def syncs_per_commit_window(mode: str, path: Path, n: int) -> int:
    """Run SYNC_CHILD under strace; fsync/fdatasync calls on `path` or its WAL between the
    child's begin and end marks (its `n` commits)."""
    if not os.path.exists(STRACE):
        require_service("strace", f"no binary at {STRACE}; apt-get install strace")
    trace = path.parent / f"{path.name}.strace"
    proc = subprocess.run(
        [STRACE, "-f", "-e", "trace=openat,close,fsync,fdatasync", "-o", str(trace),
         sys.executable, "-c", SYNC_CHILD, mode, str(path), str(n)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if proc.returncode != 0 and "ptrace" in proc.stderr.lower():
        require_service("strace", f"cannot trace in this environment: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    targets = {str(path), f"{path}-wal"}
    fds: dict[tuple[str, int], str] = {}
    inside, syncs, marks = False, 0, []
    for line in trace.read_text().splitlines():
        m = _SYSCALL.match(line)
        if m is None:
            continue
        pid, call, args, ret = m.groups()
        if call == "openat" and int(ret) >= 0:
            name = args.split('"')[1] if '"' in args else ""
            fds[(pid, int(ret))] = name
            if name in (f"{path}.begin", f"{path}.end"):
                inside = name.endswith(".begin")
                marks.append(name)
        elif call == "close":
            fds.pop((pid, int(args)), None)
        elif inside and fds.get((pid, int(args))) in targets:
            syncs += 1
    assert len(marks) == 2, f"the child's marks are missing from the trace: {marks}"
    return syncs


def test_every_emit_is_synced_to_disk_before_it_returns(tmp_path: Path) -> None:
    n = 25
    assert syncs_per_commit_window("outbox", tmp_path / "outbox.db", n) >= n


@pytest.mark.parametrize("mode", ["OFF", "NORMAL"])
def test_the_sync_count_tells_a_weaker_synchronous_setting_apart(tmp_path: Path, mode: str) -> None:
    """The control: the same harness on a plain WAL connection without synchronous=FULL sees
    (almost) no syncs for as many commits, so the test above would catch such a setting."""
    n = 25
    syncs = syncs_per_commit_window(mode, tmp_path / "plain.db", n)
    assert syncs == 0 if mode == "OFF" else syncs < n // 2


def test_the_outbox_connection_is_wal_with_synchronous_full(tmp_path: Path) -> None:
    with Outbox(tmp_path / "outbox.db") as ob:
        assert ob._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert ob._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
