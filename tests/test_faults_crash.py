"""Crashes with real processes, receipts on, the backend running: every event ends booked once.

(a) the broker is SIGKILLed mid-burst (nothing since its start saved) and started again on the
    same port with the same persistence dir, while the burst tool (--backend-public-key) and a
    worker (--key-dir) keep running: the outbox ends empty, every event booked once;
(b) a PRIVATE PostgreSQL cluster (initdb on a free port; the shared server is not touched) is
    crashed (`pg_ctl stop -m immediate`) and started again under two workers mid-burst;
(c) the bakery kiosk (`facegate run`) is SIGKILLed during its second customer's session, its
    first payment committed and published but not yet settled (the worker is down for a deploy);
    the worker comes back, `facegate run` comes up again on the same state dir, and everything
    either run committed is booked exactly once, with no seq used twice.

Each test prints `FAULT-RESULT {json}` (created / booked / duplicates / double_booked / lost,
the seed) and appends it to $FACEGATE_FAULT_REPORT when set. Seed: $FACEGATE_FAULT_SEED.
"""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_faults_receipts
from _backend import REPO, assert_exactly_once, backend, make_rig, wait_for
from _broker import free_port, start_mosquitto
from conftest import require_service
from test_faults_receipts import SEED, _finished, _report, _unsettled

from edge.backend.ledger import Ledger

pytestmark = pytest.mark.slow
rig = test_faults_receipts.rig  # fixture: broker, SQLite ledger, backend key dir, processes
ReceiptRig = test_faults_receipts.Rig


def _outbox_rows(state: Path) -> int:
    with sqlite3.connect(f"file:{state / 'outbox.db'}?mode=ro", uri=True, timeout=5) as db:
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def _last_seq(state: Path) -> int:
    """The kiosk's persisted seq counter (0 before its first committed event)."""
    path = state / "outbox.db"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            row = db.execute("SELECT MAX(last) FROM seq").fetchone()
    except sqlite3.OperationalError:  # schema not created yet
        return 0
    return int(row[0] or 0)


# ---------------------------------------------------------------------------- (a) broker


def test_broker_sigkilled_mid_burst_with_receipts_loses_and_doubles_nothing(
    rig: ReceiptRig,
) -> None:
    n, rng = 300, random.Random(SEED)
    state = rig.register("kiosk-crash")
    worker = rig.worker()
    burst = rig.burst("kiosk-crash", n, "--rate", "200", receipts=True)  # ≈ 1.5 s of traffic
    target = rng.randint(40, 220)
    at_target = lambda: _last_seq(state) >= target or burst.poll() is not None  # noqa: E731
    wait_for(at_target, 30, f"{target} events created", 0.005)
    assert burst.poll() is None, "the burst finished before the broker was killed"
    rig.broker.kill()  # power cut: queued and in-flight QoS 1 messages since start are gone
    killed = time.monotonic()
    created_at_kill, unsettled_at_kill = _last_seq(state), _unsettled(state)
    rig.broker.start()  # same port, same persistence dir
    out = _finished(burst)
    settle_s = round(time.monotonic() - killed, 2)
    assert out["drained"] and out["pending"] == 0 and out["settled"] == n, out
    assert worker.poll() is None, "the worker must ride out the broker's crash"
    got = rig.result("kiosk-crash", n)
    _report("broker_sigkill_mid_burst_receipts", {
        **got, "duplicates": rig.duplicates(), "created_at_kill": created_at_kill,
        "unsettled_at_kill": unsettled_at_kill, "reconnects": out.get("reconnects"),
        "kill_to_settled_s": settle_s,
    })  # fmt: skip
    assert got == {"created": n, "booked": n, "double_booked": 0, "lost": 0}
    assert 0 < created_at_kill < n
    assert _outbox_rows(state) == 0 and _unsettled(state) == 0  # every row left on a receipt


# ---------------------------------------------------------------------------- (b) PostgreSQL


