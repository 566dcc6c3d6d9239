"""POS / keypad bridge over a real Unix socket: amount + phone in either order make one claim;
bad lines get an error reply and never stop the kiosk; the phone number is never echoed or
logged."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.errors import KeyStoreError
from edge.kiosk.claims import Claim, ClaimQueue
from edge.kiosk.claims.bridge import BridgeError, BridgeServer
from edge.trust.subject_ids import subject_from_number

KEY = os.urandom(32)
PHONE = "13800138000"
SUBJECT = subject_from_number("phone", PHONE, KEY)


class Client:
    """A POS or keypad process: one connection, one JSON reply line per request line."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")

    def send(self, line: bytes | str | dict[str, object]) -> dict[str, object]:
        if isinstance(line, dict):
            line = json.dumps(line)
        data = line.encode() if isinstance(line, str) else line
        self.sock.sendall(data + b"\n")
        reply = self.file.readline()
        assert reply.endswith(b"\n"), reply
        return json.loads(reply)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    return run / "bridge.sock"


@pytest.fixture
def server(sock_path: Path) -> Iterator[tuple[BridgeServer, ClaimQueue]]:
    q = ClaimQueue(timeout_s=20)
    with BridgeServer(sock_path, q, KEY, currency="CNY") as srv:
        yield srv, q


def test_amount_then_phone_from_two_clients_make_one_payment_claim(
    server: tuple[BridgeServer, ClaimQueue], sock_path: Path
) -> None:
    srv, q = server
    pos, keypad = Client(sock_path), Client(sock_path)
    assert pos.send({"amount": "42.00", "currency": "CNY", "ref": "pos-7"}) == {"ok": True}
    assert q.poll() is None  # the amount waits for its phone
    assert keypad.send({"phone": PHONE}) == {"ok": True}
    assert q.poll() == Claim(SUBJECT, 42.0, "pos-7", "phone")
    assert q.poll() is None and srv.claims == 1
    pos.close()
    keypad.close()


def test_phone_then_amount_works_too_and_one_line_may_carry_both(
    server: tuple[BridgeServer, ClaimQueue], sock_path: Path
) -> None:
    _, q = server
    c = Client(sock_path)
    assert c.send({"phone": "+86 138-0013-8001"}) == {"ok": True}
    assert c.send({"amount": "7.5"}) == {"ok": True}
    claim = q.poll()
    assert claim == Claim(subject_from_number("phone", "8613800138001", KEY), 7.5, "", "phone")
    assert c.send({"amount": 12, "phone": PHONE}) == {"ok": True}
    assert q.poll() == Claim(SUBJECT, 12.0, "", "phone")
    c.close()


def test_newer_amount_replaces_a_waiting_one_and_halves_expire(sock_path: Path) -> None:
    now = [0.0]
    q = ClaimQueue(timeout_s=20, clock=lambda: now[0])
    with BridgeServer(sock_path, q, KEY, timeout_s=20, clock=lambda: now[0]) as srv:
        c = Client(sock_path)
        c.send({"amount": "10.00", "ref": "pos-1"})
        c.send({"amount": "11.00", "ref": "pos-2"})
        assert srv.pending() == (True, False)
        now[0] = 25.0  # the customer walked away: the amount expired
        assert srv.pending() == (False, False)
        c.send({"phone": PHONE})
        assert q.poll() is None and srv.pending() == (False, True)
        c.send({"amount": "3.20", "ref": "pos-3"})
        assert q.poll() == Claim(SUBJECT, 3.2, "pos-3", "phone")
        c.close()


