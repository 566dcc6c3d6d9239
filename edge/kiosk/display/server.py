"""`DisplayServer`: the prompt page and its live state stream on 127.0.0.1 (a `Listener`).

aiohttp runs on its own asyncio loop in a daemon thread. The kiosk thread calls `publish`,
which only hands the state to that loop (`call_soon_threadsafe`) and returns; each browser gets
a bounded queue that drops its oldest state when the browser falls behind, so a stuck page can
neither block the kiosk nor grow memory. Routes: `GET /` (the page), `GET /events` (SSE: the
current state at once, then every update), `GET /healthz`, and `GET /preview.jpg` (the latest
camera frame as JPEG from memory, only with `preview` on; 404 otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import threading
from collections import deque
from typing import Any

import numpy as np
import numpy.typing as npt
from aiohttp import web
from aiohttp_sse import EventSourceResponse

from edge.config import DisplayConfig
from edge.errors import FacegateError
from edge.kiosk.display.messages import render
from edge.kiosk.display.page import page_html
from edge.kiosk.display.state import KioskState

log = logging.getLogger(__name__)

HOST = "127.0.0.1"  # the page is for the kiosk's own screen only, never the network
RETRY_MS = 1000  # SSE `retry:`: how soon a page reconnects after the server went away
HEARTBEAT_S = 5.0  # a quiet stream sends a `ping` event this often; the page watches for it
CLIENT_QUEUE = 16  # states buffered per page before the oldest is dropped
START_TIMEOUT_S = 10.0
SEND_TIMEOUT_S = 10.0  # a page that takes no data this long is dropped (it reconnects)
PREVIEW_MAX_WIDTH = 480  # px; the preview is a framing aid, not a recording


class DisplayError(FacegateError):
    """The display server cannot start (port taken, no permission)."""

    prefix = "display error"


class DisplayPortInUseError(DisplayError):
    """The configured display port is already bound by another process."""


class _Client:
    """One connected page: its pending messages (oldest dropped first) and a wake-up."""

    def __init__(self, size: int) -> None:
        self.queue: deque[str] = deque(maxlen=size)
        self.wake = asyncio.Event()
        self.dropped = 0

    def push(self, message: str) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append(message)
        self.wake.set()


class DisplayServer:
    """Serves the display page on 127.0.0.1:`port`; `publish` may be called from any thread."""

    def __init__(
        self,
        port: int = 8080,
        *,
        preview: bool = False,
        queue_size: int = CLIENT_QUEUE,
        retry_ms: int = RETRY_MS,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        """`port` 0 picks a free port (tests); `preview` serves /preview.jpg from memory."""
        self.preview = preview
        self._port = port
        self._queue_size = queue_size
        self._retry_ms = retry_ms
        self._heartbeat_s = heartbeat_s
        self._lock = threading.Lock()
        self._latest = KioskState("look")
        self._frame: npt.NDArray[np.uint8] | None = None
        self._frame_no = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._stopping = False
        self._startup_error: BaseException | None = None
        # Owned by the server's loop thread once started:
        self._runner: web.AppRunner | None = None
        self._clients: set[_Client] = set()
        self._current = ""
        self._current_state = ""
        self._seq = 0
        self._closing = False
        self._jpeg: tuple[int, bytes] | None = None

    @classmethod
    def from_config(cls, cfg: DisplayConfig) -> DisplayServer:
        """A server for the `[display]` section (port, preview)."""
        return cls(cfg.port, preview=cfg.preview)

    @property
    def port(self) -> int:
        """The bound port (the chosen one when constructed with 0 and started)."""
        return self._port

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._port}/"

    @property
    def running(self) -> bool:
        with self._lock:
            return self._running

    # -- the kiosk side (any thread) -------------------------------------------------------

    def publish(self, state: KioskState) -> None:
        """Show `state` on every connected page; returns at once (the loop does the work)."""
        with self._lock:
            self._latest = state
            if not self._running or self._loop is None:
                return  # shown as the current state when the server starts
            try:
                self._loop.call_soon_threadsafe(self._deliver, state)
            except RuntimeError:  # the loop died under us; the state is kept as _latest
                log.warning("display loop is gone; state %r not sent", state.state)

    def show_frame(self, image: npt.NDArray[np.uint8]) -> None:
        """Offer the latest camera frame, (H, W, 3) uint8 RGB, to the preview (kept in
        memory only, never written to disk); does nothing with `preview` off."""
        if not self.preview:
            return
        frame = np.array(image, dtype=np.uint8, copy=True)  # the camera may reuse its buffer
        with self._lock:
            self._frame = frame
            self._frame_no += 1

    def start(self) -> None:
        """Bind 127.0.0.1:`port` and serve; DisplayPortInUseError when the port is taken."""
        with self._lock:
            if self._thread is not None:
                return
            self._startup_error = None
            self._stopping = False
            ready = threading.Event()
            thread = threading.Thread(
                target=self._run, args=(ready,), name="display-server", daemon=True
            )
            self._thread = thread
        thread.start()
        if not ready.wait(START_TIMEOUT_S):
            self.stop()
            raise DisplayError(f"display server did not start within {START_TIMEOUT_S:g} s")
        if self._startup_error is not None:
            thread.join()
            with self._lock:
                self._thread = None
            raise self._startup_error
        log.info("display page on %s", self.url)

    def stop(self) -> None:
        """Close every stream and the listening socket; joins the server thread. Idempotent."""
        with self._lock:
            thread, loop = self._thread, self._loop
            self._running = False
            self._stopping = True  # a server still starting up stops right after
        if thread is None:
            return
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # already stopped and closed
                loop.call_soon_threadsafe(loop.stop)
        thread.join()
        with self._lock:
            self._thread = None
            self._loop = None

    def __enter__(self) -> DisplayServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the server's loop thread ----------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:
                self._startup_error = self._explain(exc)
                loop.run_until_complete(self._close())
                return
            with self._lock:
                stopping = self._stopping
                self._loop = None if stopping else loop
                self._running = not stopping
            ready.set()
            if not stopping:
                loop.run_forever()
            loop.run_until_complete(self._close())
        finally:
            ready.set()
            loop.close()

    def _explain(self, exc: BaseException) -> BaseException:
        if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
            return DisplayPortInUseError(
                f"{HOST}:{self._port} is already in use by another process; stop that process "
                f"or choose a free port with [display] port in the config"
            )
        if isinstance(exc, OSError):
            return DisplayError(f"cannot serve the display page on {HOST}:{self._port}: {exc}")
        return exc

    async def _open(self) -> None:
        with self._lock:
            latest = self._latest
        self._closing = False
        self._deliver(latest)
        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_get("/events", self._events)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/preview.jpg", self._preview)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, self._port).start()
        self._port = int(self._runner.addresses[0][1])  # the port chosen when asked for 0

    async def _close(self) -> None:
        self._closing = True
        for client in self._clients:
            client.wake.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _deliver(self, state: KioskState) -> None:
        self._seq += 1
        message = {**state.to_json(), **render(state), "seq": self._seq}
        self._current = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
        self._current_state = state.state
        for client in self._clients:
            client.push(self._current)

    async def _page(self, request: web.Request) -> web.Response:
        html = page_html(
            retry_ms=self._retry_ms,
            heartbeat_ms=int(self._heartbeat_s * 1000),
            preview=self.preview,
        )
        return web.Response(
            text=html, content_type="text/html", headers={"Cache-Control": "no-store"}
        )

    async def _events(self, request: web.Request) -> web.StreamResponse:
        client = _Client(self._queue_size)
        stream = EventSourceResponse(ping_interval=3600.0, send_timeout=SEND_TIMEOUT_S)
        self._clients.add(client)
        try:
            await stream.prepare(request)
            async with stream:
                await stream.send(self._current, retry=self._retry_ms)
                while not self._closing:
                    try:
                        async with asyncio.timeout(self._heartbeat_s):
                            await client.wake.wait()
                    except TimeoutError:
                        await stream.send("{}", event="ping")
                        continue
                    client.wake.clear()
                    while client.queue and not self._closing:
                        await stream.send(client.queue.popleft())
        except (ConnectionResetError, TimeoutError):
            pass  # the page went away or stalled; a live page reconnects by itself
        finally:
            self._clients.discard(client)
            if client.dropped:
                log.info("a slow display page missed %d states", client.dropped)
        return stream

    async def _healthz(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {
            "ok": True,
            "seq": self._seq,
            "state": self._current_state,
            "clients": len(self._clients),
            "preview": self.preview,
        }
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def _preview(self, request: web.Request) -> web.Response:
        if not self.preview:
            raise web.HTTPNotFound(text="preview is off ([display] preview = false)")
        with self._lock:
            frame, number = self._frame, self._frame_no
        if frame is None:
            raise web.HTTPServiceUnavailable(text="no camera frame yet")
        if self._jpeg is None or self._jpeg[0] != number:
            jpeg = await asyncio.get_running_loop().run_in_executor(None, encode_jpeg, frame)
            self._jpeg = (number, jpeg)
        # no-store: the browser keeps no copy in its disk cache either.
        return web.Response(
            body=self._jpeg[1], content_type="image/jpeg", headers={"Cache-Control": "no-store"}
        )


def encode_jpeg(image: npt.NDArray[np.uint8], max_width: int = PREVIEW_MAX_WIDTH) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes, scaled down to at most `max_width` px wide."""
    import cv2

    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    h, w = bgr.shape[:2]
    if w > max_width:
        bgr = cv2.resize(bgr, (max_width, max(1, round(h * max_width / w))),
                         interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise ValueError("OpenCV could not encode the preview frame")
    return bytes(buf.tobytes())
