"""Driving the real `facegate` command line as an operator would: a temp config, a temp state
directory, `python -m edge ...` as a subprocess, and checks on what reaches the terminal.

Shared by the acceptance suites tests/test_bad_input*.py and tests/test_privacy.py.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEVICE = "kiosk-acc-0001"


def write_config(
    path: Path, state_dir: Path, *, device: str = DEVICE, models_dir: Path | None = None,
    extra: str = "",
) -> Path:
    """A bakery kiosk config: no broker, file replay as fast as possible, debug capture in tmp."""
    models = f'models_dir = "{models_dir}"\n' if models_dir else ""
    path.write_text(
        f'profile = "bakery"\n[device]\nid = "{device}"\nsite = "acc-site"\n'
        f'[paths]\nstate_dir = "{state_dir}"\n{models}'
        "[camera]\nrealtime = false\nreopen_attempts = 0\nread_timeout_s = 1.0\n"
        "[mqtt]\nenabled = false\n"
        f'[debug]\ncapture_dir = "{path.parent / "debug-capture"}"\n{extra}'
    )
    return path


def cli_env(config: Path, tmpdir: Path | None = None) -> dict[str, str]:
    """Environment of one operator shell: only the config chooses the state dir and keys."""
    env = {**os.environ, "FACEGATE_CONFIG": str(config)}
    for var in ("FACEGATE_STATE_DIR", "CREDENTIALS_DIRECTORY"):
        env.pop(var, None)
    if tmpdir is not None:  # anything a command writes to "the temp dir" lands where we look
        tmpdir.mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(tmpdir)
    return env


def facegate(
    env: dict[str, str], *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """`python -m edge ARGS` with stdin closed, as from a service or a script."""
    return subprocess.run(
        [sys.executable, "-m", "edge", *args], env=env, cwd=REPO, capture_output=True,
        text=True, stdin=subprocess.DEVNULL, timeout=timeout, check=False,
    )


def stderr_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in proc.stderr.splitlines() if ln.strip()]


def assert_input_error(
    proc: subprocess.CompletedProcess[str], prefix: str, *fragments: str
) -> str:
    """Exit 2, no traceback, and stderr is exactly one line: `<prefix>: ...` with `fragments`."""
    detail = f"exit {proc.returncode}\nstdout: {proc.stdout[-800:]}\nstderr: {proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, detail
    assert proc.returncode == 2, detail
    lines = stderr_lines(proc)
    assert len(lines) == 1, detail
    line = lines[0]
    assert line.startswith(f"{prefix}: "), detail
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} missing from: {line}"
    return line


def tree_digest(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under `root` -> (mode, sha256): equal digests mean nothing was touched."""
    out: dict[str, tuple[int, str]] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = (
                p.stat().st_mode & 0o7777, hashlib.sha256(p.read_bytes()).hexdigest()
            )
    return out
