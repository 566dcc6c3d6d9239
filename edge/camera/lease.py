"""Who may use the kiosk's camera: the running kiosk holds it and lends it to an enrolment.

A camera can be streamed by one process at a time (V4L2 refuses a second stream, picamera2 a
second owner), yet a technician enrols people at the kiosk over the serial console while the
kiosk service runs. Two `flock` locks in the state directory settle it; the kernel drops them
when their holder dies, so a killed process never leaves the camera taken:

- the camera lock, on the state directory itself (no file is created: a command that fails
  leaves the state directory as it found it), held by whoever streams the camera (the kiosk,
  or an enrolment it lent it to); `holder()` reads its pid from /proc/locks for messages.
- `camera.request`: an enrolment that wants the camera publishes this file, locked, for as long
  as it needs the camera. It is created locked under a temporary name and renamed into place, so
  the name only ever shows a locked file while its requester lives. The kiosk checks for it a
  few times a second; when it sees a live request it ends the session under way (nobody's
  failure), releases the device and the camera lock, shows "out of service", and waits until the
  request is withdrawn (or its requester died: the file is then unlocked, and removed as stale),
  then takes the lock back and reopens the camera.

`facegate enroll`, `verify` and `bench` borrow the camera only when their source is the
kiosk's own (`camera.source`, `borrowed_if_kiosks`), so a run on a recording never takes the
kiosk out of service.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from edge.camera.uri import parse_source_uri
from edge.errors import SourceError

REQUEST_FILE = "camera.request"
POLL_S = 0.05  # how often a waiting party tries the lock again
# How long the running kiosk has to hand its camera over (it looks for a request 4 times a
# second, then ends the session under way and releases the device).
BORROW_WAIT_S = 10.0


def _try_lock(fd: int) -> bool:
    """Take an exclusive `flock` on `fd` without waiting; False when another holder has it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def _unlink_if_names(path: Path, fd: int) -> None:
    """Remove `path` if it still names the file open as `fd` (not a newer one renamed there)."""
    with contextlib.suppress(FileNotFoundError):
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            os.unlink(path)


class CameraLease:
    """The camera lease of one state directory (module doc). Not thread-safe. Each instance
    opens its own descriptors, so two instances, even in one process, exclude each other."""

    def __init__(
        self,
        state_dir: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.state_dir = Path(state_dir)
        self._request_path = self.state_dir / REQUEST_FILE
        self._clock, self._sleep = clock, sleep
        self._lock_fd: int | None = None

    @property
    def held(self) -> bool:
        return self._lock_fd is not None

    # ---- the camera lock (kiosk and enrolment alike) ---------------------------------------

    def try_hold(self) -> bool:
        """Take the camera lock if it is free; True when this process holds it now."""
        if self._lock_fd is not None:
            return True
        fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            locked = _try_lock(fd)
        except OSError:
            os.close(fd)
            raise
        if not locked:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def hold(self, wait_s: float) -> None:
        """Take the camera lock, waiting up to `wait_s`; SourceError naming the holder when it
        stays taken."""
        deadline = self._clock() + wait_s
        while not self.try_hold():
            if self._clock() >= deadline:
                raise SourceError(
                    f"the camera is in use by another process ({self.holder()}) and was not "
                    f"released within {wait_s:g} s; wait for the enrolment to end, or stop that "
                    "process (a second kiosk on the same state dir is a configuration error)"
                )
            self._sleep(POLL_S)

    def release(self) -> None:
        """Let go of the camera lock."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    def holder(self) -> str:
        """Who holds the camera lock, for messages: "pid N" from /proc/locks (Linux), where
        the kernel lists each lock with its owner and the device:inode it locks."""
        try:
            st = os.stat(self.state_dir)
            key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
            with open("/proc/locks", encoding="ascii", errors="replace") as f:
                for line in f:
                    # "1: FLOCK  ADVISORY  WRITE 26186 fe:00:260072 0 EOF" (waiters: "1: ->")
                    fields = line.split()
                    if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == key:
                        return f"pid {fields[4]}"
        except OSError:
            pass
        return "unknown pid"

    def state(self) -> dict[str, object]:
        """For the technician's `status`: whether a process streams the camera (`held`, by
        `holder`) and whether an enrolment asked for it (`lent`). Probing takes the free lock
        for an instant, which a kiosk starting at that moment waits out (one poll)."""
        lent = self.requested()
        if self._lock_fd is None and self.try_hold():
            self.release()
            return {"held": False, "holder": None, "lent": lent}
        return {"held": True, "holder": self.holder(), "lent": lent}

    # ---- kiosk side ----------------------------------------------------------------------

    def requested(self) -> bool:
        """True while a live requester waits for (or uses) the camera; a request left behind by
        a requester that died is removed here."""
        try:
            fd = os.open(self._request_path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            if not _try_lock(fd):
                return True
            # Unlocked: its requester died (or is withdrawing it): a stale request.
            _unlink_if_names(self._request_path, fd)
            return False
        finally:
            os.close(fd)

    # ---- requester side (an enrolment) -----------------------------------------------------

    @contextlib.contextmanager
    def borrow(self, wait_s: float) -> Iterator[None]:
        """Ask the kiosk for the camera and hold it for the `with` block; SourceError when it is
        not handed over within `wait_s` (a kiosk that is not running hands nothing over: the
        lock is simply free)."""
        request = self._publish_request()
        try:
            self.hold(wait_s)
            try:
                yield
            finally:
                self.release()
        finally:
            self._withdraw(request)

    def _publish_request(self) -> int:
        tmp = self.state_dir / f".{REQUEST_FILE}.{os.getpid()}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.replace(tmp, self._request_path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return fd

    def _withdraw(self, fd: int) -> None:
        try:
            _unlink_if_names(self._request_path, fd)
        finally:
            os.close(fd)  # unlocks it: a kiosk that opened it meanwhile sees a dead request

    def close(self) -> None:
        self.release()


def borrowed_if_kiosks(
    uri: str, kiosk_uri: str, state_dir: Path, wait_s: float = BORROW_WAIT_S
) -> contextlib.AbstractContextManager[None]:
    """Borrow the camera from the running kiosk for a `with` block when `uri` names the
    kiosk's own camera (`kiosk_uri`, its `camera.source`); for a recording or another camera
    there is nothing to borrow."""
    try:
        mine, kiosks = parse_source_uri(uri), parse_source_uri(kiosk_uri)
    except SourceError:
        # A bad `uri` is reported by the source that opens it; a kiosk whose camera.source
        # does not parse streams nothing to borrow.
        return contextlib.nullcontext()
    if (mine.kind, mine.target) != (kiosks.kind, kiosks.target):
        return contextlib.nullcontext()
    Path(state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    return CameraLease(state_dir).borrow(wait_s)
