"""Source URIs: `picamera2:0`, `cam:0`, `v4l2:/dev/video0`, `gst:<pipeline>`, `file:<path>`."""

from __future__ import annotations

from dataclasses import dataclass

from edge.errors import SourceError

SCHEMES = ("picamera2", "cam", "v4l2", "gst", "file")
_HELP = "use picamera2:N, cam:N, v4l2:/dev/videoN, gst:<pipeline> or file:<video|image|dir>"


@dataclass(frozen=True)
class SourceSpec:
    """A parsed URI: `kind` is one of SCHEMES; `target` an index, device, pipeline or path."""

    uri: str
    kind: str
    target: str

    @property
    def index(self) -> int:
        return int(self.target)


def parse_source_uri(uri: str) -> SourceSpec:
    """Parse a source URI, raising SourceError naming the URI and the accepted forms."""
    if not isinstance(uri, str) or not uri.strip():
        raise SourceError(f"empty source URI; {_HELP}")
    if "\x00" in uri:
        raise SourceError(f"source URI {uri!r} contains a NUL character; {_HELP}")
    scheme, sep, target = uri.partition(":")
    if not sep:
        raise SourceError(f"source URI {uri!r} has no scheme; {_HELP}")
    if scheme not in SCHEMES:
        raise SourceError(f"source URI {uri!r}: unknown scheme {scheme!r}; {_HELP}")
    if scheme == "file" and target.startswith("//"):
        target = target[2:]  # accept file:///abs/path as well as file:/abs/path
    if not target:
        raise SourceError(f"source URI {uri!r}: nothing after '{scheme}:'; {_HELP}")
    if scheme in ("cam", "picamera2") and not (target.isdigit() and len(target) <= 3):
        raise SourceError(f"source URI {uri!r}: '{scheme}:' takes a camera index such as 0")
    if scheme == "v4l2" and not target.startswith("/dev/"):
        raise SourceError(f"source URI {uri!r}: 'v4l2:' takes a device path such as /dev/video0")
    return SourceSpec(uri=uri, kind=scheme, target=target)
