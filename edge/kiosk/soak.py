"""`facegate bench --soak MINUTES`: the real kiosk loop over a looped video, watching its memory.

DESIGN §7 wants the resident memory of `facegate run` flat over hours of replay. The soak runs
what `facegate run` runs for a smart lock — the vision pipeline, the verification session with
its blink challenge and passive PAD, the lockout and presence stores, the template store, the
SQLite outbox with signed events, the state dispatcher — in a private temporary state dir, on a
video replayed as fast as it decodes, again and again, cut into visits: VISIT_S of the video,
then GAP_S of empty scene (the person steps away), so every visit is a new session: a busy
door, one visitor after another. The person in the video is enrolled from its own frames.

Resident memory (VmRSS of /proc/self/status) is sampled at the baseline (1 minute, or half the
run when it is shorter: the models and caches are warm by then) and at the end, and once a
minute in between; `rss_mb_end` is taken in the loop as the time runs out, before anything
is closed; `growth_mb` = end − baseline is the figure to watch (a leak of ~1 KB per
session shows as megabytes within the hour at this replay rate).
"""

from __future__ import annotations

import resource
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from edge.camera import open_source
from edge.camera.base import Frame
from edge.config import Config
from edge.errors import DataError
from edge.kiosk.display.dispatcher import Dispatcher
from edge.kiosk.loop import Kiosk
from edge.kiosk.presence import PresenceStore
from edge.session.lockout import LockoutStore
from edge.templates.store import TemplateStore, db_path
from edge.transport.outbox import OUTBOX_FILE, Outbox
from edge.trust.events import EventFactory
from edge.trust.keys import init_keys
from edge.vision.pipeline import VisionPipeline

VISIT_S = 4.0  # of video per visit: acquisition plus a blink challenge fit in it
GAP_S = 0.7  # empty scene between visits (> the kiosk's 0.3 s "has left" wait)
BASELINE_S = 60.0
SAMPLE_EVERY_S = 60.0
ENROL_FRAMES = 8
SUBJECT = "soak-tenant"


