"""`facegate verify SUBJECT --source URI [--json] [--amount A] [--seed N]`: one session.

Runs the full session (acquire, blink challenge per the step-up policy, 1:1 verification) against
the subject's reference embeddings. Exit 0 accepted, 1 rejected, 2 usage/input error.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from edge.camera import open_source
from edge.camera.lease import borrowed_if_kiosks
from edge.config import Config
from edge.session.decision import Decision
from edge.session.lockout import LockoutStore
from edge.session.verification import Embedding, PipelineVision, VerificationSession
from edge.vision.pipeline import VisionPipeline
from edge.vision.track import FaceTracker


def load_reference(cfg: Config, subject: str) -> list[Embedding]:
    """The subject's reference embedding, decrypted from the encrypted template store.

    The plaintext lives only in memory for this one session. TemplateError (exit 2) names the
    subject and the reason: unknown, revoked, expired, tampered, wrong key, other device.
    """
    from edge.templates.store import open_store

    with open_store(cfg.state_dir, cfg.device.id) as store:
        return [store.reference(subject)]


def run_session(
    session: VerificationSession, pipeline: VisionPipeline | FaceTracker, uri: str, cfg: Config
) -> Decision:
    """Feed the source's frames through the pipeline into the session until it decides."""
    prompt: str | None = None
    last_t = 0.0
    # The kiosk's own camera is borrowed from the running kiosk (edge/camera/lease.py).
    with (
        borrowed_if_kiosks(uri, cfg.camera.source, cfg.state_dir),
        open_source(uri, cfg.camera) as src,
    ):
        for frame in src:
            received = time.perf_counter()
            decision = session.step(frame, pipeline.observe(frame.image), received_perf=received)
            last_t = frame.t_monotonic
            if session.prompt != prompt:
                prompt = session.prompt
                if prompt:
                    print(f"prompt: {prompt}", file=sys.stderr)
            if decision is not None:
                return decision
    return session.end_of_stream(last_t)


def run(args: argparse.Namespace, cfg: Config) -> int:
    references = load_reference(cfg, args.subject)
    pipeline = FaceTracker(VisionPipeline.from_config(cfg), cfg.vision.detect_every)
    rng = random.Random(args.seed) if args.seed is not None else None
    with LockoutStore.open(Path(cfg.state_dir), cfg.session) as lockout:
        session = VerificationSession(cfg, PipelineVision(pipeline), lockout=lockout, rng=rng)
        decision = session.claim(args.subject, references, time.monotonic(), amount=args.amount)
        if decision is None:
            decision = run_session(session, pipeline, args.source, cfg)
    if args.json:
        print(json.dumps(decision.to_dict(), sort_keys=True))
    else:
        score = "" if decision.score is None else f" score={decision.score:.3f}"
        why = "" if decision.accepted else f" reason={decision.reason}"
        print(f"{decision.decision} {decision.subject}{why}{score} blinks={decision.blinks}")
    return 0 if decision.accepted else 1
