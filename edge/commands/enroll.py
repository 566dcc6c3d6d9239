"""`facegate enroll SUBJECT --source URI [--frames N]`: on-device enrolment of one person."""

from __future__ import annotations

import argparse
import json
import sys

from edge.camera import open_source
from edge.camera.lease import borrowed_if_kiosks
from edge.config import Config
from edge.errors import FacegateError, TemplateError
from edge.templates.enroll import EnrolmentCapture, build_template, enrol_template
from edge.templates.record_cipher import ACTIVE
from edge.templates.store import open_store
from edge.trust.sealed import check_subject

MAX_FRAMES = 50


def run(args: argparse.Namespace, cfg: Config) -> int:
    subject = check_subject(args.subject)
    n_frames = args.frames if args.frames is not None else cfg.templates.enroll_frames
    if not 1 <= n_frames <= MAX_FRAMES:
        raise FacegateError(f"--frames {n_frames}: must be between 1 and {MAX_FRAMES}")
    with open_store(cfg.state_dir, cfg.device.id) as store:
        # Check before the person stands in front of the camera, not after.
        existing = store.info(subject)
        if existing is not None and existing.state == ACTIVE:
            raise TemplateError(
                f"subject {subject!r} is already enrolled (version {existing.version}); "
                f"revoke it first with `facegate templates revoke {subject}`"
            )
        store.check_readable()  # a wrong template key is known now, not after the capture
        from edge.vision.pipeline import VisionPipeline

        pipeline = VisionPipeline.from_config(cfg, with_embedder=True)
        capture = EnrolmentCapture(cfg, pipeline, n_frames)
        # File replays run as fast as possible: liveness uses the recording's own timeline.
        # The source is opened before the prompt: nobody is asked to look at a dead camera.
        # The kiosk's own camera is borrowed from the running kiosk (edge/camera/lease.py).
        with (
            borrowed_if_kiosks(args.source, cfg.camera.source, cfg.state_dir),
            open_source(args.source, cfg.camera, realtime=False) as source,
        ):
            print("look at the camera and blink naturally", file=sys.stderr, flush=True)
            for frame in source:
                if capture.step(frame, pipeline.observe(frame)):
                    break
        embeddings = capture.finish()
        template = build_template(embeddings, n_frames, cfg.templates.enroll_min_agreement)
        del embeddings  # per-frame embeddings are not needed past this point
        info = enrol_template(store, subject, template, cfg)
    out = {
        **info.as_dict(),
        "frames": template.frames,
        "min_agreement": round(template.min_agreement, 4),
        "capture": capture.report.to_dict(),
    }
    print(json.dumps(out, sort_keys=True))
    return 0
