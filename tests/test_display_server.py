"""The kiosk display without a browser: states and their words, the dispatcher, the SSE server."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import wait_until

from edge.config import DisplayConfig
from edge.errors import FacegateError
from edge.kiosk.display.dispatcher import Dispatcher
from edge.kiosk.display.messages import format_amount, reason_text, render
from edge.kiosk.display.server import (
    HOST,
    DisplayPortInUseError,
    DisplayServer,
    _Client,
)
from edge.kiosk.display.state import DENIAL_REASONS, STATES, KioskState

# A detail for every state that shows everything the state can carry.
FULL_DETAIL: dict[str, dict[str, Any]] = {
    "claim": {"method": "qr"},
    "blink": {"seconds_left": 4},
    "approved": {"kind": "payment", "amount": 12.5, "currency": "CNY"},
    "denied": {"reason": "spoof"},
    "locked_out": {"seconds_left": 30},
}


def _has_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


# -- states and words ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STATES))
def test_display_every_state_renders_non_empty_chinese_and_english(name: str) -> None:
    for detail in ({}, FULL_DETAIL.get(name, {})):
        words = render(KioskState(name, detail))
        assert words["zh"].strip() and _has_cjk(words["zh"]), (name, detail, words)
        assert words["en"].strip() and not _has_cjk(words["en"]), (name, detail, words)
        assert words["tone"] in {"neutral", "active", "ok", "bad", "warn"}


@pytest.mark.parametrize("reason", DENIAL_REASONS)
def test_display_every_denial_reason_has_its_own_plain_words(reason: str) -> None:
    words = render(KioskState("denied", {"reason": reason}))
    assert _has_cjk(words["zh"]) and words["en"].strip()
    assert words["tone"] == "bad"
    # The hint always offers the non-face alternative (DESIGN §1: the display says so).
    assert "卡" in words["zh_hint"] and "card" in words["en_hint"]
    if not reason.startswith("quality:"):
        assert (words["zh"], words["en"]) != reason_text("some_new_reason"), reason


def test_display_spoof_is_said_in_plain_words() -> None:
    words = render(KioskState("denied", {"reason": "spoof"}))
    assert words["zh"] == "未能确认为真人"
    assert words["en"] == "We could not confirm a live face"


def test_display_unknown_reason_and_unknown_quality_gate_still_render() -> None:
    assert render(KioskState("denied", {"reason": "quality:glare"}))["en"] == (
        "The picture was not clear enough"
    )
    assert render(KioskState("denied", {"reason": "cosmic_ray"}))["en"] == "Not verified"
    assert render(KioskState("denied", {"reason": 7}))["en"] == "Not verified"


def test_display_amounts_show_the_currency_cny_as_yuan_sign() -> None:
    words = render(KioskState("approved", {"kind": "payment", "amount": 12.5, "currency": "CNY"}))
    assert words["zh"] == "支付成功 ¥12.50" and words["en"] == "Payment approved ¥12.50"
    assert format_amount(1234.5, "cny") == "¥1,234.50"
    assert format_amount(3, "EUR") == "€3.00"
    assert format_amount(2.5, "XTS") == "2.50 XTS"
    assert format_amount("12", "CNY") == "" and format_amount(float("nan")) == ""
    fare = render(KioskState("approved", {"kind": "fare", "amount": 2, "currency": "CNY"}))
    assert fare["en"] == "Fare paid — please go through ¥2.00"
    door = render(KioskState("approved", {"kind": "door", "door": "3-1201"}))
    assert door["en"] == "Door unlocked" and door["en_hint"] == "Door: 3-1201"


def test_display_claim_prompt_follows_the_method_or_profile() -> None:
    assert render(KioskState("claim", {"method": "card"}))["en"] == "Please tap your card"
    assert "phone number" in render(KioskState("claim", {"profile": "bakery"}))["en"]
    assert "QR code or tap" in render(KioskState("claim", {"profile": "fare_gate"}))["en"]
    assert "QR code, tap your card" in render(KioskState("claim"))["en"]


def test_display_state_refuses_unknown_names_and_non_json_detail() -> None:
    with pytest.raises(ValueError, match="unknown kiosk state 'smile'"):
        KioskState("smile")
    with pytest.raises(ValueError, match="plain JSON"):
        KioskState("denied", {"reason": object()})
    with pytest.raises(ValueError, match="plain JSON"):
        KioskState("approved", {"amount": float("nan")})


def test_display_state_keeps_its_own_copy_of_the_detail() -> None:
    detail: dict[str, Any] = {"seconds_left": 3}
    state = KioskState("blink", detail, t=100.0)
    detail["seconds_left"] = 99
    assert state.detail == {"seconds_left": 3}
    assert state.to_json() == {"state": "blink", "detail": {"seconds_left": 3}, "t": 100.0}


# -- dispatcher ---------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.states: list[KioskState] = []
        self.stopped = False

    def publish(self, state: KioskState) -> None:
        self.states.append(state)

    def stop(self) -> None:
        self.stopped = True


class Broken:
    def __init__(self) -> None:
        self.calls = 0

    def publish(self, state: KioskState) -> None:
        self.calls += 1
        raise BrokenPipeError("screen cable pulled")

    def stop(self) -> None:
        raise RuntimeError("cannot stop either")


def test_display_dispatcher_contains_a_broken_listener_and_logs_it_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before, after, broken = Recorder(), Recorder(), Broken()
    dispatcher = Dispatcher([before, broken, after])
    states = [KioskState("look"), KioskState("verifying"), KioskState("denied", {"reason": "x"})]
    with caplog.at_level("DEBUG", logger="edge.kiosk.display.dispatcher"):
        for state in states:
            dispatcher.publish(state)  # must not raise
    assert before.states == states and after.states == states
    assert broken.calls == 3
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) == 1 and "screen cable pulled" in caplog.text
    assert dispatcher.last is states[-1]


def test_display_dispatcher_stop_stops_every_listener_even_when_one_fails() -> None:
    first, second = Recorder(), Recorder()
    dispatcher = Dispatcher([first, Broken(), second])
    dispatcher.stop()
    assert first.stopped and second.stopped
    dispatcher.publish(KioskState("look"))  # after stop: nobody left, still no error
    assert first.states == []


def test_display_dispatcher_gives_a_late_listener_the_last_state() -> None:
    dispatcher = Dispatcher()
    assert dispatcher.last is None
    dispatcher.publish(KioskState("look"))
    dispatcher.publish(KioskState("blink", {"seconds_left": 3}))
    late = Recorder()
    dispatcher.add(late)
    assert [s.state for s in late.states] == ["blink"]
    dispatcher.remove(late)
    dispatcher.publish(KioskState("verifying"))
    assert [s.state for s in late.states] == ["blink"]


def test_display_dispatcher_from_many_threads_gives_every_listener_one_order() -> None:
    a, b = Recorder(), Recorder()
    dispatcher = Dispatcher([a, b])

    def kiosk(n: int) -> None:
        for i in range(200):
            dispatcher.publish(KioskState("blink", {"seconds_left": i, "thread": n}))

    threads = [threading.Thread(target=kiosk, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(a.states) == 800 and a.states == b.states
    assert dispatcher.last is a.states[-1]


# -- server -------------------------------------------------------------------------------


class SseReader:
    """Reads Server-Sent Events from a DisplayServer with plain http.client."""

    def __init__(self, port: int, timeout_s: float = 5.0) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
        self.conn.request("GET", "/events")
        self.response = self.conn.getresponse()
        assert self.response.status == 200
        assert self.response.headers["Content-Type"].startswith("text/event-stream")
        self.retry_ms: int | None = None

    def events(self) -> Iterator[tuple[str, str]]:
        name, data = "message", []
        while True:
            line = self.response.readline()
            if not line:
                return
            text = line.decode("utf-8").rstrip("\r\n")
            if text == "":
                if data:
                    yield name, "\n".join(data)
                name, data = "message", []
            elif text.startswith("data: "):
                data.append(text[6:])
            elif text.startswith("event: "):
                name = text[7:]
            elif text.startswith("retry: "):
                self.retry_ms = int(text[7:])

    def next_state(self) -> dict[str, Any]:
        for name, data in self.events():
            if name == "message":
                return dict(json.loads(data))
        raise AssertionError("the event stream ended")

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def server() -> Iterator[DisplayServer]:
    srv = DisplayServer(0, heartbeat_s=0.5)
    srv.start()
    yield srv
    srv.stop()


def _get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.headers), resp.read()
    finally:
        conn.close()


def test_display_stream_gives_the_current_state_on_connect_then_updates_in_order(
    server: DisplayServer,
) -> None:
    server.publish(KioskState("claim", {"method": "qr"}))
    reader = SseReader(server.port)
    try:
        first = reader.next_state()
        assert first["state"] == "claim" and first["en"] == "Please show your QR code to the camera"
        assert reader.retry_ms == 1000  # the page reconnects by itself after a restart
        sent = [
            KioskState("verifying"),
            KioskState("blink", {"seconds_left": 3}),
            KioskState("approved", {"kind": "payment", "amount": 12.5, "currency": "CNY"}),
            KioskState("denied", {"reason": "no_blink"}),
        ]
        for state in sent:
            server.publish(state)
        got = [reader.next_state() for _ in sent]
        assert [g["state"] for g in got] == [s.state for s in sent]
        assert [g["seq"] for g in got] == list(range(first["seq"] + 1, first["seq"] + 5))
        assert got[1]["detail"] == {"seconds_left": 3} and got[1]["t"] == sent[1].t
        assert got[2]["zh"] == "支付成功 ¥12.50"
        assert got[3]["zh"] == "没有看到眨眼" and got[3]["en"] == "We did not see you blink"
        # A second page joining now starts from the current state, not from the beginning.
        late = SseReader(server.port)
        assert late.next_state()["state"] == "denied"
        late.close()
    finally:
        reader.close()


def test_display_quiet_stream_sends_heartbeats_and_stop_ends_it(server: DisplayServer) -> None:
    reader = SseReader(server.port)
    events = reader.events()
    assert next(events)[0] == "message"
    assert next(events) == ("ping", "{}")  # heartbeat_s=0.5: the page can tell a dead link
    server.stop()
    assert list(events) == []  # the stream ends; the page's EventSource then retries
    reader.close()


def test_display_publish_never_blocks_the_kiosk_even_with_a_page_not_reading(
    server: DisplayServer,
) -> None:
    reader = SseReader(server.port)  # connected, never read
    started = time.perf_counter()
    for i in range(2000):
        server.publish(KioskState("blink", {"seconds_left": i}))
    assert time.perf_counter() - started < 1.0  # ~30 µs each here
    ok, _, body = _get(server.port, "/healthz")
    assert ok == 200 and json.loads(body)["seq"] >= 2
    reader.close()


def test_display_slow_page_queue_drops_the_oldest_states() -> None:
    client = _Client(3)
    for n in range(10):
        client.push(str(n))
    assert list(client.queue) == ["7", "8", "9"] and client.dropped == 7


def test_display_page_is_one_self_contained_file(server: DisplayServer) -> None:
    status, headers, body = _get(server.port, "/")
    html = body.decode("utf-8")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "EventSource" in html and "<style>" in html
    for external in ("http://", "https://", "<link", "src=\"", "@import", "url("):
        assert external not in html, external


def test_display_healthz_reports_the_current_state(server: DisplayServer) -> None:
    server.publish(KioskState("offline_queued"))

    def health() -> dict[str, Any]:
        status, _, body = _get(server.port, "/healthz")
        assert status == 200
        return dict(json.loads(body))

    wait_until(lambda: health()["state"] == "offline_queued", 5, "healthz to show the state")
    assert health()["ok"] is True and health()["clients"] == 0


def test_display_preview_is_404_when_off(server: DisplayServer) -> None:
    server.show_frame(np.zeros((48, 64, 3), np.uint8))  # ignored: preview is off
    status, _, body = _get(server.port, "/preview.jpg")
    assert status == 404 and b"[display] preview" in body


def test_display_preview_serves_the_latest_frame_from_memory_when_on(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with DisplayServer(0, preview=True) as srv:
        assert _get(srv.port, "/preview.jpg")[0] == 503  # no frame yet
        red = np.zeros((480, 640, 3), np.uint8)
        red[..., 0] = 255  # RGB red
        srv.show_frame(red)
        status, headers, body = _get(srv.port, "/preview.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert headers["Cache-Control"] == "no-store"
    bgr = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert bgr.shape == (360, 480, 3)  # scaled down to the preview width
    assert bgr[..., 2].mean() > 200 and bgr[..., 0].mean() < 50  # still red
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_display_port_in_use_raises_a_clear_error_naming_the_port_and_the_fix() -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = DisplayServer(port)
        with pytest.raises(DisplayPortInUseError) as err:
            srv.start()
    assert isinstance(err.value, FacegateError)
    assert f"127.0.0.1:{port}" in str(err.value) and "[display] port" in str(err.value)
    assert not srv.running
    srv.stop()  # harmless after a failed start


def test_display_server_restarts_on_the_same_port_and_keeps_the_last_state() -> None:
    srv = DisplayServer(0)
    srv.publish(KioskState("locked_out", {"seconds_left": 30}))  # before start: kept
    srv.start()
    srv.start()  # idempotent
    port = srv.port
    reader = SseReader(port)
    assert reader.next_state()["state"] == "locked_out"
    reader.close()
    srv.stop()
    srv.stop()  # idempotent
    srv.publish(KioskState("alternative"))  # while stopped: kept, not lost, no error
    again = DisplayServer(port)
    again.start()
    again.publish(KioskState("verifying"))
    reader = SseReader(port)
    assert reader.next_state()["state"] == "verifying"
    reader.close()
    again.stop()
    srv.start()  # the first server object can serve again too
    reader = SseReader(srv.port)
    assert reader.next_state()["state"] == "alternative"
    reader.close()
    srv.stop()


def _listening_addresses(port: int) -> set[str]:
    """IPv4 and IPv6 addresses with a socket listening on `port` (Linux /proc/net)."""
    found: set[str] = set()
    for table, size in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(addr)
                words = [raw[i : i + 4][::-1] for i in range(0, size // 2, 4)]
                packed = b"".join(words)
                family = socket.AF_INET if size == 8 else socket.AF_INET6
                found.add(socket.inet_ntop(family, packed))
    return found


def test_display_server_from_config_binds_loopback_only() -> None:
    srv = DisplayServer.from_config(DisplayConfig(enabled=True, port=8080, preview=True))
    assert srv.port == 8080 and srv.preview and srv.url == "http://127.0.0.1:8080/"
    with DisplayServer(0) as live:
        assert _get(live.port, "/healthz")[0] == 200
        assert _listening_addresses(live.port) == {"127.0.0.1"}


def test_display_dispatcher_feeds_the_server_like_any_listener(server: DisplayServer) -> None:
    dispatcher = Dispatcher([Broken(), server])
    reader = SseReader(server.port)
    try:
        assert reader.next_state()["state"] == "look"
        dispatcher.publish(KioskState("one_person"))
        state = reader.next_state()  # the broken listener before it changed nothing
        assert state["state"] == "one_person"
        assert state["en"] == "One person at a time, please"
    finally:
        reader.close()
