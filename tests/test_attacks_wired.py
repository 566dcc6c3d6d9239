"""Every attack in ../shared/data/liveness, as wired: through `facegate verify` (the blink path),
and through `facegate run` with the fare_gate profile (no blink) and the bakery profile below
and above its step-up amount; the enrolled live person is accepted in each.

Stills are presented as a camera would see them held up: a short video of the still with a
hand's drift and sensor noise (edge.measure.eval_liveness.still_frames). For `facegate run`
every presentation is one part of a single replay (a folder of frames, each at its own size, as
`eval liveness` presents them), a second of empty scene between them, so one kiosk process meets
every attack in turn. (Filling a 640x480 frame instead would crop a replay's screen edges away,
an attack the developer data does not hold; models/README.md.)

The attacks show other people than the enrolled one, so a rejection must come from liveness
(spoof, static, no_blink, face_changed, a quality gate), never from the identity comparison: a
`mismatch` would mean the attack passed liveness. Known limit (see models/README.md): on the no-
blink path, an attack the passive model calls a real face (a digital photo fed as frames, a cut-
out mask, one glossy held print) is caught only by the motion rule, which cannot tell a hand-
held still's landmark jitter from a live face. Those cases are strict xfails that name the
limit, so a fix shows as XPASS.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from _cli import cli_env, facegate
from conftest import data_root, require_data

from edge.camera import read_image
from edge.measure.eval_liveness import still_frames

pytestmark = pytest.mark.slow
SUBJECT = "s-wired-1"
W, H, FPS = 640, 480, 30.0
STILL_S = 3.0
GAP_S = 1.5
# The first seconds of each replay video are enough for several sessions through the kiosk
# (eval liveness and test_liveness_real cover every session of the whole videos).
REPLAY_FRAMES = 150
# Presentations the passive model scores as a real face (models/README.md, eval liveness
# --challenge never): without a blink only the motion rule could stop them, and it cannot.
PAD_BLIND = {
    "stills/facerec_biden.jpg", "stills/facerec_obama-480p.jpg", "stills/facerec_obama.jpg",
    "stills/facerec_obama2.jpg", "stills/silentface_T1_live.jpg", "stills/minai_cutout_held.jpg",
    "stills/minai_cutout_outline.jpg", "stills/minai_cutout_3dnose.jpg",
    "stills/minai_latex_mask.jpg", "stills/recognito_print_held.jpg",
}  # fmt: skip


def _attacks() -> list[tuple[str, str]]:
    root = data_root()
    path = root / "liveness" / "attacks.csv" if root else None
    if path is None or not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [(r["file"], r["presentation"]) for r in csv.DictReader(fh)]


def _presentation(name: str, kind: str, handheld: bool = True) -> Iterator[np.ndarray]:
    """The attack's frames as the camera sees them (BGR), at their own size: a replay video's
    frames, or a still held up by hand (the same presentation `eval liveness` uses), or with
    `handheld=False` the same still in every frame (a frozen frame)."""
    path = require_data(f"liveness/{name}")
    if kind == "video":
        cap = cv2.VideoCapture(str(path))
        for _ in range(REPLAY_FRAMES):
            ok, bgr = cap.read()
            if not ok:
                break
            yield bgr
        cap.release()
        return
    image = read_image(path, name)
    for frame in still_frames(image, STILL_S, FPS, random.Random(name), handheld=handheld):
        yield np.ascontiguousarray(frame.image[:, :, ::-1])


def _write(path: Path, clips: list[tuple[str, str]], handheld: bool = True) -> Path:
    """A folder of numbered frames (`file:<dir>` replays it in order): every presentation keeps
    its own frame size, as in `eval liveness`, with an empty scene between presentations."""
    path.mkdir(parents=True, exist_ok=True)
    blank = np.zeros((H, W, 3), np.uint8)
    k = 0

    def put(bgr: np.ndarray) -> None:
        nonlocal k
        assert cv2.imwrite(str(path / f"{k:06d}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
        k += 1

    for name, kind in clips:
        for frame in _presentation(name, kind, handheld):
            put(frame)
        for _ in range(int(GAP_S * FPS)):
            put(blank)
    return path


@pytest.fixture(scope="module")
def kiosk(tmp_path_factory: pytest.TempPathFactory, portrait_enrol: Path) -> dict[str, Path]:
    """A provisioned state dir with the live person enrolled, and the attack videos."""
    root = tmp_path_factory.mktemp("wired")
    state = root / "state"
    base = _config(root / "base.toml", state, "bakery", "")
    env = cli_env(base)
    assert facegate(env, "keys", "init").returncode == 0
    r = facegate(env, "enroll", SUBJECT, "--source", f"file:{portrait_enrol}")
    assert r.returncode == 0, r.stderr
    attacks = _attacks()
    assert attacks, "attacks.csv lists no attacks"
    return {
        "root": root,
        "state": state,
        "seen": _write(root / "seen", [a for a in attacks if a[0] not in PAD_BLIND]),
        "blind": _write(root / "blind", [a for a in attacks if a[0] in PAD_BLIND]),
        "frozen": _write(
            root / "frozen", [a for a in attacks if a[0] in PAD_BLIND], handheld=False
        ),
    }


def _config(path: Path, state: Path, profile: str, extra: str, session: str = "") -> Path:
    path.write_text(
        f'profile = "{profile}"\n[device]\nid = "kiosk-wired-1"\nsite = "lab"\n'
        f'[paths]\nstate_dir = "{state}"\n'
        "[camera]\nrealtime = false\nreopen_attempts = 0\nread_timeout_s = 2.0\n"
        # Every presentation is a new attempt by an attacker: no lockout in this test.
        f"[session]\nmax_failures = 100\n{session}[mqtt]\nenabled = false\n" + extra
    )
    return path


STEP_UP = 'challenge = "above_amount"\nstepup_amount = 100.0\n'
# profile -> (config profile, [session] keys, claim line)
PROFILES = {
    "fare_gate": ("fare_gate", 'challenge = "never"\n', SUBJECT),
    "bakery_below_stepup": ("bakery", STEP_UP, f"{SUBJECT} 20.00 p1"),
    "bakery_above_stepup": ("bakery", STEP_UP, f"{SUBJECT} 250.00 p2"),
}


def _caught_by_liveness(d: dict[str, object]) -> bool:
    return d["decision"] == "reject" and d["reason"] not in (None, "mismatch")


def _run(kiosk: dict[str, Path], profile: str, video: Path) -> list[dict[str, object]]:
    name, session, claim = PROFILES[profile]
    cfg = _config(kiosk["root"] / f"{profile}.toml", kiosk["state"], name, "", session)
    r = facegate(cli_env(cfg), "run", "--source", f"file:{video}", "--claim", claim, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    return list(summary["decisions"])


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_attack_the_passive_model_sees_is_rejected_through_facegate_run(
    kiosk: dict[str, Path], profile: str
) -> None:
    decisions = _run(kiosk, profile, kiosk["seen"])
    n = len([a for a in _attacks() if a[0] not in PAD_BLIND])
    assert len(decisions) >= n // 2, decisions  # sessions really ran on the presentations
    missed = [(d["decision"], d["reason"]) for d in decisions if not _caught_by_liveness(d)]
    assert missed == [], missed


@pytest.mark.parametrize(
    "profile",
    [
        pytest.param(p, marks=pytest.mark.xfail(
            strict=True, reason="no-blink path: the passive model scores these as real faces and "
            "the motion rule cannot tell hand-held stills from a live face (models/README.md)"))
        if p != "bakery_above_stepup" else p
        for p in sorted(PROFILES)
    ],
)  # fmt: skip
def test_attacks_the_passive_model_cannot_see_are_rejected_through_facegate_run(
    kiosk: dict[str, Path], profile: str
) -> None:
    decisions = _run(kiosk, profile, kiosk["blind"])
    assert decisions and all(d["decision"] == "reject" for d in decisions), decisions
    missed = [(d["decision"], d["reason"]) for d in decisions if not _caught_by_liveness(d)]
    assert missed == [], missed


@pytest.mark.parametrize("profile", ["fare_gate", "bakery_below_stepup"])
def test_frozen_frames_of_stills_the_passive_model_cannot_see_are_static_without_a_blink(
    kiosk: dict[str, Path], profile: str
) -> None:
    """The no-blink path's motion rule on a frozen frame, through the tracker the kiosk runs."""
    decisions = _run(kiosk, profile, kiosk["frozen"])
    n = len([a for a in _attacks() if a[0] in PAD_BLIND])
    assert len(decisions) >= n, decisions  # one session per still at least
    assert all((d["decision"], d["reason"]) == ("reject", "static") for d in decisions), decisions


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_the_enrolled_live_person_is_accepted_through_facegate_run(
    kiosk: dict[str, Path], profile: str, portrait_verify: Path
) -> None:
    decisions = _run(kiosk, profile, portrait_verify)
    assert decisions and decisions[0]["decision"] == "accept", decisions


@pytest.mark.parametrize("name,kind", _attacks() or [("<no data>", "video")])
def test_every_attack_is_rejected_through_facegate_verify(
    kiosk: dict[str, Path], name: str, kind: str
) -> None:
    clip = _write(kiosk["root"] / f"verify-{Path(name).stem}", [(name, kind)])
    cfg = _config(kiosk["root"] / "verify.toml", kiosk["state"], "bakery", "")
    r = facegate(cli_env(cfg), "verify", SUBJECT, "--source", f"file:{clip}", "--json",
                 "--seed", "3")  # fmt: skip
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr[-1500:])
    d = json.loads(r.stdout)
    assert _caught_by_liveness(d), d