BAD_LINES = [
    (b"not json", "JSON"),
    (b"[1, 2]", "object"),
    (b'"42.00"', "object"),
    (b"{}", "amount"),
    (b'{"amount": "abc"}', "decimal"),
    (b'{"amount": true}', "decimal"),
    (b'{"amount": null}', "decimal"),
    (b'{"amount": ["1"]}', "decimal"),
    (b'{"amount": "42.001"}', "2 decimal"),
    (b'{"amount": 42.001}', "2 decimal"),
    (b'{"amount": "0"}', "above 0"),
    (b'{"amount": "-5.00"}', "above 0"),
    (b'{"amount": "10000000.01"}', "at most"),
    (b'{"amount": "1e999999999"}', "at most"),
    (b'{"amount": "NaN"}', "decimal"),
    (b'{"amount": NaN}', "JSON"),
    (b'{"amount": "1.00", "currency": "USD"}', "currency must be CNY"),
    (b'{"amount": "1.00", "ref": "bad ref!"}', "ref"),
    (b'{"amount": "1.00", "ref": 7}', "ref"),
    (b'{"phone": 13800138000}', "string"),
    (b'{"phone": "12345"}', "6-15 digits"),
    (b'{"phone": "1234567890123456"}', "6-15 digits"),
    (b'{"phone": "138-abc-8000"}', "6-15 digits"),
    (b'{"ref": "pos-1"}', "amount"),
    (b'{"phone": "13800138000", "currency": "CNY"}', "go with an amount"),
    (b'{"13800138000": 1}', "unknown key"),
    (b"\xff\xfe{}", "JSON"),
    (b"[" * 900, "JSON"),
]


@pytest.mark.parametrize(("line", "why"), BAD_LINES)
def test_bad_line_gets_an_error_reply_and_the_connection_keeps_working(
    server: tuple[BridgeServer, ClaimQueue], sock_path: Path, line: bytes, why: str
) -> None:
    srv, q = server
    c = Client(sock_path)
    reply = c.send(line)
    assert reply["ok"] is False and why in str(reply["error"]), reply
    assert PHONE not in json.dumps(reply) and "13800138000" not in str(reply)
    assert c.send({"amount": "1.00"}) == {"ok": True}
    assert c.send({"phone": PHONE}) == {"ok": True}
    assert q.poll() == Claim(SUBJECT, 1.0, "", "phone")
    c.close()


def test_line_over_1_kib_is_refused_once_and_the_next_line_is_served(
    server: tuple[BridgeServer, ClaimQueue], sock_path: Path
) -> None:
    _, q = server
    c = Client(sock_path)
    long_line = json.dumps({"ref": "x" * 5000, "amount": "1.00"}).encode()
    reply = c.send(long_line)
    assert reply == {"ok": False, "error": "line longer than 1024 bytes"}
    assert c.send({"amount": "2.00"}) == {"ok": True}  # the rest of the long line was dropped
    assert c.send({"phone": PHONE}) == {"ok": True}
    assert q.poll() == Claim(SUBJECT, 2.0, "", "phone")
    c.close()


