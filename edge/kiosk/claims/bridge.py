"""POS / keypad bridge: JSON lines on a local Unix socket, one JSON reply line per line.

    {"amount": "42.00", "currency": "CNY", "ref": "pos-7"}   from the POS
    {"phone": "13800138000"}                                 from the keypad
    -> {"ok": true}  or  {"ok": false, "error": "..."}

The line protocol and the pairing of an amount with a phone number are in `bridge_lines`. Any
number of clients (up to `max_clients` at once) connect, disconnect and reconnect at will; a bad
line gets an error reply and changes nothing; the phone number is never echoed or logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from edge.errors import FacegateError
from edge.kiosk.claims.base import MAX_AMOUNT
from edge.kiosk.claims.bridge_lines import MAX_LINE_BYTES, PaymentPairing, parse_bridge_line
from edge.kiosk.claims.queue import ClaimQueue
from edge.trust.subject_ids import require_subject_key

log = logging.getLogger(__name__)
MAX_CLIENTS = 8
SOCKET_MODE = 0o660
_POLL_S = 0.25  # how often blocked threads look at the stop flag
_OK = b'{"ok": true}\n'


class BridgeError(FacegateError):
    """The bridge socket cannot be served (path, permissions, another kiosk on it)."""

    prefix = "config error"


class BridgeServer:
    """Serves the bridge socket at `socket_path` on daemon threads; claims go to `queue`."""

    def __init__(
        self,
        socket_path: str | Path,
        queue: ClaimQueue,
        subject_key: bytes | None,
        *,
        currency: str = "CNY",
        max_amount: float = MAX_AMOUNT,
        timeout_s: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.path = Path(socket_path)
        self._key = require_subject_key(subject_key)  # fail at start-up, not at the first phone
        self._queue = queue
        self.currency, self.max_amount, self.timeout_s = currency, max_amount, timeout_s
        self._clock = clock
        self._max_clients = max_clients
        self._lock = threading.Lock()  # guards _clients
        self._pairing = PaymentPairing(timeout_s)
        self._clients: set[socket.socket] = set()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._ino = 0
        self._thread: threading.Thread | None = None
        self.lines_ok = self.lines_bad = self.claims = self.refused_clients = 0

    # ---- socket life -----------------------------------------------------------------------

    def start(self) -> BridgeServer:
        """Bind (0660, replacing a stale socket file) and serve; BridgeError with the fix."""
        self._sock = self._bind()
        self._thread = threading.Thread(target=self._accept_loop, name="bridge", daemon=True)
        self._thread.start()
        log.info("claims bridge listening on %s", self.path)
        return self

    def _bind(self) -> socket.socket:
        where = f"claims.bridge_socket {str(self.path)!r}"
        if not self.path.parent.is_dir():
            raise BridgeError(f"{where}: directory {self.path.parent} does not exist; create it "
                              "(systemd: RuntimeDirectory=) or choose another path")  # fmt: skip
        tmp = self.path.parent / f".{self.path.name}.{os.getpid()}.tmp"
        if len(os.fsencode(tmp)) > 100:
            raise BridgeError(f"{where}: path too long for a Unix socket; use a shorter one")
        self._check_stale(where)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            # Bound under a temporary name, given its mode, then renamed into place: the socket
            # is never reachable with the umask's mode, and a stale one is replaced atomically.
            sock.bind(str(tmp))
            os.chmod(tmp, SOCKET_MODE)
            sock.listen(16)
            os.replace(tmp, self.path)
            self._ino = os.stat(self.path).st_ino
        except OSError as exc:
            sock.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise BridgeError(f"{where}: cannot serve it ({exc.strerror}); check that the "
                              "directory is writable by the kiosk user") from None  # fmt: skip
        sock.settimeout(_POLL_S)
        return sock

    def _check_stale(self, where: str) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise BridgeError(f"{where}: exists and is not a socket; remove it or choose another "
                              "path")  # fmt: skip
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(self.path))
        except OSError:
            return  # nobody listens: a stale file from a crashed kiosk, replaced by _bind
        finally:
            probe.close()
        raise BridgeError(f"{where}: another process is serving it; stop it or choose another "
                          "path")  # fmt: skip

    def close(self) -> None:
        """Stop serving, drop clients and remove the socket file if it is still ours."""
        self._stop.set()
        with self._lock:
            clients = list(self._clients)
        for c in clients:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(2.0)
        if self._sock is not None:
            self._sock.close()
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self._ino:
                    self.path.unlink()
            self._sock = None

    def __enter__(self) -> BridgeServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- clients ---------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                log.warning("claims bridge accept failed (%s)", exc.strerror)
                self._stop.wait(_POLL_S)
                continue
            with self._lock:
                full = len(self._clients) >= self._max_clients
                if not full:
                    self._clients.add(conn)
            if full:
                self.refused_clients += 1
                self._reply_close(conn, {"ok": False, "error": "too many bridge clients"})
                continue
            threading.Thread(target=self._serve, args=(conn,), name="bridge-client",
                             daemon=True).start()  # fmt: skip

    @staticmethod
    def _reply_close(conn: socket.socket, reply: dict[str, object]) -> None:
        with contextlib.suppress(OSError):
            conn.settimeout(1.0)
            conn.sendall(json.dumps(reply).encode() + b"\n")
        conn.close()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(_POLL_S)
        buf = b""
        discarding = False  # inside an overlong line: drop bytes until its newline
        try:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(4096)
                except TimeoutError:
                    continue
                if not chunk:
                    return  # the client hung up
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if discarding:
                        discarding = False
                        continue
                    conn.sendall(self.handle_line(line))
                if len(buf) > MAX_LINE_BYTES:
                    if not discarding:
                        self.lines_bad += 1
                        conn.sendall(_error(f"line longer than {MAX_LINE_BYTES} bytes"))
                    discarding, buf = True, b""
        except OSError:
            pass  # reset by the client, or closed by close(): the client may reconnect
        except Exception as exc:  # noqa: BLE001 - one client's trouble never stops the kiosk
            log.error("claims bridge client failed (%s)", type(exc).__name__)
        finally:
            with self._lock:
                self._clients.discard(conn)
            conn.close()

    # ---- lines -----------------------------------------------------------------------------

    def handle_line(self, line: bytes) -> bytes:
        """One request line (without its newline) -> the reply line (with its newline)."""
        try:
            parsed = parse_bridge_line(line, self._key, currency=self.currency,
                                       max_amount=self.max_amount)  # fmt: skip
        except ValueError as exc:
            self.lines_bad += 1
            log.warning("claims bridge line refused: %s", exc)  # the reason, never the line
            return _error(str(exc))
        self.lines_ok += 1
        t = self._clock()
        claim = self._pairing.add(parsed, t)
        if claim is not None:
            self.claims += 1
            self._queue.offer(claim, t)
            log.info("claims bridge: payment claim ready")
        return _OK

    def pending(self) -> tuple[bool, bool]:
        """(amount waiting, phone waiting) at the bridge's clock."""
        return self._pairing.pending(self._clock())


def _error(text: str) -> bytes:
    return json.dumps({"ok": False, "error": text}).encode() + b"\n"
