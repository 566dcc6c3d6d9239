"""Blink detection and liveness sessions on the real liveness data (../shared/data/liveness).

Every video is run through the real vision pipeline once per module (in memory, no pixels kept);
the tests replay those observations through the real detector and session.
"""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import data_root, require_data

from edge.config import Config
from edge.liveness.continuity import ContinuityMonitor
from edge.measure.eval_liveness import (
    Analyser,
    FrameRecord,
    LivenessData,
    live_blink_sessions,
    read_data,
    retime,
    run_session,
    score_blinks,
    seeded,
    still_frames,
    video_blinks,
    video_frames,
)
from edge.vision.pipeline import VisionPipeline
from edge.vision.track import FaceTracker

pytestmark = pytest.mark.slow
CFG = Config()

# Two EyeBlink8 "open-eye" clips show a complete blink (eyes visibly shut in the frames named;
# checked on enlarged crops). They contradict their live_open label, so they are left out of
# the no-blink requirement (and reported to the data owner) instead of being tuned away.
MISLABELLED_OPEN_CLIPS = {
    "openeye/eyeblink8_s1_c18.mp4": "lids closed in frames 9-11",
    "openeye/eyeblink8_s5_c35.mp4": "lids closed in frames 4-8",
}


# A face that fills its frame leaves no room for the passive score's 2.7x crop: the kiosk asks
# the person to step back (quality:too_close) and never passes them on an unreliable crop.
FILLS_THE_FRAME = {"videos/blink_glasses_lowres_25fps.mp4": "96x128 frame, 93 px face"}


def tracked(pipeline: VisionPipeline) -> FaceTracker:
    """Faces tracked as the kiosk tracks them (detector every `vision.detect_every` frames)."""
    return FaceTracker(pipeline, CFG.vision.detect_every, one_chip=False)


@pytest.fixture(scope="module")
def data() -> LivenessData:
    return read_data(require_data("liveness"))


@pytest.fixture(scope="module")
def analyser() -> Analyser:
    require_data("liveness")
    # With the embedder, always: a missing or broken model fails here instead of quietly
    # dropping the identity checks (the face-swap pairs below need it).
    analyser = Analyser(tracked(VisionPipeline.from_config(CFG, with_embedder=True)))
    assert analyser.has_embedder
    return analyser


@pytest.fixture(scope="module")
def records(analyser: Analyser, data: LivenessData) -> Callable[..., list[FrameRecord]]:
    """Per-video observations, computed once per module; `embed=False` skips the embedder
    (blink-only uses such as the 293 open-eye clips)."""
    cache: dict[tuple[str, bool], list[FrameRecord]] = {}
    root = require_data("liveness")
    plain = Analyser(tracked(VisionPipeline.from_config(CFG, with_embedder=False)))

    def get(name: str, embed: bool = True) -> list[FrameRecord]:
        if (name, True) in cache:
            return cache[(name, True)]
        if (name, embed) not in cache:
            chosen = analyser if embed else plain
            cache[(name, embed)] = chosen.run(video_frames(root / name, CFG))
        return cache[(name, embed)]

    return get


def blink_videos(data: LivenessData) -> list:
    return [v for v in data.videos if v.kind == "live_blink"]


# -- blink detection -----------------------------------------------------------------------


def test_every_annotated_blink_is_found_within_two_frames(data, records) -> None:
    missed = []
    for v in blink_videos(data):
        blinks = video_blinks(records(v.name), CFG)
        for a in v.annotations:
            if a.label != "blink":
                continue
            if not any(abs(b.start_index - a.start) <= 2 for b in blinks):
                missed.append((v.name, a.start, [b.start_index for b in blinks]))
    assert missed == []


def test_no_blink_is_reported_where_the_eyes_stay_open(data, records) -> None:
    false_alarms = []
    for v in data.videos:
        if v.kind not in ("live_blink", "live_open") or v.name.startswith("openeye/"):
            continue
        score = score_blinks(video_blinks(records(v.name), CFG), v.annotations)
        if score.detected != score.correct:
            false_alarms.append(v.name)
    assert false_alarms == []