def test_phone_number_is_never_logged(
    server: tuple[BridgeServer, ClaimQueue], sock_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    c = Client(sock_path)
    for line in ({"phone": PHONE}, {"phone": PHONE + "99999"}, {"phone": int(PHONE)},
                 {"amount": "5.00"}, {PHONE: PHONE}):  # fmt: skip
        assert PHONE not in json.dumps(c.send(line))  # type: ignore[arg-type]
    c.close()
    assert caplog.records and PHONE not in caplog.text


def test_clients_come_and_go_several_at_once(
    server: tuple[BridgeServer, ClaimQueue], sock_path: Path
) -> None:
    srv, q = server
    for round_ in range(3):
        clients = [Client(sock_path) for _ in range(4)]
        half = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        half.connect(str(sock_path))
        half.sendall(b'{"amount": "9')  # hangs up in the middle of a line
        half.close()
        assert clients[round_].send({"amount": f"{round_ + 1}.00"}) == {"ok": True}
        assert clients[3].send({"phone": PHONE}) == {"ok": True}
        assert q.poll() == Claim(SUBJECT, float(round_ + 1), "", "phone")
        for c in clients:
            c.close()
        # the server notices each hang-up: the next round is not refused as "too many clients"
        wait_until(lambda: not srv._clients, 5, "every client thread to end")
    assert srv.refused_clients == 0


def test_clients_beyond_the_limit_get_an_error_reply_and_the_others_keep_working(
    sock_path: Path,
) -> None:
    q = ClaimQueue(timeout_s=20)
    with BridgeServer(sock_path, q, KEY, max_clients=2) as srv:
        a, b = Client(sock_path), Client(sock_path)
        assert a.send({"amount": "1.00"}) == {"ok": True}
        extra = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        extra.settimeout(5)
        extra.connect(str(sock_path))
        reply = extra.makefile("rb").readline()
        assert json.loads(reply) == {"ok": False, "error": "too many bridge clients"}
        extra.close()
        assert b.send({"phone": PHONE}) == {"ok": True}
        assert q.poll() == Claim(SUBJECT, 1.0, "", "phone") and srv.refused_clients == 1
        a.close()
        b.close()


def test_socket_is_0660_and_removed_on_close(sock_path: Path) -> None:
    old = os.umask(0)  # the worst umask: the socket must still not be world-connectable
    try:
        srv = BridgeServer(sock_path, ClaimQueue(timeout_s=20), KEY).start()
    finally:
        os.umask(old)
    st_ = os.stat(sock_path)
    assert stat.S_ISSOCK(st_.st_mode) and stat.S_IMODE(st_.st_mode) == 0o660
    srv.close()
    assert not sock_path.exists()


def test_stale_socket_file_of_a_crashed_kiosk_is_replaced(sock_path: Path) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))
    dead.close()  # the file stays, nobody listens
    q = ClaimQueue(timeout_s=20)
    with BridgeServer(sock_path, q, KEY):
        c = Client(sock_path)
        assert c.send({"amount": "1.00", "phone": PHONE}) == {"ok": True}
        c.close()
    assert q.poll() is not None


def test_a_socket_another_kiosk_serves_is_not_taken_over(
    server: tuple[BridgeServer, ClaimQueue], sock_path: Path
) -> None:
    with pytest.raises(BridgeError, match="another process"):
        BridgeServer(sock_path, ClaimQueue(timeout_s=20), KEY).start()
    c = Client(sock_path)  # the first one still serves
    assert c.send({"amount": "1.00"}) == {"ok": True}
    c.close()


def test_missing_directory_or_a_regular_file_at_the_path_is_one_error_with_the_fix(
    tmp_path: Path,
) -> None:
    with pytest.raises(BridgeError, match="does not exist; create it"):
        BridgeServer(tmp_path / "nope" / "b.sock", ClaimQueue(timeout_s=20), KEY).start()
    regular = tmp_path / "b.sock"
    regular.write_text("keep me")
    with pytest.raises(BridgeError, match="not a socket"):
        BridgeServer(regular, ClaimQueue(timeout_s=20), KEY).start()
    assert regular.read_text() == "keep me"


def test_bridge_without_a_subject_key_fails_at_start_up(sock_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="facegate keys init"):
        BridgeServer(sock_path, ClaimQueue(timeout_s=20), None)


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.binary(max_size=1100),
    st.dictionaries(st.sampled_from(["amount", "phone", "currency", "ref", "x"]),
                    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                              st.text(max_size=20), st.lists(st.integers(), max_size=2)),
                    max_size=4).map(lambda d: json.dumps(d).encode()),
))  # fmt: skip
def test_any_line_gets_exactly_one_json_reply(line: bytes) -> None:
    srv = BridgeServer("/unused/bridge.sock", ClaimQueue(timeout_s=20), KEY)
    reply = srv.handle_line(line.replace(b"\n", b" "))
    assert reply.endswith(b"\n") and reply.count(b"\n") == 1
    parsed = json.loads(reply)
    assert parsed == {"ok": True} or (parsed["ok"] is False and isinstance(parsed["error"], str))
