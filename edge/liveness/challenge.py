"""The "blink now" challenge: a randomly timed prompt and the window a blink must start in."""

from __future__ import annotations

import random
from dataclasses import dataclass

from edge.config import LivenessConfig
from edge.liveness.blink import Blink


@dataclass(frozen=True)
class Challenge:
    """The "blink now" prompt: shown at `prompt_t`; blinks starting in the window count."""

    prompt_t: float
    window_end_t: float
    blinks_required: int

    def counts(self, blink: Blink) -> bool:
        """True when the blink started inside the response window (after the prompt)."""
        return self.prompt_t <= blink.start_t <= self.window_end_t

    @property
    def text(self) -> str:
        return "blink now" if self.blinks_required == 1 else f"blink {self.blinks_required} times"


def schedule_challenge(acquired_t: float, cfg: LivenessConfig, rng: random.Random) -> Challenge:
    """Place the prompt a random delay after acquisition, so a recording cannot anticipate it."""
    delay = rng.uniform(cfg.prompt_delay_min_s, cfg.prompt_delay_max_s)
    return challenge_at(acquired_t + delay, cfg)


def challenge_at(prompt_t: float, cfg: LivenessConfig) -> Challenge:
    """A challenge whose prompt is shown at `prompt_t` (s)."""
    return Challenge(prompt_t, prompt_t + cfg.response_window_s, cfg.blinks_required)
