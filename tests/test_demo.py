"""`facegate demo` (what `make demo` runs) on a machine with no camera and no research data:
the clip shipped inside the package, enrolment, a verified session, a rejected still, signed
events, and with the shared broker up, a reference backend's ledger."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

from edge.camera.demo import default_source_uri, embedded_clip


def test_the_embedded_clip_ships_with_its_licence_and_is_the_default_source() -> None:
    clip = embedded_clip()
    assert clip.stat().st_size > 100_000
    notice = (clip.parent / "NOTICE.md").read_text()
    assert "MIT License" in notice and "Kuaishou" in notice
    assert default_source_uri() == f"file:{clip}"


def test_demo_runs_the_whole_flow_without_research_data(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("FACEGATE_DATA", "FACEGATE_STATE_DIR")}
    proc = subprocess.run(
        [sys.executable, "-m", "edge", "demo", "--config", str(REPO / "config" / "demo.toml")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    decisions = [json.loads(ln) for ln in lines if ln.startswith("{")]
    assert [d["decision"] for d in decisions] == ["accept", "reject"], decisions
    accept, attack = decisions
    assert accept["liveness"]["blinks"] == 1 and accept["event"] == "payment.authorize"
    assert attack["reason"] in ("static", "no_blink", "spoof")
    assert attack["event"] == "verify.reject"
    assert any(ln.startswith("display page: http://127.0.0.1:") for ln in lines)
    assert sum("sig=" in ln for ln in lines) == 2
    # The shared broker runs here (CI starts it): the events are booked, not just queued.
    booked = next(ln for ln in lines if ln.startswith("booked by the reference backend"))
    totals = json.loads(booked.split(": ", 1)[1])
    assert totals["events"] == 2 and totals["amount_per_currency"] == {"CNY": 1250}