@pytest.mark.parametrize("step", [2, 3])  # 30 fps -> 15 fps and 10 fps (24 fps -> 12 / 8)
def test_blinks_are_found_at_low_frame_rates_without_false_alarms(data, records, step) -> None:
    found = annotated = 0
    false_alarms: list[tuple[str, int]] = []
    for v in data.videos:
        if v.kind not in ("live_blink", "live_open") or v.name.startswith("openeye/"):
            continue
        for phase in range(step):
            sub = records(v.name)[phase::step]
            score = score_blinks(video_blinks(sub, CFG), v.annotations)
            found += score.found
            annotated += score.annotated
            if score.detected != score.correct:
                false_alarms.append((v.name, phase))
    # Subsampling can skip the closed frames of a short blink altogether: most, not all.
    assert found / annotated >= 0.8
    assert false_alarms == []


def test_no_blink_on_any_open_eye_clip(data, records) -> None:
    clips = [v for v in data.videos if v.name.startswith("openeye/")]
    assert clips, "no open-eye clips listed"
    blinking = {v.name for v in clips if video_blinks(records(v.name, embed=False), CFG)}
    assert blinking - set(MISLABELLED_OPEN_CLIPS) == set()


# -- live sessions -------------------------------------------------------------------------


def test_live_people_pass_when_the_prompt_precedes_their_blink(data, records) -> None:
    decisions = []
    for v in blink_videos(data):
        sessions = live_blink_sessions(records(v.name), v.annotations, CFG, 0, v.name)
        decisions += [(v.name, d.reason) for d in sessions]
    annotated = [a for v in blink_videos(data) for a in v.annotations if a.label == "blink"]
    assert len(decisions) == len(annotated)
    asked_to_step_back = [d for d in decisions if d[0] in FILLS_THE_FRAME]
    assert asked_to_step_back and all(r == "quality:too_close" for _, r in asked_to_step_back)
    framed = [d for d in decisions if d[0] not in FILLS_THE_FRAME]
    rejected = [d for d in framed if d[1] is not None]
    assert len(rejected) <= 0.03 * len(framed), rejected  # BPCER target, blink path


@pytest.mark.parametrize("step", [2, 3])
def test_live_people_mostly_pass_at_low_frame_rates(data, records, step) -> None:
    # Same protocol as above on every phase of the subsampled video (15 / 10 fps, 12 / 8 fps
    # for the 24 fps videos); a blink that falls between frames can be missed, so this bound
    # is looser than the native-rate BPCER target.
    decisions = []
    for v in blink_videos(data):
        if v.name in FILLS_THE_FRAME:
            continue  # asked to step back at any frame rate (test above)
        full = records(v.name)
        times = {r.index: r.t for r in full}
        for phase in range(step):
            sub = full[phase::step]
            for a in v.annotations:
                if a.label != "blink":
                    continue
                rng = seeded(0, v.name, a.start, phase)
                prompt_t = times[a.start] - rng.uniform(0.2, 0.6)
                start = next((k for k, r in enumerate(sub) if r.t >= prompt_t - 1.0), 0)
                run = run_session(sub, CFG, rng, start=start, prompt_t=prompt_t)
                decisions.append(run.decision.reason)
    rejected = [r for r in decisions if r is not None]
    assert set(rejected) <= {"no_blink"}
    assert len(rejected) <= 0.15 * len(decisions), rejected


def test_the_track_of_a_person_turning_their_head_is_continuous(data, records) -> None:
    v = next(v for v in data.videos if v.kind == "unannotated")
    mon = ContinuityMonitor(CFG.liveness.continuity_min_iou, CFG.vision.min_face_px)
    violations = [r.index for r in records(v.name) if mon.update(r.t, [o.box for o in r.faces])[1]]
    assert violations == []


