"""The claim queue every input feeds: the newest claim wins, claims expire, none is carried over."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from conftest import wait_until

from edge.kiosk.claims import Claim, ClaimQueue, LineClaims

A, B, C = Claim("s-a"), Claim("s-b"), Claim("s-c")


def test_newest_claim_wins_and_the_superseded_one_is_counted() -> None:
    q = ClaimQueue(timeout_s=20)
    q.offer(A, 1.0)
    q.offer(B, 2.0)
    assert q.take(3.0) == B
    assert q.take(3.0) is None
    s = q.stats()
    assert (s.offered, s.taken, s.superseded) == (2, 1, 1)


def test_claim_expires_after_the_timeout() -> None:
    q = ClaimQueue(timeout_s=20)
    q.offer(A, 10.0)
    assert q.pending(29.9)
    assert not q.pending(30.0)
    assert q.take(30.0) is None and q.stats().expired == 1


def test_a_claim_is_taken_once() -> None:
    q = ClaimQueue(timeout_s=20)
    q.offer(A, 1.0)
    assert q.take(1.5) == A
    assert q.take(1.6) is None


def test_nothing_older_comes_back_after_take_or_clear() -> None:
    q = ClaimQueue(timeout_s=20)
    q.offer(A, 5.0)
    assert q.take(6.0) == A
    assert not q.offer(B, 5.5)  # read before the take, offered late by its thread: dropped
    assert q.take(7.0) is None
    q.offer(C, 8.0)
    q.clear()
    assert not q.offer(B, 7.9)
    assert q.take(9.0) is None
    assert q.offer(A, 9.5) and q.take(9.6) == A  # a new claim after the take is served
    assert q.stats().stale == 2


def test_an_older_claim_offered_late_does_not_replace_a_newer_one() -> None:
    q = ClaimQueue(timeout_s=20)
    q.offer(B, 2.0)
    assert not q.offer(A, 1.0)
    assert q.take(3.0) == B


def test_poll_takes_at_the_queue_clock() -> None:
    now = [0.0]
    q = ClaimQueue(timeout_s=5, clock=lambda: now[0])
    q.offer(A, 0.0)
    now[0] = 6.0
    assert q.poll() is None
    q.offer(B, 6.0)
    assert q.poll() == B


def test_concurrent_offers_and_takes_serve_each_claim_at_most_once() -> None:
    q = ClaimQueue(timeout_s=1000)
    clock = iter(range(10**9))
    lock = threading.Lock()

    def tick() -> float:
        with lock:
            return float(next(clock))

    taken: list[Claim] = []

    def producer(k: int) -> None:
        for i in range(2000):
            q.offer(Claim(f"s-{k}-{i}"), tick())

    def consumer() -> None:
        for _ in range(4000):
            c = q.take(tick())
            if c is not None:
                taken.append(c)

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(3)]
    threads.append(threading.Thread(target=consumer))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    last = q.take(tick())
    if last is not None:
        taken.append(last)
    s = q.stats()
    assert len(taken) == len(set(taken)) == s.taken
    assert s.offered == 6000 == s.taken + s.superseded + s.stale + s.expired


def test_line_claims_serve_the_newest_line_not_the_oldest() -> None:
    claims = LineClaims(iter(["s-1\n", "13812345678\n", "s-2 3\n", "s-3 4 pos-1\n"]))
    claims._thread.join(5)
    assert claims.poll() == Claim("s-3", 4.0, "pos-1", "pos")
    assert claims.poll() is None and claims.rejected == 1
    assert claims.queue.stats().superseded == 2


def test_line_claims_expire_unused() -> None:
    now = [100.0]
    claims = LineClaims(iter(["s-1\n"]), timeout_s=20, clock=lambda: now[0])
    claims._thread.join(5)
    now[0] = 121.0
    assert claims.poll() is None


def test_line_claims_share_a_queue_with_other_inputs() -> None:
    q = ClaimQueue(timeout_s=20)
    claims = LineClaims(iter(["s-1\n"]), queue=q)
    claims._thread.join(5)
    assert q.stats().offered == 1
    assert q.poll() == Claim("s-1", None, "", "pos")


def test_overlong_claim_line_is_rejected_without_stopping_the_reader() -> None:
    claims = LineClaims(iter(["s-" + "x" * 5000 + "\n", "s-ok\n"]))
    claims._thread.join(5)
    assert claims.rejected == 1 and claims.poll() == Claim("s-ok", None, "", "pos")


@pytest.mark.parametrize("as_stream", [True, False])
def test_fifo_is_reopened_after_each_writer_closes_it(tmp_path: Path, as_stream: bool) -> None:
    fifo = tmp_path / "claims.fifo"
    os.mkfifo(fifo)
    got: list[Claim] = []

    def write(line: str) -> None:
        with open(fifo, "w", encoding="utf-8") as w:  # blocks until the reader has it open
            w.write(line)

    opener = threading.Thread(target=write, args=("s-first\n",))
    opener.start()
    # `facegate run --claims-from FIFO` hands over an open stream; a path works as well.
    source = open(fifo, encoding="utf-8") if as_stream else fifo  # noqa: SIM115
    claims = LineClaims(source)
    opener.join(5)
    wait_until(lambda: claims.queue.pending(claims._clock()), 5, "the first claim")
    got.append(claims.poll())  # type: ignore[arg-type]
    for n in range(3):  # the POS bridge restarts: a new writer each time, after EOF
        w = threading.Thread(target=write, args=(f"s-next-{n}\n",))
        w.start()
        w.join(5)
        assert not w.is_alive(), "the reader never reopened the FIFO"
        wait_until(lambda: claims.queue.pending(claims._clock()), 5, f"claim {n} after EOF")
        got.append(claims.poll())  # type: ignore[arg-type]
    assert [c.subject for c in got] == ["s-first", "s-next-0", "s-next-1", "s-next-2"]
    assert claims._thread.is_alive() and claims.reopened >= 1  # a writer may overlap an EOF
    claims.close()


def test_regular_file_ends_at_eof(tmp_path: Path) -> None:
    path = tmp_path / "claims.txt"
    path.write_text("s-1\n")
    claims = LineClaims(path)
    claims._thread.join(5)
    assert not claims._thread.is_alive() and claims.poll() == Claim("s-1", None, "", "pos")


def test_line_without_end_in_a_file_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "claims.txt"
    path.write_text("s-" + "x" * 3_000_000 + "\ns-after\n")
    claims = LineClaims(path)
    claims._thread.join(10)
    assert claims.rejected == 1 and claims.poll() == Claim("s-after", None, "", "pos")
