"""Acceptance: the privacy rules, checked on disk and on the terminal after a real kiosk session.

One module-scoped run through the real command line (temp state dir, temp config, TMPDIR
redirected, every command at --verbose): `keys init`, `keys public`, `enroll`, `verify --json`,
`run --claim` (a payment), `run --claims-from` (a keypad line holding a phone number),
`templates list`, `outbox status`, `outbox drain` (to a private Mosquitto); enrolment reads
one half of the video, every session the other. Then, with the
same vision pipeline in this process, the plaintext template is recomputed and the checks are:
- no face image (by magic bytes, not suffix) and no raw frame pixels anywhere we can look;
- the plaintext embedding is in no file; no key, template or phone number in any log line;
- events in the outbox carry no arrays of numbers and no biometric field.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _broker import start_mosquitto
from _cli import DEVICE, REPO, cli_env, facegate, write_config
from conftest import wait_until

SUBJECT = "s-priv-1001"
PHONE = "13812345678"
SKIP_DIRS = {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
             ".hypothesis"}  # fmt: skip


@dataclass
class KioskRun:
    root: Path
    state: Path
    tmpdir: Path
    claims_file: Path
    enrol_video: Path  # enrolment's frames ...
    video: Path  # ... and every session's: never the same frames
    started: float
    porcelain_before: set[str]
    procs: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    events: list[tuple[str, bytes]] = field(default_factory=list)  # outbox rows before drain
    published: list[bytes] = field(default_factory=list)  # what the broker delivered


def _porcelain() -> set[str]:
    out = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO,
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return set(out.splitlines())


@pytest.fixture(scope="module")
def kiosk_run(
    tmp_path_factory: pytest.TempPathFactory, portrait_enrol: Path, portrait_verify: Path
) -> KioskRun:
    root = tmp_path_factory.mktemp("privacy")
    state = root / "state"
    cfg = write_config(root / "kiosk.toml", state)
    # The kiosk loop runs offline; `outbox drain` then publishes to a private broker.
    broker = start_mosquitto(tmp_path_factory.mktemp("privacy-broker"))
    cfg.write_text(cfg.read_text().replace(
        "[mqtt]\n", f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
    ))
    env = cli_env(cfg, root / "tmp")
    claims = root / "keypad-lines.txt"
    claims.write_text(f"{PHONE}\n")  # what a customer types on the bakery keypad
    run = KioskRun(root, state, root / "tmp", claims, portrait_enrol, portrait_verify,
                   time.time(), _porcelain())  # fmt: skip
    src = f"file:{portrait_verify}"
    steps = {
        "keys-init": ["keys", "init"],
        "keys-public": ["keys", "public"],
        "enroll": ["enroll", SUBJECT, "--source", f"file:{portrait_enrol}"],
        "verify": ["verify", SUBJECT, "--source", src, "--json", "--seed", "5"],
        "run-claim": ["run", "--claim", f"{SUBJECT} 42.00 pos-7", "--source", src],
        "run-keypad": ["run", "--claims-from", str(claims), "--source", src,
                       "--max-frames", "120"],
        "templates-list": ["templates", "list"],
        "outbox-status": ["outbox", "status"],
    }  # fmt: skip
    umask = os.umask(0o022)  # the usual login umask: file modes must not depend on it
    try:
        for name, argv in steps.items():
            proc = facegate(env, "-v", *argv)
            assert proc.returncode == 0, f"{name}: {proc.stderr[-2000:]}"
            run.procs[name] = proc
        with sqlite3.connect(f"file:{state / 'outbox.db'}?mode=ro", uri=True) as db:
            run.events = db.execute("SELECT type, payload FROM outbox ORDER BY id").fetchall()
        run.published = _drain_to_subscriber(env, broker.host, broker.port, run)
    finally:
        os.umask(umask)
        broker.stop()
    return run


def _drain_to_subscriber(env: dict[str, str], host: str, port: int, run: KioskRun) -> list[bytes]:
    """`outbox drain` while a backend-like subscriber listens; returns what it received."""
    import threading

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[bytes] = []
    subscribed = threading.Event()
    sub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    sub.on_message = lambda client, userdata, msg: got.append(bytes(msg.payload))
    sub.on_subscribe = lambda *args: subscribed.set()
    sub.connect(host, port)
    sub.loop_start()
    try:
        sub.subscribe("facegate/v1/#", qos=1)
        assert subscribed.wait(10), "subscriber not ready"
        proc = facegate(env, "-v", "outbox", "drain", "--timeout", "20")
        assert proc.returncode == 0, proc.stderr[-2000:]
        run.procs["outbox-drain"] = proc
        wait_until(lambda: len(got) >= len(run.events), 10, "the drained events at the subscriber")
    finally:
        sub.loop_stop()
        sub.disconnect()
    return got


@pytest.fixture(scope="module")
def plaintext(kiosk_run: KioskRun) -> dict[str, np.ndarray]:
    """The enrolled template recomputed here with the same pipeline, and the stored one
    decrypted with the device keys: the vectors a leak would write."""
    from edge.camera import open_source
    from edge.config import load_config
    from edge.templates.enroll import EnrolmentCapture, build_template
    from edge.templates.store import open_store
    from edge.vision.pipeline import VisionPipeline

    cfg = load_config(kiosk_run.root / "kiosk.toml")
    pipeline = VisionPipeline.from_config(cfg, with_embedder=True)
    n = cfg.templates.enroll_frames
    capture = EnrolmentCapture(cfg, pipeline, n)
    with open_source(f"file:{kiosk_run.enrol_video}", cfg.camera, realtime=False) as source:
        for frame in source:
            if capture.step(frame, pipeline.observe(frame)):
                break
    frames = capture.finish()
    template = build_template(frames, n, cfg.templates.enroll_min_agreement).embedding
    with open_store(kiosk_run.state, DEVICE) as store:
        stored = np.asarray(store.reference(SUBJECT), np.float32)
    vectors = {"stored": stored, "recomputed": np.asarray(template, np.float32)}
    vectors.update({f"frame{i}": np.asarray(v, np.float32) for i, v in enumerate(frames)})
    return vectors


# -- helpers --------------------------------------------------------------------------------


def _files(*roots: Path) -> Iterator[Path]:
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
            for name in filenames:
                p = Path(dirpath) / name
                if p.is_file() and not p.is_symlink():
                    yield p


def image_kind(path: Path) -> str | None:
    """What an image file looks like from its first bytes, whatever its name says."""
    with open(path, "rb") as f:
        head = f.read(64)
    size = path.stat().st_size
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:2] == b"BM" and len(head) >= 6 and int.from_bytes(head[2:6], "little") == size:
        return "bmp"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04") and b".npy" in head:
        return "npz"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"GIF8",) or re.match(rb"P[1-6]\s+\d+\s+\d+", head):
        return "gif/pnm"
    return None


def windows(vec: np.ndarray, width: int = 16) -> list[bytes]:
    """A few `width`-byte windows of the vector's bytes (4 float32s each)."""
    raw = vec.tobytes()
    return [raw[i : i + width] for i in range(0, len(raw) - width + 1, len(raw) // 6)]


def holders(needles: list[bytes], *roots: Path, exclude: tuple[Path, ...] = ()) -> list[str]:
    found = []
    for p in _files(*roots):
        if p in exclude:
            continue
        data = p.read_bytes()
        found += [f"{p} holds needle #{i}" for i, n in enumerate(needles) if n in data]
    return found


def _outputs(run: KioskRun) -> Iterator[tuple[str, str, str]]:
    for name, proc in run.procs.items():
        yield name, "stderr", proc.stderr
        yield name, "stdout", proc.stdout


# -- the run itself: the checks below mean something only if it really happened --------------


def test_the_session_really_enrolled_verified_and_paid(kiosk_run: KioskRun) -> None:
    enrolled = json.loads(kiosk_run.procs["enroll"].stdout.splitlines()[-1])
    assert enrolled["subject"] == SUBJECT and enrolled["state"] == "active"
    verified = json.loads(kiosk_run.procs["verify"].stdout)
    assert verified["decision"] == "accept" and verified["liveness"]["blinks"] >= 1
    summary = json.loads(kiosk_run.procs["run-claim"].stdout.splitlines()[-1])
    assert any(d["decision"] == "accept" for d in summary["decisions"])
    assert any(e.startswith("payment.authorize") for e in summary["events"])
    status = json.loads(kiosk_run.procs["outbox-status"].stdout)
    assert status["pending"] >= 1
    drained = json.loads(kiosk_run.procs["outbox-drain"].stdout.splitlines()[-1])
    assert drained["drained"] and drained["acked"] == status["pending"]


def test_recomputed_template_is_the_one_the_store_holds(plaintext: dict[str, np.ndarray]) -> None:
    """So the needles searched for below are the real plaintext, not a near miss."""
    np.testing.assert_allclose(plaintext["recomputed"], plaintext["stored"], atol=1e-6)
    assert plaintext["stored"].shape == (128,)


# -- no image on disk -----------------------------------------------------------------------


def test_no_image_file_is_written_in_the_state_dir_temp_dir_or_repo(kiosk_run: KioskRun) -> None:
    assert not (kiosk_run.root / "debug-capture").exists(), "debug capture is off"
    images = [f"{p}: {k}" for p in _files(kiosk_run.root) if (k := image_kind(p))]
    # The repo: new or changed paths since the run started, and any file written meanwhile
    # (build outputs such as out/ are git-ignored, so they are found by time, not by git).
    changed = {ln[3:].strip() for ln in _porcelain() - kiosk_run.porcelain_before}
    recent = {p for p in _files(REPO) if p.stat().st_mtime >= kiosk_run.started - 1}
    for p in {REPO / c for c in changed if (REPO / c).is_file()} | recent:
        if k := image_kind(p):
            images.append(f"{p}: {k}")
    assert images == []


def _pixel_needles(video: Path) -> tuple[list[bytes], np.ndarray]:
    """Short pixel runs from the middle (the face) of the first frames, as BGR, RGB and gray,
    and the first frame itself (for the control test)."""
    import cv2

    needles, first = [], None
    cap = cv2.VideoCapture(str(video))
    try:
        for _ in range(15):  # the frames the enrolment or the session looked at first
            ok, bgr = cap.read()
            assert ok
            first = bgr if first is None else first
            h, w = bgr.shape[:2]
            patch = np.ascontiguousarray(bgr[h // 2, w // 2 - 16 : w // 2 + 16])  # 96 bytes
            assert len(set(patch.tobytes())) > 12, "pick a textured row (the face)"
            needles += [patch.tobytes(), np.ascontiguousarray(patch[:, ::-1]).tobytes()]
            gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[h // 2, w // 2 - 32 : w // 2 + 32]
            needles.append(np.ascontiguousarray(gray).tobytes())
    finally:
        cap.release()
    assert first is not None
    return needles, first


def test_the_scanners_would_find_an_image_or_a_raw_frame(
    kiosk_run: KioskRun, tmp_path: Path
) -> None:
    import cv2

    needles, frame = _pixel_needles(kiosk_run.video)
    assert cv2.imwrite(str(tmp_path / "a.png"), frame)
    assert cv2.imwrite(str(tmp_path / "b.jpg"), frame)
    assert cv2.imwrite(str(tmp_path / "c.bmp"), frame)
    np.save(tmp_path / "d.npy", frame)
    for src, disguised in (("a.png", "x.dat"), ("b.jpg", "y"), ("c.bmp", "z.bin"),
                           ("d.npy", "w.tmp")):
        (tmp_path / src).rename(tmp_path / disguised)
    assert sorted(str(image_kind(p)) for p in _files(tmp_path)) == ["bmp", "jpeg", "npy", "png"]
    raw = tmp_path / "frame.raw"
    raw.write_bytes(frame.tobytes())
    rgb = tmp_path / "frame-rgb.raw"
    rgb.write_bytes(np.ascontiguousarray(frame[:, :, ::-1]).tobytes())
    found = holders(needles, tmp_path)
    assert any(str(raw) in f for f in found) and any(str(rgb) in f for f in found)


def test_no_raw_frame_pixels_are_written_anywhere_under_the_run(kiosk_run: KioskRun) -> None:
    needles = _pixel_needles(kiosk_run.enrol_video)[0] + _pixel_needles(kiosk_run.video)[0]
    assert holders(needles, kiosk_run.root) == []


# -- no plaintext template at rest ----------------------------------------------------------


def test_the_file_search_would_find_a_leaked_embedding(
    tmp_path: Path, plaintext: dict[str, np.ndarray]
) -> None:
    leak = tmp_path / "leak.bin"
    leak.write_bytes(b"junk" + plaintext["stored"].tobytes() + b"junk")
    assert len(holders(windows(plaintext["stored"]), tmp_path)) == len(windows(plaintext["stored"]))


def test_plaintext_embedding_is_in_no_file(
    kiosk_run: KioskRun, plaintext: dict[str, np.ndarray]
) -> None:
    needles = []
    for vec in plaintext.values():
        needles += windows(vec) + windows(vec.astype(np.float64))
    assert holders(needles, kiosk_run.root) == []


# -- logs and terminal output ---------------------------------------------------------------


def _key_material(run: KioskRun) -> tuple[list[str], list[str]]:
    """(private key encodings, public key hex) of the device."""
    private = []
    for f in sorted((run.state / "keys").glob("*.key")):
        raw = f.read_bytes()
        assert len(raw) == 32
        private += [raw.hex(), raw.hex().upper(), base64.b64encode(raw).decode().rstrip("=")]
    public = json.loads(run.procs["keys-public"].stdout)
    return private, [public["signing_public"], public["sealing_public"]]


def test_no_output_ever_shows_a_private_key_and_logs_show_no_key_at_all(
    kiosk_run: KioskRun,
) -> None:
    private, public = _key_material(kiosk_run)
    for name, stream, text in _outputs(kiosk_run):
        assert not [k for k in private if k in text], f"{name} {stream} shows a private key"
        if stream == "stderr":
            assert not [k for k in public if k in text], f"{name} logs a public key"
    # Public keys are printed on purpose, by the two commands that register the device.
    assert all(k in kiosk_run.procs["keys-public"].stdout for k in public)


def test_private_keys_are_in_no_file_but_their_own(kiosk_run: KioskRun) -> None:
    keys = sorted((kiosk_run.state / "keys").glob("*.key"))
    raw = [k.read_bytes() for k in keys]
    assert holders(raw, kiosk_run.root, exclude=tuple(keys)) == []


FLOAT_LIST = re.compile(r"(?:[-+]?\d*\.\d+(?:[eE][-+]?\d+)?[\s,;]+){8,}")
HEX_RUN = re.compile(r"[0-9a-fA-F]{64,}")
B64_RUN = re.compile(r"[A-Za-z0-9+/]{44,}={0,2}")


def _suspicious_b64(text: str) -> list[str]:
    # Random bytes in base64 mix digits, upper and lower case; paths and words do not.
    return [
        m for m in B64_RUN.findall(text)
        if re.search(r"\d", m) and re.search(r"[A-Z]", m) and re.search(r"[a-z]", m)
    ]  # fmt: skip


def test_logs_contain_no_template_vector_or_blob(
    kiosk_run: KioskRun, plaintext: dict[str, np.ndarray]
) -> None:
    vec = plaintext["stored"]
    encodings = [vec.tobytes().hex()[:32], base64.b64encode(vec.tobytes()).decode()[:24]]
    encodings.append(", ".join(f"{x:.3f}" for x in vec[:4]))
    for name, stream, text in _outputs(kiosk_run):
        where = f"{name} {stream}"
        assert not FLOAT_LIST.search(text), f"{where}: a long list of floats"
        assert not [e for e in encodings if e in text], f"{where}: the template"
        assert not _suspicious_b64(text), f"{where}: a base64 blob"
        blobs = HEX_RUN.findall(text)
        if stream == "stdout" and name in ("keys-init", "keys-public"):
            _, public = _key_material(kiosk_run)
            blobs = [b for b in blobs if b not in public]
        assert blobs == [], f"{where}: a long hex run"


def test_the_log_scanner_would_catch_a_logged_template(plaintext: dict[str, np.ndarray]) -> None:
    vec = plaintext["stored"]
    assert FLOAT_LIST.search(f"DEBUG emb={vec.tolist()}")
    assert FLOAT_LIST.search(str(vec))
    assert HEX_RUN.search(vec.tobytes().hex())
    assert _suspicious_b64(base64.b64encode(vec.tobytes()).decode())


def test_a_phone_number_typed_as_a_claim_is_never_logged_printed_or_stored(
    kiosk_run: KioskRun,
) -> None:
    shown = [f"{n} {s}" for n, s, text in _outputs(kiosk_run) if PHONE in text]
    stored = holders([PHONE.encode()], kiosk_run.root, exclude=(kiosk_run.claims_file,))
    assert (shown, stored) == ([], [])


# -- events ---------------------------------------------------------------------------------


def _number_arrays(value: Any, path: str = "") -> list[str]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _number_arrays(v, f"{path}.{k}")]
    if isinstance(value, list):
        if any(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
            return [path]
        return [p for i, v in enumerate(value) for p in _number_arrays(v, f"{path}[{i}]")]
    return []


BIOMETRIC = re.compile(r"embed|template|vector|landmark|image|frame|chip|face|pixel", re.I)


def test_events_queued_and_published_carry_no_arrays_of_numbers_nor_biometric_fields(
    kiosk_run: KioskRun,
) -> None:
    rows = kiosk_run.events
    assert sorted(kiosk_run.published) == sorted(p for _, p in rows), "published = queued"
    types = [t for t, _ in rows]
    # The keypad run typed a phone number: refused as a claim, so it made no event at all.
    assert "payment.authorize" in types, types
    for _, payload in rows:
        event = json.loads(payload)
        assert _number_arrays(event) == [], event
        assert not [k for k in _walk_keys(event) if BIOMETRIC.search(k)], event


def _walk_keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _walk_keys(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk_keys(v)


def test_every_file_in_the_state_dir_is_private_to_the_service_user(kiosk_run: KioskRun) -> None:
    assert (kiosk_run.state.stat().st_mode & 0o077) == 0
    exposed = [
        f"{p.relative_to(kiosk_run.state)} {p.stat().st_mode & 0o777:o}"
        for p in _files(kiosk_run.state)
        if p.stat().st_mode & 0o077
    ]
    assert exposed == []
