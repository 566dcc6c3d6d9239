"""A template store that was emptied, damaged or lost its write-ahead log is reported as such,
with the non-destructive fix first, and never silently replaced by a new empty store (which
would drop the revocation tombstones). Real SQLite files, a real holder process, the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from _cli import DEVICE, REPO, assert_input_error, cli_env, facegate, write_config

from edge.errors import TemplateError
from edge.templates.store import TemplateStore, db_path
from edge.trust.keys import init_keys, load_keys

# Enrols three subjects, revokes one (its tombstone checkpointed into the file), enrols a
# fourth that lives only in the WAL, then holds the store open until told to close.
HOLDER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from pathlib import Path
    from edge.templates.store import TemplateStore, db_path
    from edge.trust.keys import load_keys
    state = Path(sys.argv[1])
    store = TemplateStore(db_path(state), load_keys(state, sys.argv[2]))
    rng = np.random.default_rng(1)
    for s in ("s-0", "s-1", "s-2"):
        store.enrol(s, rng.standard_normal(128).astype(np.float32), validity_s=86400)
    store.revoke("s-2")
    store.enrol("s-9", rng.standard_normal(128).astype(np.float32), validity_s=86400)
    print("ready", flush=True)
    sys.stdin.readline()
    print(len(store.list_all()), flush=True)
    store.close()
    """
)


@pytest.fixture
def kiosk(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    state = tmp_path / "state"
    init_keys(state, DEVICE)
    return state, cli_env(write_config(tmp_path / "kiosk.toml", state), tmp_path / "tmp")


def listed(proc: subprocess.CompletedProcess[str]) -> list[tuple[str, str]]:
    assert proc.returncode == 0, proc.stderr
    return [(r["subject"], r["state"]) for r in map(json.loads, proc.stdout.splitlines())]


def test_zero_byte_store_is_an_error_not_a_new_store(kiosk: tuple[Path, dict[str, str]]) -> None:
    state, env = kiosk
    db = db_path(state)
    # A fresh install: the store is created whole on first use (never a zero-byte file).
    assert listed(facegate(env, "templates", "list")) == []
    assert db.stat().st_size > 0
    assert sorted(p.name for p in state.iterdir()) == ["keys", "templates.db"]  # no temp left
    db.write_bytes(b"")  # truncated: the tombstones are gone
    for argv in (["templates", "list"], ["templates", "revoke", "s-1"]):
        line = assert_input_error(
            facegate(env, *argv), "template error", str(db), "is empty (0 bytes)",
            "restore it from a backup", "Only if there is none",
        )  # fmt: skip
        assert line.index("backup") < line.index("wipe --yes"), "non-destructive fix first"
    assert db.stat().st_size == 0, "an emptied store must not be initialised as new"
    with pytest.raises(TemplateError, match="is empty"):
        TemplateStore(db, load_keys(state, DEVICE))


def test_damaged_store_names_the_backup_before_the_wipe_and_check_reports_health(
    kiosk: tuple[Path, dict[str, str]],
) -> None:
    state, env = kiosk
    db = db_path(state)
    with TemplateStore(db, load_keys(state, DEVICE)) as store:
        for i in range(40):
            vec = np.random.default_rng(i).standard_normal(128).astype(np.float32)
            store.enrol(f"s-{i}", vec, validity_s=86400)
        store.revoke("s-0")
    ok = facegate(env, "templates", "check")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {
        "active": 39, "expired": 0, "integrity": "ok", "revoked": 1, "unreadable": 0,
    }  # fmt: skip
    os.truncate(db, db.stat().st_size // 2)
    line = assert_input_error(
        facegate(env, "templates", "check"), "template error", str(db),
        "restore it from a backup", "only if there is none",
    )  # fmt: skip
    assert line.index("backup") < line.index("wipe --yes")


def test_wal_deleted_under_a_running_holder_gives_non_destructive_advice_and_nothing_is_lost(
    kiosk: tuple[Path, dict[str, str]],
) -> None:
    state, env = kiosk
    db = db_path(state)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state), DEVICE], cwd=REPO, env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "ready", holder.stderr
        wal = Path(f"{db}-wal")
        assert wal.stat().st_size > 0  # s-9 lives only in the holder's log
        wal.unlink()
        for argv in (["templates", "list"], ["templates", "revoke", "s-1"]):
            line = assert_input_error(
                facegate(env, *argv), "template error", "write-ahead log", "was deleted",
                "the store is intact", "restart that process", "do not wipe",
            )  # fmt: skip
            assert "wipe --yes" not in line and "cannot rollback" not in line
        holder.stdin.write("close\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "4"  # the holder still sees everything
        assert holder.wait(30) == 0, holder.stderr.read() if holder.stderr else ""
    finally:
        holder.kill()
        holder.wait()
    # Closing wrote the holder's log back: the WAL-only row and the tombstone are all there.
    assert listed(facegate(env, "templates", "list")) == [
        ("s-0", "active"), ("s-1", "active"), ("s-2", "revoked"), ("s-9", "active"),
    ]  # fmt: skip