class PrivatePostgres:
    """A throw-away PostgreSQL cluster on a free 127.0.0.1 port (trust auth), run as the
    `postgres` user when the tests run as root (initdb refuses root)."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            require_service("PostgreSQL server binaries", "no /usr/lib/postgresql/*/bin/initdb")
        self.bin = Path(bins[-1]).parent
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if not runuser:
                require_service("runuser", "needed to run initdb/pg_ctl as user postgres")
            self.as_user = [runuser, "-u", "postgres", "--"]
        # Not under pytest's tmp_path: its parents are private to root, `postgres` can't enter.
        self.root = Path(tempfile.mkdtemp(prefix="fg-pg-"))
        if self.as_user:
            shutil.chown(self.root, "postgres", "postgres")
        self.data, self.port = self.root / "data", free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        try:
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                      "--no-sync", "-E", "UTF8")  # fmt: skip
            self.start()
        except BaseException:  # a failed (or skipped) setup leaves no cluster or directory
            self.close()
            raise

    def _run(self, tool: str, *args: str) -> str:
        try:
            r = subprocess.run([*self.as_user, str(self.bin / tool), *args],
                               capture_output=True, text=True, timeout=60)  # fmt: skip
        except OSError as exc:
            require_service("private PostgreSQL", f"{tool}: {exc}")
        if r.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise AssertionError(f"{tool} {args} -> {r.returncode}: {r.stderr[-1500:]}\n{tail}")
        return r.stdout

    def start(self) -> None:
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", opts, "-w", "-t", "30", "start")  # fmt: skip

    def crash(self) -> None:
        """Stop without a checkpoint, as a power cut would: recovery replays the WAL."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    try:
        yield pg
    finally:
        pg.close()


def test_postgres_crashed_and_restarted_mid_burst_loses_and_doubles_nothing(
    tmp_path: Path, private_pg: PrivatePostgres
) -> None:
    n, rng = 300, random.Random(SEED + 3)
    rig = make_rig(tmp_path, start_mosquitto(tmp_path), private_pg.url)
    try:
        burst = rig.publisher(n, "--rate", "150")  # ≈ 2 s of traffic
        target = rng.randint(40, 180)

        def booked() -> int:
            with rig.ledger() as led:
                return led.count()

        wait_for(lambda: booked() >= target, 30, f"{target} bookings before the crash")
        private_pg.crash()
        time.sleep(rng.uniform(0.2, 0.8))  # down while events keep arriving
        private_pg.start()
        out, err = burst.communicate(timeout=60)
        assert burst.returncode == 0, err[-2000:]
        assert json.loads(out.strip().splitlines()[-1])["pending"] == 0
        rig.wait_booked(n, 45)
        codes = rig.stop_all()
        result = assert_exactly_once(rig, n)
        with rig.ledger() as led:
            seqs = led.keys_by_device().get(rig.device, [])
        retries = sum(
            (tmp_path / f"{name}.log").read_text(errors="replace").count("ledger: ")
            for name in rig.workers
        )
        _report("postgres_crash_restart", {
            **result, "double_booked": len(seqs) - len(set(seqs)),
            "duplicates": result["redeliveries_absorbed"], "crashed_at_booked": target,
            "worker_retries_logged": retries, "settled_by_workers": dict(rig.settled()),
        })  # fmt: skip
        assert codes == {"backend-1": 0, "backend-2": 0}, "the workers must ride out the crash"
        assert retries >= 1, "no worker noticed the crash"
    finally:
        for proc in rig.workers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        rig.broker.stop()


# ---------------------------------------------------------------------------- (c) kiosk


def _seq(event: str) -> int:
    return int(event.rsplit(":", 1)[1])


def _committed(state: Path) -> set[str]:
    """`type:seq` of every event still in the kiosk's outbox (queued or unsettled)."""
    with sqlite3.connect(f"file:{state / 'outbox.db'}?mode=ro", uri=True, timeout=5) as db:
        return {f"{t}:{s}" for t, s in db.execute("SELECT type, seq FROM outbox")}