def test_several_people_in_view_break_continuity(data, records) -> None:
    v = next(v for v in data.videos if v.kind == "multi_face" and "hamilton" in v.name)
    mon = ContinuityMonitor(CFG.liveness.continuity_min_iou, CFG.vision.min_face_px)
    assert any(mon.update(r.t, [o.box for o in r.faces])[1] for r in records(v.name))


# -- attacks -------------------------------------------------------------------------------


@pytest.mark.parametrize("handheld", [False, True], ids=["frozen", "handheld"])
def test_every_still_is_rejected_when_presented_statically(data, analyser, handheld) -> None:
    from edge.camera import read_image

    stills = [a for a in data.attacks if a.presentation == "static"]
    assert stills
    seconds = CFG.liveness.prompt_delay_max_s + CFG.liveness.response_window_s + 1.5
    outcomes = {}
    for a in stills:
        image = read_image(a.path, a.name)
        frames = still_frames(image, seconds, 30.0, random.Random(5), handheld=handheld)
        records = analyser.run(frames, embed=False)
        outcomes[a.name] = run_session(records, CFG, random.Random(1)).decision.reason
    assert None not in outcomes.values(), outcomes
    if not handheld:
        # Identical frames: caught by the motion check (or the quality gates), or - when the
        # response window closes before the static window (2 s) has elapsed - as no blink.
        reasons = {r for r in outcomes.values() if r is not None}
        assert {r for r in reasons if not r.startswith("quality:")} <= {"static", "no_blink"}


def _replay_attack_names() -> list[str]:
    """Screen-replay videos listed in attacks.csv (read at collection; none without data)."""
    root = data_root()
    csv_path = root / "liveness" / "attacks.csv" if root else None
    if csv_path is None or not csv_path.is_file():
        return ["<no data>"]
    with open(csv_path, newline="", encoding="utf-8") as fh:
        return [r["file"] for r in csv.DictReader(fh) if r.get("presentation") == "video"]


@pytest.mark.parametrize("challenge", ["always", "never"])
@pytest.mark.parametrize("name", _replay_attack_names())
def test_screen_replays_are_rejected(data, records, name: str, challenge: str) -> None:
    # With the blink (which a replayed blink can pass) and without it (the fare gate): the
    # passive score sees the screen in every session cut from the replay.
    attack = next((a for a in data.attacks if a.name == name), None)
    assert attack is not None and attack.presentation == "video", name
    recs = records(attack.name)
    start = sessions = 0
    while start < len(recs):
        rng = seeded(0, attack.name, start)
        run = run_session(recs, CFG, rng, start=start, challenge=challenge)
        assert not run.decision.accepted, (attack.name, start, challenge)
        sessions += 1
        start = max(run.end, start + 1)
    assert sessions >= 1


def _blink_cases(data: LivenessData):
    for v in blink_videos(data):
        for a in v.annotations:
            if a.label == "blink":
                yield v, a


def test_a_video_with_its_blink_frames_cut_out_is_rejected(data, records) -> None:
    for v, a in _blink_cases(data):
        recs = records(v.name)
        fps = len(recs) / (recs[-1].t - recs[0].t)
        lo, hi = max(0, a.start - 2), a.end + 4  # the blink and its margins are removed
        # The session sees the second before and after the cut, but no other closure.
        others = [o for o in v.annotations if o != a]
        first = max([lo - int(fps)] + [o.end + 3 for o in others if o.end < a.start])
        last = min([hi + int(fps)] + [o.start - 3 for o in others if o.start > a.end])
        cut = retime(recs[max(0, first) : lo] + recs[hi : max(hi, last)], fps)
        prompt_t = cut[lo - max(0, first)].t - 0.4 if lo - max(0, first) < len(cut) else 0.0
        d = run_session(cut, CFG, random.Random(3), prompt_t=prompt_t).decision
        assert not d.accepted, (v.name, a.start)


