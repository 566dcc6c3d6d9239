"""`facegate-backend bench`: events/s and latency from the kiosk outbox into the ledger.

Real processes, as deployed: `--devices` kiosk publishers (`python -m edge.measure.burst
publish-burst`: sign, commit to the SQLite outbox, publish QoS 1, delete after PUBACK, one
device each), mosquitto, and N backend workers (`facegate-backend run`) on the shared
subscription, booking into one ledger.

Default mode (outbox → ledger, workers running while the kiosks publish):
- `events_per_s`: events / (last booking - first event creation), both wall-clock on this host.
- `latency_ms`: `booked_at - ts` per event, where `ts` is the event's creation time (ms
  resolution) and `booked_at` is taken when the worker starts the batch's transaction (its
  commit comes after). With `--rate 0` the publishers create as fast as they can, so latency
  includes queueing in the outboxes; give `--rate` below capacity to see unloaded latency.

`--backend-only` (the backend's own drain rate): the workers subscribe once and stop (SIGTERM,
sessions kept), every event is published into the broker, which queues them in the workers'
sessions; then the workers start again and drain the queue. The kiosks are not timed at all.
- `events_per_s`: events / (last PUBACK sent by a worker - first message received by a worker).
- `latency_ms`: per event, message handed to the worker → its PUBACK queued after the batch
  committed (what a kiosk waits for at the backend; the queue wait before is the bench's own).
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


def _wait(pred: Any, timeout_s: float, what: str, every_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(every_s)
    raise BenchError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def _proc_cpu_s(proc: subprocess.Popen[bytes] | None) -> float:
    """User + system CPU seconds of a child process so far (Linux /proc; 0.0 elsewhere)."""
    if proc is None:
        return 0.0
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    n_devices: int = 1,
) -> dict[str, Any]:
    """Run one measurement and return its JSON-able result (see module doc).

    `backend_only`: the workers are stopped while the kiosks publish everything (the broker
    queues it in their sessions), then restarted; `events_per_s` is then the backend's own
    drain rate (first message received to last PUBACK sent), without the outboxes in the way.
    """
    if n_events < 1 or n_workers < 1 or not 1 <= n_devices <= min(n_events, 64):
        raise BenchError("--events and --workers must be ≥ 1, --devices 1..min(events, 64)")
    tmp = Path(tempfile.mkdtemp(prefix="facegate-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    broker_proc: subprocess.Popen[bytes] | None = None
    tag = secrets.token_hex(3)
    device = f"bench-{tag}"
    try:
        if not broker_url:
            broker_proc, broker_url = _start_mosquitto(tmp)
        db = db or str(tmp / "ledger.db")
        devices = [f"bench-{tag}-d{i}" for i in range(n_devices)]
        counts = [n_events // n_devices + (i < n_events % n_devices) for i in range(n_devices)]
        for device in devices:
            pub = subprocess.run(
                [PY, "-m", "edge.measure.burst", "pubkey", "--state-dir", str(tmp / device),
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
                         "--session-expiry", str(int(timeout_s) + 60),
                         "--latency-file", str(tmp / f"latency-{i}.json")],
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
        publishers = [
            subprocess.Popen(
                [PY, "-m", "edge.measure.burst", "publish-burst", "--state-dir", str(tmp / d),
                 "--broker", broker_url, "--count", str(c), "--device", d,
                 "--rate", str(rate / n_devices), "--max-inflight", str(max_inflight),
                 "--timeout", str(timeout_s)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            for d, c in zip(devices, counts, strict=True)
        ]
        pub_results = []
        for pp in publishers:
            out, err = pp.communicate(timeout=timeout_s + 30)
            if pp.returncode != 0:
                raise BenchError(f"publisher failed: {err.strip()[-300:]} (logs: {tmp})")
            pub_results.append(json.loads(out.strip().splitlines()[-1]))
        broker_cpu0 = _proc_cpu_s(broker_proc)  # backend_only: the drain starts now
        if backend_only:
            start_workers(2)
        marks = ",".join("?" * n_devices)

        def booked_count() -> int:
            with Ledger(db) as led:
                q = f"SELECT COUNT(*) FROM events WHERE device IN ({marks})"
                return int(led.query(q, devices)[0][0])

        _wait(lambda: booked_count() >= n_events, timeout_s, f"{n_events} bookings", 0.25)
        broker_cpu_s = _proc_cpu_s(broker_proc) - broker_cpu0
        time.sleep(0.3)  # a late redelivery would show up as a duplicate count, never a row
        with Ledger(db) as led:
            booked = led.query(
                f"SELECT device, seq, ts, booked_at FROM events WHERE device IN ({marks})",
                devices,
            )
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
    drains = [json.loads((tmp / f"latency-{i}.json").read_text()) for i in range(n_workers)]
    keys = [(str(r[0]), int(r[1])) for r in booked]
    lost = sum(
        len(set(range(1, c + 1)) - {q for d, q in keys if d == dev})
        for dev, c in zip(devices, counts, strict=True)
    )
    if backend_only:
        lat_ms = sorted(x for d in drains for x in d["latency_ms"])
        active = [d for d in drains if d["first_rx"]]
        span_s = max(d["last_ack"] for d in active) - min(d["first_rx"] for d in active)
        basis = "worker receive -> PUBACK after commit"
    else:
        lat_ms = sorted((float(r[3]) - float(r[2])) * 1000.0 for r in booked)
        span_s = max(float(r[3]) for r in booked) - min(float(r[2]) for r in booked)
        basis = "event creation -> booking transaction"
    create_s = max(float(r["create_s"]) for r in pub_results)
    result: dict[str, Any] = {
        "events": n_events,
        "workers": n_workers,
        "devices": n_devices,
        "publisher_rate_limit": rate,
        "publisher_max_inflight": max_inflight,
        "ledger": "postgresql" if is_postgres_url(db) else "sqlite",
        "broker": broker_url if broker_proc is None else "private mosquitto",
        "mode": "backend_only" if backend_only else "outbox_to_ledger",
        "events_per_s": round(n_events / max(1e-9, span_s), 1),
        "create_events_per_s": round(n_events / max(1e-9, create_s), 1),
        "wall_s": round(time.time() - t0, 3),
        "latency_basis": basis,
        "latency_ms": {
            "p50": _pct(lat_ms, 0.50), "p95": _pct(lat_ms, 0.95),
            "p99": _pct(lat_ms, 0.99), "max": round(lat_ms[-1], 2),
        },  # fmt: skip
        # CPU the worker processes spent per event while draining (all their threads; the
        # broker and the database use more on top): a figure less sensitive to a busy machine
        "worker_cpu_us_per_event": round(
            sum(float(d.get("cpu_s", 0.0)) for d in drains) / n_events * 1e6, 1
        ),
        # the private broker's CPU from the workers' start to the last booking (backend_only:
        # the drain alone), and what 2 free cores would allow if worker + broker CPU were the
        # whole cost (PostgreSQL's server CPU is not counted)
        "broker_cpu_us_per_event": (
            round(broker_cpu_s / n_events * 1e6, 1) if broker_proc is not None else None
        ),
        "booked": len(set(keys)),
        "duplicates_booked": len(keys) - len(set(keys)),
        "lost": lost,
        "redeliveries_absorbed": redeliveries,
        "cpus": os.cpu_count(),
        "loadavg_1m_before": round(load_before, 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }
    per_event_us = result["worker_cpu_us_per_event"] + (result["broker_cpu_us_per_event"] or 0)
    result["cpu_bound_events_per_s"] = round((os.cpu_count() or 1) * 1e6 / max(1.0, per_event_us))
    shutil.rmtree(tmp, ignore_errors=True)  # kept (with logs) only when the run failed
    return result
