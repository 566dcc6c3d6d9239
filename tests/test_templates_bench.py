"""The store benchmark runs end to end, and its size figure agrees with the file it measured."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

RECORD_BYTES = 12 + 128 * 4 + 16  # AES-GCM nonce + 128 float32 of ciphertext + tag


def test_bench_reports_size_scan_and_claim_latency(tmp_path: Path) -> None:
    out, state = tmp_path / "bench.json", tmp_path / "state"
    r = subprocess.run(
        [sys.executable, "-m", "edge.measure.templates_bench", "--templates", "200",
         "--claims", "50", "--dir", str(state), "--json", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["templates"] == 200
    # Measured independently of the bench: the files it left on disk ...
    db = state / "templates.db"
    on_disk = sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())
    assert res["bytes_per_template"] == pytest.approx(on_disk / 200, rel=0.01)
    # ... and SQLite's own account of that file: 200 records of exactly RECORD_BYTES, and the
    # pages holding them.
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        n, payload = con.execute(
            "SELECT COUNT(*), SUM(LENGTH(record)) FROM templates WHERE state = 'active'"
        ).fetchone()
        pages = con.execute("PRAGMA page_count").fetchone()[0]
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    assert (n, payload) == (200, 200 * RECORD_BYTES)
    assert res["db_bytes"] == pages * page_size
    # Every record byte is stored; row metadata, the subject index and page slack cost at most
    # half as much again.
    assert RECORD_BYTES <= res["bytes_per_template"] <= 1.5 * RECORD_BYTES
    assert 0 < res["verify_claim_ms"]["p50"] <= res["verify_claim_ms"]["p95"]
    assert res["decrypt_compare_us"] > 0