def test_kiosk_sigkilled_mid_session_comes_back_and_books_every_event_once(
    rig: ReceiptRig, tmp_path: Path, portrait_enrol: Path, portrait_verify: Path
) -> None:
    from _cli import cli_env, facegate
    from test_profiles_e2e import _frames, empty_scene, enroll, init_device, profile_config
    from test_profiles_e2e import write_clip as write_avi

    rng = random.Random(SEED + 4)
    face, fps = _frames(portrait_verify, 0, 150)
    gap = empty_scene(face[0], 1.0, fps)
    clip = write_avi(tmp_path / "counter.avi", fps, [face[:50], gap, face[50:100], gap, face[100:]])
    state = tmp_path / "kiosk" / "state"
    sections: dict[str, dict[str, Any]] = {
        "backend": {"public_key": rig.backend_public},
        "mqtt": {"resend_min_s": 0.3, "resend_max_s": 1.0, "heartbeat_s": 0.0},
        "paths": {"state_dir": str(state)},
    }
    configs = []
    for name, realtime in (("live", True), ("fast", False)):  # the restart replays fast
        (tmp_path / name).mkdir()
        configs.append(profile_config("bakery", tmp_path / name, rig.broker, clip,
                                      realtime=realtime, **sections))  # fmt: skip
    live, fast = configs
    device, signing_public = init_device(live)
    enroll(live, "s-1001", portrait_enrol)
    site = tomllib.loads(live.read_text())["device"]["site"]
    backend("devices", "add", device, signing_public, "--site", site, "--db", rig.db)
    worker = rig.worker()  # subscribes once, then is down for a deploy during the first run:
    worker.send_signal(signal.SIGTERM)  # the kill then finds PUBACKed, unsettled rows
    assert worker.wait(20) == 0
    claim = ("--claim", "s-1001 42.00 pos-7")

    log = (tmp_path / "run-1.log").open("wb")
    first = subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--config", str(live), *claim], env=cli_env(live),
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    rig.procs.append(first)
    log.close()
    run_log = tmp_path / "run-1.log"

    def next_session() -> bool:  # a payment committed, the next customer is being served
        started = run_log.read_text(errors="replace").count("Please look at the camera")
        return (_last_seq(state) >= 1 and started >= 2) or first.poll() is not None

    wait_for(next_session, 90, "the second session", 0.01)
    time.sleep(rng.uniform(0.0, 0.4))
    assert first.poll() is None, (tmp_path / "run-1.log").read_text()[-2000:]
    first.send_signal(signal.SIGKILL)
    first.wait()
    last_at_kill = _last_seq(state)
    with Ledger(rig.db) as led:
        booked_at_kill = {
            f"{t}:{s}"
            for t, s in led.query("SELECT type, seq FROM events WHERE device = ?", (device,))
        }
    in_outbox = _committed(state)
    rig.worker()  # the backend is back before the kiosk restarts
    before = booked_at_kill | in_outbox  # everything run 1 committed, booked or not yet
    first_seq = min(_seq(e) for e in before)  # the kiosk starts its seqs at the clock (µs)
    assert sorted(_seq(e) for e in before) == list(range(first_seq, last_at_kill + 1)), (
        f"torn state: seq counter {last_at_kill}, events {sorted(before)}"
    )

    env = cli_env(fast)
    second = facegate(env, "run", *claim, timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    after = json.loads(second.stdout.strip().splitlines()[-1])["events"]
    assert after, second.stdout[-2000:]
    drain = facegate(env, "outbox", "drain", "--timeout", "30")
    assert drain.returncode == 0, drain.stdout + drain.stderr[-2000:]
    status = json.loads(facegate(env, "outbox", "status").stdout)
    with Ledger(rig.db) as led:
        rows = led.query("SELECT type, seq FROM events WHERE device = ?", (device,))
        refused = {k: v for k, v in led.rejection_counts().items() if k != "duplicate"}
    booked = sorted(f"{t}:{s}" for t, s in rows)
    seqs = sorted(int(s) for _, s in rows)
    created = before | set(after)
    result = {
        "created": len(created), "booked": len(booked),
        "double_booked": len(booked) - len(set(booked)),
        "lost": len(created - set(booked)), "duplicates": rig.duplicates(),
        "committed_before_kill": len(before), "in_outbox_at_kill": len(in_outbox),
        "seq_at_kill": last_at_kill, "events_after_restart": len(after),
    }  # fmt: skip
    _report("kiosk_sigkill_mid_session/bakery_run", result)
    assert refused == {}, refused
    assert min(_seq(e) for e in after) == last_at_kill + 1, after  # no seq used twice
    assert booked == sorted(created)
    assert seqs == list(range(first_seq, first_seq + len(created))), seqs
    assert status["pending"] == 0 and status["settled_total"] >= len(after), status
    assert any(e.startswith("payment.") for e in before), before
    assert in_outbox and not booked_at_kill  # the kill found unsettled rows, kept through it
