"""The display as wired: a real video replayed through `facegate run` (bakery profile, blink on,
the display enabled) in one process, the page in a real headless Chromium in this one.

The page must go through the kiosk's states in order, in Chinese and English; a screenshot of
each state lands in out/display/run_<state>.png (git-ignored).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _cli import cli_env, facegate
from conftest import REPO, wait_until
from test_display_browser import _READ_PAGE, browser  # noqa: F401  (the Chromium fixture)
from test_profiles_e2e import _frames, empty_scene, write_clip

from edge.kiosk.display.messages import render
from edge.kiosk.display.state import KioskState

pytestmark = pytest.mark.slow
SHOTS = REPO / "out" / "display"
SUBJECT = "s-display-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_display_shows_the_kiosk_states_of_a_replayed_session_in_order(
    browser: Any,  # noqa: F811
    tmp_path: Path,
    portrait_enrol: Path,
    portrait_verify: Path,
) -> None:
    port = _free_port()
    state = tmp_path / "state"
    config = tmp_path / "bakery.toml"
    config.write_text(
        'profile = "bakery"\n[device]\nid = "kiosk-display-1"\nsite = "lab"\n'
        f'[paths]\nstate_dir = "{state}"\n'
        "[camera]\nrealtime = true\nreopen_attempts = 0\nread_timeout_s = 2.0\n"
        '[session]\nchallenge = "always"\n[mqtt]\nenabled = false\n'
        f"[display]\nenabled = true\nport = {port}\n"
    )
    env = cli_env(config)
    assert facegate(env, "keys", "init").returncode == 0
    enrolled = facegate(env, "enroll", SUBJECT, "--source", f"file:{portrait_enrol}")
    assert enrolled.returncode == 0, enrolled.stderr
    # Nobody in view for the first seconds, as at a real counter: the page (loaded once the
    # kiosk's server is up) must see `look` before the person arrives, however slow the load.
    face, fps = _frames(portrait_verify)
    clip = write_clip(tmp_path / "counter.avi", fps, [empty_scene(face[0], 4.0, fps), face])
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--source", f"file:{clip}",
         "--claim", f"{SUBJECT} 12.50 pos-1"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen: list[str] = []
    pages: dict[str, dict[str, Any]] = {}
    try:
        url = f"http://127.0.0.1:{port}/"

        def page_up() -> bool:
            try:
                browser.get(url)
                return True
            except Exception:  # the kiosk is still loading its models
                return False

        wait_until(page_up, 30.0, "the display page")
        deadline = time.monotonic() + 60.0
        while proc.poll() is None and time.monotonic() < deadline:
            page = dict(browser.execute_script(_READ_PAGE))
            name = page.get("state")
            if name and (not seen or seen[-1] != name):
                seen.append(name)
                pages[name] = page
                SHOTS.mkdir(parents=True, exist_ok=True)
                browser.save_screenshot(str(SHOTS / f"run_{name}.png"))
            time.sleep(0.02)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    decision = summary["decisions"][0]
    assert decision["decision"] == "accept", decision
    # The states in the order the kiosk went through them (a state may be skipped between
    # two polls only if it lasted under 20 ms; these last seconds).
    assert _in_order(seen, ["look", "blink", "approved"]), seen
    for name in ("blink", "approved"):
        words = render(KioskState(name, {"kind": "payment", "amount": 12.5, "currency": "CNY"}
                                  if name == "approved" else {"seconds_left": 1}))  # fmt: skip
        assert pages[name]["zh"] and pages[name]["en"], pages[name]
        if name == "approved":
            assert pages[name]["en"] == words["en"] and pages[name]["zh"] == words["zh"]
    assert "display: http://127.0.0.1:" in err


def _in_order(seen: list[str], wanted: list[str]) -> bool:
    it = iter(seen)
    return all(any(s == w for s in it) for w in wanted)

