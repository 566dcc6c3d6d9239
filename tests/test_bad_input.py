"""Acceptance: bad input gets ONE clear line naming the problem and the fix, exit 2, no traceback,
and nothing is created or changed — for configs, model files and camera sources, through the
real command line (`python -m edge ...`). Keys and the template store: test_bad_input_store.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _cli import (
    DEVICE,
    REPO,
    assert_input_error,
    cli_env,
    facegate,
    stderr_lines,
    tree_digest,
    write_config,
)
from conftest import require_data

from edge.config import Config
from edge.session.lockout import LockoutStore
from edge.templates.store import TemplateStore, db_path
from edge.trust.keys import init_keys

SUBJECT = "s-1001"


@pytest.fixture(scope="module")
def pristine_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keys and one (synthetic) enrolled template: what a provisioned kiosk has on disk."""
    state = tmp_path_factory.mktemp("pristine") / "state"
    keys = init_keys(state, DEVICE)
    vec = np.random.default_rng(7).standard_normal(128).astype(np.float32)
    with TemplateStore(db_path(state), keys) as store:
        store.enrol(SUBJECT, vec, validity_s=86400)
    # A kiosk that has run once has its lockout counters too (verify opens them before the camera).
    LockoutStore.open(state, Config().session).close()
    return state


