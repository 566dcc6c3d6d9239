"""The one private-SQLite opener: 0600 files whatever the umask, WAL checked, synchronous=FULL."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.trust.private_db import PrivateDbError, immediate, open_private_db


@pytest.fixture
def login_umask() -> Iterator[None]:
    """The usual login umask (022): modes must not depend on the caller's umask."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def side_files(path: Path) -> list[Path]:
    return [Path(f"{path}{s}") for s in ("-wal", "-shm") if Path(f"{path}{s}").exists()]


def test_a_new_database_and_its_wal_and_shm_files_are_0600(
    tmp_path: Path, login_umask: None
) -> None:
    path = tmp_path / "state.db"
    db = open_private_db(path)
    try:
        db.execute("CREATE TABLE t (x TEXT)")
        db.execute("INSERT INTO t VALUES ('movement history')")
        sides = side_files(path)
        assert [p.name for p in sides] == ["state.db-wal", "state.db-shm"]  # open: both exist
        assert {p.name: mode(p) for p in [path, *sides]} == {
            "state.db": 0o600, "state.db-wal": 0o600, "state.db-shm": 0o600,
        }  # fmt: skip
    finally:
        db.close()


def test_an_existing_database_and_side_files_readable_by_others_are_tightened(
    tmp_path: Path, login_umask: None
) -> None:
    path = tmp_path / "state.db"
    other = sqlite3.connect(path, isolation_level=None)  # created 0644 under umask 022
    other.execute("PRAGMA journal_mode=WAL")
    other.execute("CREATE TABLE t (x TEXT)")
    try:
        assert mode(path) == 0o644 and all(mode(p) == 0o644 for p in side_files(path))
        db = open_private_db(path)
        db.close()
        assert {p.name: mode(p) for p in [path, *side_files(path)]} == {
            "state.db": 0o600, "state.db-wal": 0o600, "state.db-shm": 0o600,
        }  # fmt: skip
    finally:
        other.close()


def test_the_connection_is_autocommit_wal_and_synchronous_full(tmp_path: Path) -> None:
    db = open_private_db(tmp_path / "state.db", timeout_s=7.5)
    try:
        assert db.isolation_level is None  # transactions are explicit (immediate())
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 7500
    finally:
        db.close()
    with sqlite3.connect(tmp_path / "state.db") as again:  # WAL is persistent in the file
        assert again.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_database_that_stays_out_of_wal_mode_is_refused_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where SQLite cannot use WAL it answers journal_mode=WAL with the mode it kept, without an
    # error; an in-memory database answers the same way ("memory"), so it stands in for such a
    # filesystem here.
    real_connect = sqlite3.connect
    opened: list[sqlite3.Connection] = []

    def connect_in_memory(_path: str, **kw: object) -> sqlite3.Connection:
        conn = real_connect(":memory:", **kw)  # type: ignore[call-overload]
        opened.append(conn)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect_in_memory)
    with pytest.raises(PrivateDbError, match="journal_mode is 'memory', not 'wal'.*local") as err:
        open_private_db(tmp_path / "state.db")
    assert isinstance(err.value, sqlite3.OperationalError)  # callers map SQLite errors
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        opened[0].execute("SELECT 1")  # the refused connection was closed, not leaked


def test_immediate_commits_on_success_and_rolls_back_on_error(tmp_path: Path) -> None:
    db = open_private_db(tmp_path / "state.db")
    try:
        db.execute("CREATE TABLE t (x INTEGER)")
        with immediate(db):
            db.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(ValueError), immediate(db):
            db.execute("INSERT INTO t VALUES (2)")
            raise ValueError("abandon")
        assert not db.in_transaction
        assert db.execute("SELECT x FROM t").fetchall() == [(1,)]
    finally:
        db.close()
