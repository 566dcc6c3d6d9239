"""The `facegate` command line: help, version, usage errors and exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge import __version__
from edge.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=120,
        cwd=REPO, env=env,
    )


def test_version_and_help_work_through_python_dash_m() -> None:
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"facegate {__version__}"
    proc = run("--help")
    assert proc.returncode == 0
    for cmd in ("run", "enroll", "verify", "templates", "keys", "eval", "bench", "console",
                "outbox"):
        assert cmd in proc.stdout


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "facegate"
    assert exe.exists(), "install with `make setup` (pip install -e '.[dev]')"
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["verify"],
        ["verify", "alice"],  # --source is required
        ["eval", "lfw", "--pairs", "p.txt"],  # --images is required
        ["templates"],
        ["bench", "--frames", "many"],
    ],
)
def test_usage_errors_exit_2_without_traceback(argv: list[str]) -> None:
    proc = run(*argv)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "usage" in proc.stderr


def test_every_documented_command_parses() -> None:
    parser = build_parser()
    for argv in (
        ["run", "--source", "cam:0", "--max-frames", "10"],
        ["enroll", "alice", "--source", "file:x.mp4", "--frames", "5"],
        ["verify", "alice", "--source", "file:x.mp4", "--json"],
        ["templates", "list"], ["templates", "import", "f.sealed"],
        ["templates", "revoke", "alice"], ["templates", "wipe"],
        ["keys", "init"], ["keys", "public"],
        ["eval", "lfw", "--pairs", "p", "--images", "d", "--json", "o", "--plot", "x.png"],
        ["eval", "liveness", "--data", "d", "--json", "o"],
        ["eval", "detect", "--data", "d"],
        ["bench", "--source", "file:x", "--frames", "5", "--threads", "1", "--json", "o"],
        ["console", "--port", "/dev/ttyS0", "--baud", "115200"],
        ["outbox", "status"], ["outbox", "drain"],
    ):
        args = parser.parse_args(argv)
        assert args.handler


def test_unreadable_source_is_a_one_line_error_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"garbage")
    proc = run("run", "--source", f"file:{bad}", "--max-frames", "3")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr
    assert lines and str(bad) in lines[-1]


def test_main_returns_exit_code_instead_of_raising(tmp_path: Path) -> None:
    assert main(["--config", str(tmp_path / "nope.toml"), "outbox", "status"]) == 2


def test_demo_source_is_the_embedded_clip_else_data_else_says_which_source_to_give(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge.camera import demo
    from edge.camera.demo import default_source_uri, embedded_clip
    from edge.errors import SourceError

    assert default_source_uri([tmp_path]) == f"file:{embedded_clip()}"
    # An install that lost the clip: the research data, else a one-line hint.
    monkeypatch.setattr(demo, "EMBEDDED_CLIP", "missing.mp4")
    with pytest.raises(SourceError) as err:
        default_source_uri([tmp_path])
    assert "pass --source URI" in str(err.value) and "cam:0" in str(err.value)
    (tmp_path / "liveness" / "videos").mkdir(parents=True)
    video = tmp_path / "liveness" / "videos" / "blink_portrait_24fps.mp4"
    video.write_bytes(b"x")
    assert default_source_uri([tmp_path]) == f"file:{video}"