def rss_mb() -> float:
    """Resident set size of this process now, MiB (VmRSS; the peak where /proc is absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class _Memory:
    """RSS samples on the wall clock of the soak (module doc)."""

    baseline_s: float
    t0: float = field(default_factory=time.monotonic)
    baseline_mb: float | None = None
    end_mb: float | None = None  # in the loop, at the deadline (before anything is closed)
    samples: list[tuple[float, float]] = field(default_factory=list)  # one a minute

    def tick(self) -> None:
        at = time.monotonic() - self.t0
        if self.baseline_mb is None and at >= self.baseline_s:
            self.baseline_mb = rss_mb()
        if at >= SAMPLE_EVERY_S * (len(self.samples) + 1):
            self.samples.append((round(at, 1), round(rss_mb(), 1)))


class LoopedSource:
    """A file replayed until `duration_s` of wall time has passed, cut into visits with GAP_S of
    empty scene between them (module doc); frame time runs on (the session needs a monotonic
    timeline)."""

    def __init__(self, uri: str, cfg: Config, duration_s: float, memory: _Memory) -> None:
        self.uri, self.cfg, self.duration_s, self.memory = uri, cfg, duration_s, memory
        self.passes = 0
        self.visits = 0

    def __enter__(self) -> LoopedSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.close()

    def close(self) -> None:
        return None

    def __iter__(self) -> Iterator[Frame]:
        t, index = 0.0, 0
        dt = 1.0 / 30
        deadline = self.memory.t0 + self.duration_s
        visit_t0 = 0.0
        while time.monotonic() < deadline:
            prev: float | None = None
            shape = None
            with open_source(self.uri, self.cfg.camera, realtime=False) as src:
                for frame in src:
                    if prev is not None:
                        dt = max(1e-3, frame.t_monotonic - prev)
                    prev, shape = frame.t_monotonic, frame.image.shape
                    if t - visit_t0 >= VISIT_S:  # the visitor leaves; the next one comes
                        empty = np.zeros(shape, np.uint8)
                        for _ in range(max(1, round(GAP_S / dt))):
                            yield Frame(empty, t, index)
                            t, index = t + dt, index + 1
                        self.visits += 1
                        visit_t0 = t
                    self.memory.tick()
                    yield Frame(frame.image, t, index)
                    t, index = t + dt, index + 1
                    if time.monotonic() >= deadline:
                        self.memory.end_mb = rss_mb()
                        return
            if shape is None:
                raise DataError(f"{self.uri} gave no frames to soak on; give a video --source")
            self.passes += 1


def _reference(vision: Any, uri: str, cfg: Config) -> Any:
    """The mean embedding of the first frames with a face (the tenant of the soak)."""
    vecs = []
    with open_source(uri, cfg.camera, realtime=False) as src:
        for frame in src:
            faces = [o for o in vision.observe(frame.image) if o.landmarks is not None]
            if faces:
                vecs.append(vision.embed(frame.image, faces[0].landmarks))
            if len(vecs) == ENROL_FRAMES:
                break
    if not vecs:
        raise DataError(f"no face in {uri} to enrol for the soak; give a video of a person")
    v = np.mean(vecs, axis=0)
    return v / np.linalg.norm(v)


def run_soak(
    cfg: Config, uri: str, minutes: float, *, baseline_s: float = BASELINE_S,
) -> dict[str, Any]:  # fmt: skip
    """Run the kiosk loop for `minutes` on `uri` looped; the soak JSON (module doc)."""
    if not 0 < minutes <= 24 * 60:
        raise DataError(f"--soak {minutes:g}: give minutes in (0, 1440]")
    duration_s = minutes * 60.0
    baseline_s = min(baseline_s, duration_s / 2)
    cfg = _soak_config(cfg)
    vision = VisionPipeline.from_config(cfg)
    with tempfile.TemporaryDirectory(prefix="facegate-soak-") as tmp:
        state = Path(tmp)
        keys = init_keys(state, cfg.device.id)
        with (
            TemplateStore(db_path(state), keys) as store,
            Outbox(state / OUTBOX_FILE, cfg.outbox.max_events) as outbox,
            LockoutStore.open(state, cfg.session) as lockout,
        ):
            store.enrol(SUBJECT, _reference(vision, uri, cfg), validity_s=86_400)
            presence = PresenceStore(state / "presence.sqlite")
            dispatcher = Dispatcher()
            memory = _Memory(baseline_s)
            source = LoopedSource(uri, cfg, duration_s, memory)
            start_mb = rss_mb()
            kiosk = Kiosk(
                cfg, source, vision=vision, display=lambda _text: None, store=store,
                outbox=outbox, factory=EventFactory(cfg.device.id, cfg.device.site,
                                                    keys.signing_key),
                lockout=lockout, presence=presence, dispatcher=dispatcher,
            )  # fmt: skip
            try:
                stats = kiosk.run()
            finally:
                dispatcher.stop()
                presence.close()
            closed_mb = rss_mb()
            queued = int(outbox.status().get("pending", 0))
    end_mb = memory.end_mb if memory.end_mb is not None else closed_mb
    baseline_mb = memory.baseline_mb if memory.baseline_mb is not None else end_mb
    totals = stats.totals()
    return {
        "source": uri,
        "minutes": minutes,
        "elapsed_s": round(stats.elapsed_s, 1),
        "passes": source.passes,
        "visits": source.visits,
        "frames": stats.frames,
        "frames_with_face": stats.frames_with_face,
        "sessions": totals["sessions"],
        "outcomes": totals["outcomes"],
        "events": totals["events_total"],
        "events_queued": queued,
        "bad_frames": stats.bad_frames,
        "session_ms": totals["session_ms"],
        "frame_ms": totals["frame_ms"],
        "rss_mb_start": round(start_mb, 1),
        "baseline_s": round(baseline_s, 1),
        "rss_mb_baseline": round(baseline_mb, 1),
        "rss_mb_end": round(end_mb, 1),
        # from the rounded figures, so the JSON adds up
        "growth_mb": round(round(end_mb, 1) - round(baseline_mb, 1), 1),
        "rss_mb_after_run": round(closed_mb, 1),
        "rss_mb_samples": memory.samples,
        "rss_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "note": "the real kiosk loop (smart_lock, blink challenge, passive PAD, SQLite "
        "outbox/lockout/presence) on the looped video; rss_mb_baseline at baseline_s (1 minute, "
        "or half a shorter run), growth_mb = rss_mb_end - rss_mb_baseline",
    }


def _soak_config(cfg: Config) -> Config:
    """The given config as a smart lock whose household is the store's (the soak tenant)."""
    import dataclasses

    return dataclasses.replace(
        cfg, profile="smart_lock", smart_lock=dataclasses.replace(cfg.smart_lock, household=())
    )
