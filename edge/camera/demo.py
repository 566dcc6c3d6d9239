"""Where `make demo` finds something to look at when no camera source is configured: the clip
shipped inside the package (MIT, demo_clip/NOTICE.md), or a sample under the research data."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from edge.errors import SourceError

DEMO_VIDEOS = (
    "liveness/videos/blink_webcam_7blinks_30fps.mp4",
    "liveness/videos/blink_portrait_24fps.mp4",
)


def data_roots() -> list[Path]:
    """Where research data may live: $FACEGATE_DATA, then ../shared/data beside the checkout."""
    roots = []
    if os.environ.get("FACEGATE_DATA"):
        roots.append(Path(os.environ["FACEGATE_DATA"]))
    repo = Path(__file__).resolve().parents[2]
    roots.append(repo.parent / "shared" / "data")
    return roots


EMBEDDED_CLIP = "liveportrait_d10_30fps.mp4"


def embedded_clip() -> Path:
    """The demo clip that ships inside the package (SourceError if the install lost it)."""
    path = Path(__file__).resolve().parent / "demo_clip" / EMBEDDED_CLIP
    if not path.is_file():
        raise SourceError(f"the embedded demo clip {path} is missing; reinstall facegate")
    return path


def default_source_uri(roots: Sequence[Path] | None = None) -> str:
    """A replay URI for the demo: the embedded clip, else a sample video under $FACEGATE_DATA
    or ../shared/data."""
    try:
        return f"file:{embedded_clip()}"
    except SourceError:
        pass
    for root in data_roots() if roots is None else roots:
        for rel in DEMO_VIDEOS:
            if (root / rel).is_file():
                return f"file:{root / rel}"
    raise SourceError(
        "no camera source configured and no demo video found; pass --source URI "
        "(e.g. --source cam:0, --source picamera2:0 or --source file:/path/to/video.mp4) "
        "or set FACEGATE_DATA to the shared data folder"
    )
