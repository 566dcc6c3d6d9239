"""The kiosk main loop: frames in, prompts out, systemd kept informed.

This first version drives the camera and vision stages and tells the person in front of the
kiosk what to do; verification sessions, events and the actuator are wired in as those parts
land (see the issues).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from edge.camera import Source
from edge.config import Config
from edge.sdnotify import Notifier

log = logging.getLogger(__name__)

Display = Callable[[str], None]


@dataclass
class KioskStats:
    frames: int = 0
    frames_with_face: int = 0
    prompts: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


class Kiosk:
    """Runs the loop over one `Source`; `pipeline` is the vision pipeline (None: camera only)."""

    def __init__(
        self,
        cfg: Config,
        source: Source,
        *,
        pipeline: Any | None,
        display: Display,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.source = source
        self.pipeline = pipeline
        self.display = display
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.stop_event = threading.Event()
        self._last_prompt = ""

    def _prompt(self, text: str, stats: KioskStats) -> None:
        if text != self._last_prompt:
            self._last_prompt = text
            stats.prompts.append(text)
            self.display(text)

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        self.stop_event.set()

    def run(self, max_frames: int | None = None) -> KioskStats:
        stats = KioskStats()
        t_start = self.clock()
        last_ping = t_start
        self.notifier.ready(f"watching {self.source.uri}")
        self._prompt("Please look at the camera", stats)
        for frame in self.source:
            if self.stop_event.is_set():
                break
            stats.frames += 1
            if self.pipeline is not None:
                faces = self.pipeline.observe(frame.image)
                if len(faces) > 1:
                    self._prompt("One person at a time, please", stats)
                elif faces:
                    stats.frames_with_face += 1
                    self._prompt("Hold still", stats)
                else:
                    self._prompt("Please look at the camera", stats)
            now = self.clock()
            if now - last_ping >= 1.0:
                self.notifier.watchdog()
                last_ping = now
            if max_frames is not None and stats.frames >= max_frames:
                break
        stats.elapsed_s = self.clock() - t_start
        self.notifier.stopping()
        return stats


def install_signal_handlers(kiosk: Kiosk) -> None:
    """SIGTERM (systemd stop) and SIGINT end the loop after the current frame."""
    signal.signal(signal.SIGTERM, kiosk.request_stop)
    signal.signal(signal.SIGINT, kiosk.request_stop)