def test_frozen_frames_are_rejected(data, records) -> None:
    for v in blink_videos(data):
        recs = records(v.name)
        fps = len(recs) / (recs[-1].t - recs[0].t)
        still = [recs[len(recs) // 2]] * int(fps * 6)
        for challenge in ("always", "never"):
            run = run_session(retime(still, fps), CFG, random.Random(2), challenge=challenge)
            want = "quality:too_close" if v.name in FILLS_THE_FRAME else "static"
            assert run.decision.reason == want, (v.name, challenge, run.decision.reason)


def test_a_face_swapped_for_another_person_mid_session_fails_closed(data, records) -> None:
    # The attacker shows person A until just before the prompt, then a recording of person B
    # blinking. Pairs include two of the same framing (only the embedding can tell them apart).
    pairs = [
        ("videos/blink_portrait_24fps.mp4", "videos/blink_webcam_7blinks_30fps.mp4"),
        ("videos/blink_webcam_7blinks_30fps.mp4", "videos/blink_portrait_24fps.mp4"),
        ("videos/liveportrait_d20_25fps.mp4", "videos/liveportrait_d10_30fps.mp4"),
        ("videos/liveportrait_d10_30fps.mp4", "videos/liveportrait_d12_25fps.mp4"),
        ("videos/liveportrait_d12_25fps.mp4", "videos/liveportrait_d19_30fps.mp4"),
    ]
    by_name = {v.name: v for v in data.videos}
    for a_name, b_name in pairs:
        b_blink = next(a for a in by_name[b_name].annotations if a.label == "blink")
        head = records(a_name)[:45]
        tail = records(b_name)[max(0, b_blink.start - 8) : b_blink.start + 30]
        spliced = retime(head + tail, 30.0)
        prompt_t = spliced[len(head)].t - 0.1
        d = run_session(spliced, CFG, random.Random(4), prompt_t=prompt_t).decision
        assert d.reason == "face_changed", (a_name, b_name, d.reason)


# -- the command ---------------------------------------------------------------------------


def test_eval_liveness_command_on_a_small_folder_of_the_same_format(tmp_path: Path) -> None:
    root = require_data("liveness")
    sub = tmp_path / "subset"
    (sub / "videos").mkdir(parents=True)
    (sub / "openeye").mkdir()
    (sub / "stills").mkdir()
    keep = ["videos/blink_glasses_lowres_25fps.mp4", "openeye/eyeblink8_s0_c0.mp4"]
    for name in keep + ["stills/facerec_obama.jpg"]:
        (sub / name).symlink_to(root / name)  # links, never copies of the data
    lines = (root / "videos.csv").read_text().splitlines()
    rows = [lines[0]] + [ln for ln in lines if ln.split(",")[0] in keep]
    (sub / "videos.csv").write_text("\n".join(rows) + "\n")
    blinks = (root / "blinks.csv").read_text().splitlines()
    rows = [blinks[0]] + [ln for ln in blinks if ln.startswith("blink_glasses")]
    (sub / "blinks.csv").write_text("\n".join(rows) + "\n")
    (sub / "attacks.csv").write_text(
        "file,label,presentation,source\nstills/facerec_obama.jpg,still_photo,static,ours\n"
    )
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "edge", "eval", "liveness", "--data", str(sub), "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout) == result
    for key in ("videos", "blinks_annotated", "blinks_detected", "blink_recall", "blink_precision",
                "attacks", "attacks_accepted", "apcer", "live_sessions", "live_rejected", "bpcer"):
        assert key in result
    assert result["videos"] == 2 and result["blinks_annotated"] == 1 and result["attacks"] == 2
    assert result["attacks_accepted"] == 0 and result["live_sessions"] == 1
    expected = 0 if result["blink_recall"] >= 0.95 and result["bpcer"] <= 0.05 else 1
    assert proc.returncode == expected, proc.stderr


def test_eval_liveness_refuses_a_folder_without_the_csv_files(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edge", "eval", "liveness", "--data", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "blinks.csv is missing" in proc.stderr
