"""The store benchmark runs end to end and reports figures consistent with the store's format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_reports_size_scan_and_claim_latency(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge.measure.templates_bench",
            "--templates",
            "200",
            "--claims",
            "50",
            "--dir",
            str(tmp_path / "state"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["templates"] == 200
    # a record is 12 B nonce + 512 B ciphertext + 16 B tag, plus row metadata and page slack
    assert 540 < res["bytes_per_template"] < 4096
    assert abs(res["db_bytes"] + res["wal_bytes"] - res["bytes_per_template"] * 200) < 200
    assert 0 < res["verify_claim_ms"]["p50"] <= res["verify_claim_ms"]["p95"]
    assert res["decrypt_compare_us"] > 0