@pytest.fixture
def kiosk(tmp_path: Path, pristine_state: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A private copy of the provisioned state dir and an operator env whose config points at it."""
    state = tmp_path / "state"
    shutil.copytree(pristine_state, state)
    yield state, cli_env(write_config(tmp_path / "kiosk.toml", state), tmp_path / "tmp")


# -- configuration --------------------------------------------------------------------------

# Commands an operator runs; each must check the config before doing anything else.
COMMANDS = {
    "keys-init": ["keys", "init"],
    "templates-list": ["templates", "list"],
    "enroll": ["enroll", SUBJECT, "--source", "cam:0"],
    "verify": ["verify", SUBJECT, "--source", "cam:0"],
    "run": ["run", "--max-frames", "1"],
    "bench": ["bench", "--frames", "1"],
    "outbox-status": ["outbox", "status"],
    "console-codes": ["console", "--new-codes", "1"],
}
BAD_CONFIGS = {
    # name: (TOML text, fragments the one error line must contain)
    "syntax": ("[camera\nfps = 30\n", ("not valid TOML", "line 3", "fix the syntax")),
    "unknown-key": ("[camera]\nfsp = 30\n", ("camera.fsp: unknown key", "allowed here", "fps")),
    "out-of-range": (
        "[liveness]\near_threshold = 1.7\n",
        ("liveness.ear_threshold = 1.7", "must be between 0.05 and 0.5"),
    ),
    # With both thresholds at -1 a stranger was accepted: the range and its reason are named.
    "below-calibration": (
        "[verify]\nthreshold = 0.5\n",
        ("verify.threshold = 0.5", "must be between 0.9 and 0.97", "of strangers match"),
    ),
    # An id the event schema refuses must never get keys bound to it.
    "bad-id": ('[device]\nid = "kiosk#1"\n', ("device.id = 'kiosk#1'", "ASCII letters")),
}


# Every kind of problem for the commands that touch the state; one kind for the rest.
CONFIG_CASES = [
    (kind, cmd)
    for kind in ("syntax", "unknown-key", "out-of-range")
    for cmd in ("keys-init", "templates-list", "verify", "run")
] + [("out-of-range", cmd) for cmd in ("enroll", "bench", "outbox-status", "console-codes")]
CONFIG_CASES += [("bad-id", "keys-init"), ("bad-id", "run"), ("below-calibration", "verify")]


@pytest.mark.parametrize(("kind", "command"), CONFIG_CASES)
def test_bad_config_is_one_config_error_line_and_nothing_is_created(
    tmp_path: Path, kind: str, command: str
) -> None:
    text, fragments = BAD_CONFIGS[kind]
    state = tmp_path / "state"
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'[paths]\nstate_dir = "{state}"\n' + text)
    proc = facegate(cli_env(cfg), "--config", str(cfg), *COMMANDS[command])
    line = assert_input_error(proc, "config error", *fragments)
    if kind == "syntax":
        assert str(cfg) in line  # which file: there may be several configs on a kiosk
    assert not state.exists(), "a command refused for its config must not create the state dir"


def test_every_config_problem_gets_its_own_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        "[camera]\nfsp = 30\n[liveness]\near_threshold = 1.7\n[session]\nchallenge = \"maybe\"\n"
    )
    proc = facegate(cli_env(cfg), "verify", SUBJECT, "--source", "cam:0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = stderr_lines(proc)
    assert len(lines) == 3, proc.stderr
    assert all(ln.startswith("config error: ") for ln in lines)
    joined = "\n".join(lines)
    for key in ("camera.fsp", "liveness.ear_threshold", "session.challenge"):
        assert sum(key in ln for ln in lines) == 1, joined


def test_missing_config_file_names_the_path_and_how_to_choose_one(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    proc = facegate(cli_env(missing), "templates", "list")
    assert_input_error(proc, "config error", str(missing), "--config", "FACEGATE_CONFIG")


# -- model files ----------------------------------------------------------------------------

MODELS = {
    "detector": "face_detection_short_range.tflite",
    "landmarks": "face_landmark.tflite",
    "embedder": "face_embedding_int8.tflite",
}


@pytest.fixture
def models_kiosk(
    tmp_path: Path, pristine_state: Path
) -> tuple[Path, Path, dict[str, str]]:
    """A provisioned kiosk whose `[paths] models_dir` is a private copy of models/."""
    models = tmp_path / "models"
    models.mkdir()
    for f in (REPO / "models").iterdir():
        if f.is_file():
            shutil.copy2(f, models / f.name)
    state = tmp_path / "state"
    shutil.copytree(pristine_state, state)
    cfg = write_config(tmp_path / "kiosk.toml", state, models_dir=models)
    # A valid (synthetic, faceless) image source, so a model error cannot hide behind a source
    # error: commands that open the camera before loading a model still reach the model.
    import cv2

    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "0001.png"), np.full((240, 320, 3), 128, np.uint8))
    return models, frames, cli_env(cfg, tmp_path / "tmp")


def _model_commands(frames: Path) -> dict[str, list[str]]:
    src = f"file:{frames}"
    return {
        "verify": ["verify", SUBJECT, "--source", src],
        "enroll": ["enroll", "s-2002", "--source", src],
        "run": ["run", "--claim", f"{SUBJECT} 5.00", "--source", src, "--max-frames", "1"],
        "bench": ["bench", "--source", src, "--frames", "1"],
    }


@pytest.mark.parametrize("command", ["verify", "enroll", "run", "bench"])
def test_missing_model_file_names_the_file_and_make_models(
    models_kiosk: tuple[Path, Path, dict[str, str]], command: str
) -> None:
    models, frames, env = models_kiosk
    (models / MODELS["landmarks"]).unlink()
    proc = facegate(env, *_model_commands(frames)[command])
    assert_input_error(
        proc, "model error", "missing", str(models / MODELS["landmarks"]), "make models"
    )


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("model", "command"),
    [
        ("detector", "verify"),
        ("landmarks", "enroll"),
        ("embedder", "verify"),
        ("embedder", "run"),
        ("embedder", "bench"),  # a benchmark of a tampered model is no benchmark
    ],
)
def test_model_with_a_flipped_byte_is_refused_naming_the_file_and_make_models(
    models_kiosk: tuple[Path, Path, dict[str, str]], model: str, command: str
) -> None:
    models, frames, env = models_kiosk
    _flip_one_byte(models / MODELS[model])
    proc = facegate(env, *_model_commands(frames)[command])
    assert_input_error(
        proc, "model error", str(models / MODELS[model]), "tampered or corrupted", "make models"
    )
    assert proc.stdout.strip() == "", "no figures may be printed from a tampered model"


# -- camera sources -------------------------------------------------------------------------


def _bad_sources(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name: (URI, fragment naming what is wrong)."""
    garbage = tmp_path / "clip.mp4"
    garbage.write_bytes(np.random.default_rng(1).integers(0, 256, 8192, np.uint8).tobytes())
    empty = tmp_path / "no-images"
    empty.mkdir()
    (empty / "README.txt").write_text("not an image\n")
    return {
        "absent-camera-index": ("cam:9", "cannot open the camera"),
        "absent-v4l2-device": ("v4l2:/dev/nope", "cannot open the camera"),
        "garbage-video-file": (f"file:{garbage}", "cannot open"),
        "folder-without-images": (f"file:{empty}", "holds no images"),
        "missing-file": (f"file:{tmp_path / 'gone.mp4'}", str(tmp_path / "gone.mp4")),
    }


SOURCE_CASES = [
    "absent-camera-index", "absent-v4l2-device", "garbage-video-file", "folder-without-images",
    "missing-file",
]  # fmt: skip


@pytest.mark.parametrize(
    ("command", "case"),
    [("verify", case) for case in SOURCE_CASES]
    + [("run", "absent-camera-index"), ("run", "garbage-video-file"),
       ("run", "folder-without-images"), ("bench", "absent-v4l2-device"),
       ("bench", "missing-file")],
)  # fmt: skip
def test_unreadable_source_is_one_line_naming_the_uri_and_changes_nothing(
    kiosk: tuple[Path, dict[str, str]], tmp_path: Path, command: str, case: str
) -> None:
    state, env = kiosk
    uri, fragment = _bad_sources(tmp_path)[case]
    argv = {
        "verify": ["verify", SUBJECT, "--source", uri],
        "run": ["run", "--claim", f"{SUBJECT} 5.00", "--source", uri],
        "bench": ["bench", "--source", uri, "--frames", "3"],
    }[command]
    before = tree_digest(state)
    proc = facegate(env, *argv)
    assert_input_error(proc, "source error", uri, fragment)
    assert tree_digest(state) == before


def test_enrol_from_an_unreadable_source_prints_only_the_error(
    kiosk: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    state, env = kiosk
    before = tree_digest(state)
    proc = facegate(env, "enroll", "s-2002", "--source", "cam:9")
    assert tree_digest(state) == before
    assert_input_error(proc, "source error", "cam:9", "cannot open the camera")


def test_enrol_from_an_unreadable_source_exits_2_and_stores_nothing(
    kiosk: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """A bad camera or file stores nothing, whichever way it is bad."""
    state, env = kiosk
    sources = _bad_sources(tmp_path)
    for uri, fragment in (sources["absent-camera-index"], sources["garbage-video-file"]):
        before = tree_digest(state)
        proc = facegate(env, "enroll", "s-2002", "--source", uri)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert stderr_lines(proc)[-1].startswith(f"source error: {uri}")
        assert fragment in stderr_lines(proc)[-1]
        assert tree_digest(state) == before


# -- exit 1 is for a decision, never for bad input -------------------------------------------


def test_a_face_that_does_not_match_is_exit_1_not_an_input_error(
    kiosk: tuple[Path, dict[str, str]],
) -> None:
    """The enrolled template is a random vector: the real face in the video cannot match it."""
    video = require_data("liveness/videos/blink_portrait_24fps.mp4")
    _, env = kiosk
    proc = facegate(env, "verify", SUBJECT, "--source", f"file:{video}", "--seed", "3")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.startswith(f"reject {SUBJECT}")
    assert not any(ln.startswith(("error", "source error", "model error")) for ln in
                   stderr_lines(proc))


# -- command arguments an operator or a POS bridge gets wrong --------------------------------


@pytest.mark.parametrize(
    ("argv", "prefix", "fragments"),
    [
        (["run", "--claim", "../x 5.00"], "error", ("--claim", "subject id must be")),
        (["run", "--claim", f"{SUBJECT} -5"], "error", ("--claim", "amount must be between")),
        (["run", "--claim", f"{SUBJECT} lots"], "error", ("--claim", "amount must be a number")),
        (["enroll", "../x"], "template error", ("'../x'", "not a valid subject id", "use")),
        (["enroll", "s-2002", "--frames", "0"], "error", ("--frames 0", "between 1 and")),
        (["bench", "--frames", "0"], "data error", ("--frames must be >= 1",)),
        (["bench", "--embed-every", "0"], "data error", ("--embed-every 0", "N >= 1")),
    ],
    ids=["claim-subject", "claim-negative-amount", "claim-amount-text", "enrol-subject",
         "enrol-frames", "bench-frames", "bench-embed-every"],
)
def test_bad_arguments_are_one_line_naming_the_argument_and_change_nothing(
    kiosk: tuple[Path, dict[str, str]], tmp_path: Path, argv: list[str], prefix: str,
    fragments: tuple[str, ...],
) -> None:
    state, env = kiosk
    before = tree_digest(state)
    frames = tmp_path / "frames"
    frames.mkdir()
    proc = facegate(env, *argv, "--source", f"file:{frames}")  # refused before the source
    assert_input_error(proc, prefix, *fragments)
    assert tree_digest(state) == before


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_unreadable_claims_file_is_one_line_naming_it(
    kiosk: tuple[Path, dict[str, str]], tmp_path: Path, what: str
) -> None:
    _, env = kiosk
    path = tmp_path / "claims.fifo" if what == "missing" else tmp_path
    proc = facegate(env, "run", "--claims-from", str(path), "--source", "cam:9")
    assert_input_error(proc, "error", str(path), "--claims-from")


@pytest.mark.parametrize("amount", ["-5", "nan"])
def test_verify_refuses_a_negative_or_nan_amount(
    kiosk: tuple[Path, dict[str, str]], tmp_path: Path, amount: str
) -> None:
    _, env = kiosk
    frames = tmp_path / "frames"
    frames.mkdir()
    import cv2

    cv2.imwrite(str(frames / "0001.png"), np.full((240, 320, 3), 128, np.uint8))
    proc = facegate(env, "verify", SUBJECT, "--amount", amount, "--source", f"file:{frames}")
    # A usage error: argparse's usage line, then one line naming the option and the rule.
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "usage error: argument --amount" in last and "finite amount >= 0" in last


def test_run_refuses_a_frame_limit_below_one(
    kiosk: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    _, env = kiosk
    frames = tmp_path / "frames"
    frames.mkdir()
    import cv2

    cv2.imwrite(str(frames / "0001.png"), np.full((240, 320, 3), 128, np.uint8))
    proc = facegate(env, "run", "--max-frames", "0", "--source", f"file:{frames}")
    assert proc.returncode == 2 and "--max-frames" in proc.stderr, proc.stdout
