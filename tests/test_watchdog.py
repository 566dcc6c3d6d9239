"""The systemd watchdog through a camera outage: `facegate run` keeps pinging while the camera is
reopened, and ends with a one-line reason and a non-zero exit when the camera stays gone.

The camera is a FIFO fed with a y4m stream (as a camera helper such as ffmpeg would); systemd is
a real unix datagram socket named by NOTIFY_SOCKET, with WATCHDOG_USEC set as systemd sets it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _cli import REPO, cli_env

from edge.kiosk.sdnotify import Notifier, watchdog_interval_s

WATCHDOG_S = 2.0
GIVE_UP_S = 3.0
BLIP_S = 1.5  # the first outage: shorter than GIVE_UP_S, so the camera is reopened
W, H, FPS = 160, 120, 10


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: every datagram with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def times(self, prefix: str) -> list[float]:
        return [t for t, m in self.messages if m.startswith(prefix)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.sock.close()
        self.path.unlink(missing_ok=True)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory path: a unix socket path must fit in 108 bytes."""
    with tempfile.TemporaryDirectory(prefix="fg-wd-") as d:
        yield Path(d)


def _open_writer(fifo: Path, timeout_s: float) -> int | None:
    """The write end of the FIFO once facegate holds the read end (None after timeout_s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)
            continue
        os.set_blocking(fd, True)
        return fd


def _stream(fd: int, seconds: float) -> None:
    os.write(fd, f"YUV4MPEG2 W{W} H{H} F{FPS}:1 Ip A1:1 C444\n".encode())
    gray = np.full((3, H, W), 128, np.uint8)
    gray[0] = np.linspace(16, 235, W, dtype=np.uint8)[None, :]  # a ramp, not a face
    for _ in range(int(seconds * FPS)):
        os.write(fd, b"FRAME\n" + gray.tobytes())
        time.sleep(1 / FPS)


def _camera(fifo: Path, marks: dict[str, float]) -> None:
    """A camera helper: streams, stops for BLIP_S (the FIFO stays: facegate's reopening hangs
    in open() until the helper is back), streams again, then stops and its FIFO vanishes (the
    camera is unplugged for good)."""
    fd = _open_writer(fifo, 60)
    if fd is None:
        return
    try:
        _stream(fd, 1.0)
        os.close(fd)
        marks["blip"] = time.monotonic()
        time.sleep(BLIP_S)
        fd = _open_writer(fifo, 10)
        if fd is None:
            return
        marks["back"] = time.monotonic()
        _stream(fd, 1.0)
    except BrokenPipeError:
        pass
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)  # type: ignore[arg-type]
        fifo.unlink()
        marks["gone"] = time.monotonic()


def test_watchdog_is_pinged_through_camera_outages_and_a_lost_camera_ends_the_process(
    short_dir: Path,
) -> None:
    systemd = FakeSystemd(short_dir / "notify")
    fifo = short_dir / "cam.fifo"
    os.mkfifo(fifo)
    cfg = short_dir / "kiosk.toml"
    cfg.write_text(
        f'profile = "demo"\n[device]\nid = "kiosk-wd-0001"\nsite = "lab"\n'
        f'[paths]\nstate_dir = "{short_dir / "state"}"\n'
        f'[camera]\nsource = "file:{fifo}"\nread_timeout_s = 1.0\nreopen_attempts = 1000\n'
        f"reopen_backoff_s = 0.2\nreopen_give_up_s = {GIVE_UP_S}\n[mqtt]\nenabled = false\n"
    )
    env = cli_env(cfg)
    env.update(NOTIFY_SOCKET=str(systemd.path), WATCHDOG_USEC=str(int(WATCHDOG_S * 1e6)))
    marks: dict[str, float] = {}
    camera = threading.Thread(target=_camera, args=(fifo, marks), daemon=True)
    camera.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "edge", "run"], env=env, cwd=REPO, capture_output=True,
            text=True, stdin=subprocess.DEVNULL, timeout=120, check=False,
        )  # fmt: skip
        exited_at = time.monotonic()
        camera.join(5)
        time.sleep(0.1)  # the last datagrams
    finally:
        systemd.close()
    detail = f"exit {proc.returncode}\nstderr: {proc.stderr[-3000:]}\nnotify: {systemd.messages}"
    assert {"blip", "back", "gone"} <= marks.keys(), (marks, detail)
    gone_at = [marks["gone"]]

    # The first outage was recovered: facegate's hanging open() returned when the helper was back.
    assert "reopened after a stall (attempt 1)" in proc.stderr, detail
    # The second time it never came back: a non-zero exit, a one-line reason, no traceback.
    assert proc.returncode == 2, detail
    assert "Traceback" not in proc.stderr, detail
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"source error: file:{fifo}: camera stopped delivering frames"), last
    assert f"camera.reopen_give_up_s = {GIVE_UP_S:g}" in last, last
    outage_s = exited_at - gone_at[0]
    assert GIVE_UP_S <= outage_s <= GIVE_UP_S + 2.0, (outage_s, detail)

    # systemd saw READY, then pings that never left a gap near the watchdog interval (it would
    # have killed the recovery), including all through the reopen, then STOPPING.
    ready, stopping = systemd.times("READY=1"), systemd.times("STOPPING=1")
    pings = systemd.times("WATCHDOG=1")
    assert ready and stopping, detail
    during = [t for t in pings if t >= gone_at[0]]
    assert len(during) >= int(GIVE_UP_S / (WATCHDOG_S / 2)), (len(during), detail)
    blip = [t for t in pings if marks["blip"] <= t <= marks["back"]]
    assert len(blip) >= int(BLIP_S / (WATCHDOG_S / 2)), (len(blip), detail)
    stamps = [ready[0], *[t for t in pings if t > ready[0]], stopping[0]]
    gaps = np.diff(stamps)
    assert gaps.max() <= WATCHDOG_S / 2, f"largest gap between pings {gaps.max():.2f} s; {detail}"
    outage_gaps = np.diff([gone_at[0], *during])
    print(f"\npings: {len(pings)} total, {len(blip)} during the {BLIP_S:g} s outage that "
          f"recovered, {len(during)} during the {outage_s:.1f} s one that did not; "
          f"gap max {gaps.max():.3f} s, median {np.median(gaps):.3f} s; outage gap max "
          f"{outage_gaps.max():.3f} s (WATCHDOG_USEC = {WATCHDOG_S:g} s)")


def test_watchdog_interval_comes_from_systemds_environment() -> None:
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "10000000"}) == 10.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "42"}, pid=42) == 2.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "41"}, pid=42) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "ten"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert Notifier("", watchdog_s=2.0).ping_every_s is None  # no socket: nothing to ping


def test_failed_notify_sends_are_logged_once_per_failure_streak(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = short_dir / "notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    notifier = Notifier(str(path), watchdog_s=WATCHDOG_S)
    caplog.set_level(logging.INFO, logger="edge.kiosk.sdnotify")
    try:
        assert notifier.watchdog()
        receiver.close()  # systemd gone: the socket file stays, nobody listens
        assert not any(notifier.watchdog() for _ in range(20))
        path.unlink()
        assert not notifier.watchdog()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "sd_notify to" in warnings[0].getMessage(), caplog.text
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(str(path))
        assert notifier.watchdog()
        assert "works again after 21 failed sends" in caplog.text
        receiver.close()
        assert not notifier.watchdog()
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
    finally:
        with contextlib.suppress(OSError):
            receiver.close()
