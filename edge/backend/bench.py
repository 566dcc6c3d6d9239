"""`facegate-backend bench`: events/s and latency from the kiosk outbox into the ledger.

Real processes, as deployed: one kiosk publisher (`python -m edge.measure.burst publish-burst`:
sign, commit to the SQLite outbox, publish QoS 1, delete after PUBACK), mosquitto, and N backend
workers (`facegate-backend run`) on the shared subscription, booking into one ledger.

- `events_per_s`: events / (last booking - first event creation), both wall-clock on this host.
- latency: `booked_at - ts` per event, where `ts` is the event's creation time (ms resolution)
  and `booked_at` is taken when the worker starts the booking transaction (its commit, one
  fsync, comes after). With `--rate 0` the publisher creates as fast as it can, so latency
  includes queueing in the outbox; give `--rate` below capacity to see unloaded latency.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edge.backend.devices import add_device
from edge.backend.ledger import Ledger, is_postgres_url
from edge.errors import FacegateError

PY = sys.executable


class BenchError(FacegateError):
    prefix = "bench error"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_mosquitto(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(exe):
        raise BenchError("mosquitto not found; install it or pass --broker mqtt://HOST:PORT")
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "max_queued_messages 0",
             "set_tcp_nodelay true", "persistence false"]  # fmt: skip
    if os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    with (workdir / "mosquitto.log").open("wb") as log:
        proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    _wait(lambda: _port_open(port), 10, "mosquitto to listen")
    return proc, f"mqtt://127.0.0.1:{port}"


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _wait(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise BenchError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def _pct(sorted_ms: list[float], q: float) -> float:
    i = min(len(sorted_ms) - 1, max(0, round(q * (len(sorted_ms) - 1))))
    return round(sorted_ms[i], 2)


def run_bench(
    broker_url: str,
    db: str,
    n_events: int,
    n_workers: int,
    rate: float = 0.0,
    max_inflight: int = 20,
    timeout_s: float = 300.0,
    backend_only: bool = False,
) -> dict[str, Any]:
    """Run one measurement and return its JSON-able result (see module doc).

    `backend_only`: the workers are stopped while the kiosk publishes everything (the broker
    queues it in their sessions), then restarted; `events_per_s` is then the backend's own
    drain rate (first to last booking), without the kiosk's outbox in the way.
    """
    if n_events < 1 or n_workers < 1:
        raise BenchError("--events and --workers must be ≥ 1")
    tmp = Path(tempfile.mkdtemp(prefix="facegate-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    broker_proc: subprocess.Popen[bytes] | None = None
    tag = secrets.token_hex(3)
    device = f"bench-{tag}"
    try:
        if not broker_url:
            broker_proc, broker_url = _start_mosquitto(tmp)
        db = db or str(tmp / "ledger.db")
        state = tmp / "kiosk"
        pub = subprocess.run(
            [PY, "-m", "edge.measure.burst", "pubkey", "--state-dir", str(state),
             "--device", device],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip()  # fmt: skip
        with Ledger(db) as led:
            add_device(led, device, pub, "lab")
        logs = [tmp / f"worker-{i}.log" for i in range(n_workers)]

        def start_workers(times: int) -> None:
            for i, log in enumerate(logs):
                with log.open("ab") as out:
                    procs.append(subprocess.Popen(
                        [PY, "-m", "edge.backend.cli", "run", "--broker", broker_url,
                         "--db", db, "--client-id", f"bench-{tag}-w{i}",
                         "--session-expiry", str(int(timeout_s) + 60)],
                        stdout=out, stderr=subprocess.STDOUT,
                    ))  # fmt: skip
            for log in logs:
                _wait(lambda log=log: log.read_text().count("subscribed to $share/") >= times,
                      30, f"{log.name}")  # fmt: skip

        start_workers(1)
        if backend_only:  # keep the sessions, stop the processes: the broker queues for them
            for p in procs:
                p.send_signal(signal.SIGTERM)
                p.wait(20)
            procs.clear()
        load_before = os.getloadavg()[0]
        t0 = time.time()
        publisher = subprocess.run(
            [PY, "-m", "edge.measure.burst", "publish-burst", "--state-dir", str(state),
             "--broker", broker_url, "--count", str(n_events), "--device", device,
             "--rate", str(rate), "--max-inflight", str(max_inflight),
             "--timeout", str(timeout_s)],
            capture_output=True, text=True, timeout=timeout_s + 30,
        )  # fmt: skip
        if publisher.returncode != 0:
            raise BenchError(f"publisher failed: {publisher.stderr.strip()[-300:]} (logs: {tmp})")
        pub_result = json.loads(publisher.stdout.strip().splitlines()[-1])
        if backend_only:
            start_workers(2)

        def rows() -> list[tuple[Any, ...]]:
            with Ledger(db) as led:
                return led.query(
                    "SELECT seq, ts, booked_at FROM events WHERE device = ?", (device,)
                )

        _wait(lambda: len(rows()) >= n_events, timeout_s, f"{n_events} bookings")
        time.sleep(0.3)  # a late redelivery would show up as a duplicate count, never a row
        booked = rows()
        with Ledger(db) as led:
            redeliveries = led.rejection_counts().get("duplicate", 0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        if broker_proc is not None:
            broker_proc.terminate()
            broker_proc.wait(10)
    seqs = [int(r[0]) for r in booked]
    lat_ms = sorted((float(r[2]) - float(r[1])) * 1000.0 for r in booked)
    first_created = min(float(r[1]) for r in booked)
    first_booked = min(float(r[2]) for r in booked)
    last_booked = max(float(r[2]) for r in booked)
    span_s = last_booked - (first_booked if backend_only else first_created)
    result: dict[str, Any] = {
        "events": n_events,
        "workers": n_workers,
        "publisher_rate_limit": rate,
        "publisher_max_inflight": max_inflight,
        "ledger": "postgresql" if is_postgres_url(db) else "sqlite",
        "broker": broker_url if broker_proc is None else "private mosquitto",
        "mode": "backend_only" if backend_only else "outbox_to_ledger",
        "events_per_s": round(n_events / max(1e-9, span_s), 1),
        "create_events_per_s": round(n_events / max(1e-9, float(pub_result["create_s"])), 1),
        "wall_s": round(last_booked - t0, 3),
        "latency_ms": {
            "p50": _pct(lat_ms, 0.50), "p95": _pct(lat_ms, 0.95),
            "p99": _pct(lat_ms, 0.99), "max": round(lat_ms[-1], 2),
        },  # fmt: skip
        "booked": len(set(seqs)),
        "duplicates_booked": len(seqs) - len(set(seqs)),
        "lost": len(set(range(1, n_events + 1)) - set(seqs)),
        "redeliveries_absorbed": redeliveries,
        "cpus": os.cpu_count(),
        "loadavg_1m_before": round(load_before, 2),
    }
    shutil.rmtree(tmp, ignore_errors=True)  # kept (with logs) only when the run failed
    return result
