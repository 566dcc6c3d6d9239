"""Serial card reader over a real pseudo-terminal: numbers become pseudonymous claims; garbage,
binary noise and a vanished device never stop it; the number is never logged."""

from __future__ import annotations

import contextlib
import logging
import os
import pty
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until

from edge.errors import KeyStoreError
from edge.kiosk.claims import Claim, ClaimQueue
from edge.kiosk.claims.card import CardReader
from edge.trust.subject_ids import subject_from_number

KEY = os.urandom(32)
CARD = "0004123456"


class Pty:
    """A pseudo-terminal whose slave is reached through a stable symlink (as /dev/serial/by-id)."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master = -1
        self.plug()

    def plug(self) -> None:
        self.master, slave = pty.openpty()
        name = os.ttyname(slave)
        os.close(slave)
        tmp = self.link.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(name)
        tmp.replace(self.link)

    def unplug(self) -> None:
        os.close(self.master)
        self.master = -1
        self.link.unlink()

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        if self.master >= 0:
            os.close(self.master)


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Pty]:
    p = Pty(tmp_path / "card-reader")
    yield p
    p.close()


@contextlib.contextmanager
def reader(port: Path, queue: ClaimQueue) -> Iterator[CardReader]:
    r = CardReader(str(port), 9600, queue, KEY, backoff_s=(0.05, 0.2)).start()
    try:
        yield r
    finally:
        r.close()
        assert not r._thread.is_alive()


def _take(q: ClaimQueue, what: str) -> Claim:
    got: list[Claim] = []

    def ready() -> bool:
        c = q.poll()
        if c is not None:
            got.append(c)
        return bool(got)

    wait_until(ready, 5, what)
    return got[0]


def test_card_number_becomes_a_pseudonymous_card_claim(device: Pty) -> None:
    q = ClaimQueue(timeout_s=20)
    with reader(device.link, q) as r:
        wait_until(lambda: r.connected, 5, "the reader to open the pty")
        device.write(f"{CARD}\r\n".encode())
        claim = _take(q, "the card claim")
    assert claim == Claim(subject_from_number("card", CARD, KEY), None, "", "card")
    assert CARD not in claim.subject and r.cards == 1


def test_garbage_overlong_lines_and_binary_noise_are_ignored_and_counted(device: Pty) -> None:
    q = ClaimQueue(timeout_s=20)
    with reader(device.link, q) as r:
        wait_until(lambda: r.connected, 5, "the reader to open the pty")
        device.write(b"hello\n12ab34\n\xff\xfe\x00\x01\x80\n" + b"9" * 200 + b"\n12\n")
        device.write(os.urandom(300).replace(b"\n", b"").replace(b"\r", b"") + b"\n")
        wait_until(lambda: r.ignored >= 6, 5, "the six garbage lines to be counted")
        assert q.poll() is None
        device.write(b"  55501234  \n")
        claim = _take(q, "a good card after the garbage")
    assert claim.subject == subject_from_number("card", "55501234", KEY)
    assert r.ignored == 6 and r.cards == 1


def test_number_is_never_logged(device: Pty, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    q = ClaimQueue(timeout_s=20)
    with reader(device.link, q) as r:
        wait_until(lambda: r.connected, 5, "the reader to open the pty")
        device.write(f"{CARD}\nx{CARD}\n{CARD * 10}\n".encode())
        wait_until(lambda: r.cards == 1 and r.ignored == 2, 5, "one card and two bad lines")
    assert caplog.records and CARD not in caplog.text


def test_unplugged_reader_is_reopened_with_back_off(device: Pty) -> None:
    q = ClaimQueue(timeout_s=20)
    with reader(device.link, q) as r:
        wait_until(lambda: r.connected, 5, "the reader to open the pty")
        device.unplug()  # cable pulled: reads fail, the path is gone for a while
        wait_until(lambda: not r.connected, 5, "the reader to notice the lost device")
        device.plug()  # plugged back: a new tty behind the same path
        wait_until(lambda: r.connected and r.opens == 2, 5, "the reader to reopen the device")
        device.write(f"{CARD}\n".encode())
        assert _take(q, "a card after the reconnect").method == "card"


def test_reader_waits_for_a_device_that_is_not_there_yet(tmp_path: Path) -> None:
    q = ClaimQueue(timeout_s=20)
    link = tmp_path / "late-reader"
    with reader(link, q) as r:
        wait_until(lambda: r._thread.is_alive(), 2, "the reader thread")
        assert not r.connected
        late = Pty(link)
        try:
            wait_until(lambda: r.connected, 5, "the reader to open the late device")
            late.write(b"123456\n")
            assert _take(q, "a card from the late device").subject.startswith("card-")
        finally:
            late.close()


def test_card_reader_without_a_subject_key_fails_at_start_up(device: Pty) -> None:
    with pytest.raises(KeyStoreError, match="facegate keys init"):
        CardReader(str(device.link), 9600, ClaimQueue(timeout_s=20), None)
