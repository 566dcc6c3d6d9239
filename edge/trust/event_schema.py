"""Event schema: the envelope and fields of each event type, and the biometric guard.

An event is `{v:1, type, device, site, seq, ts, nonce, <type fields>, sig}` (DESIGN §5). Money is
an int in minor units (`amount`, `currency`), `ts` is UTC Unix seconds (float, ms resolution).
Unknown fields are refused, and so is anything that could carry biometric data, before signing
on the device and again on the backend.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

from edge.errors import RefusedError
from edge.ids import is_valid_id

VERSION = 1
MAX_EVENT_BYTES = 4096  # a real event is ~400 bytes; anything bigger is refused unread
MAX_STR = 200
PAYMENT_TYPES = frozenset({"payment.authorize", "fare.charge"})

_HEX32 = re.compile(r"[0-9a-f]{32}")
SIG_HEX = re.compile(r"[0-9a-f]{128}")
_CURRENCY = re.compile(r"[A-Z]{3}")
# Key names that could only exist to carry a face: refused at any depth.
_BIOMETRIC_KEY = re.compile(
    r"image|img|photo|picture|pixel|frame|crop|chip|thumb|jpe?g|png|embed|landmark|keypoint"
    r"|template|vector|feature|descriptor|biometric|face_?data|mesh|encoding",
    re.IGNORECASE,
)
# A base64/hex run this long holds >= 60 bytes: too short for a 128-d embedding or any image,
# long enough to let a sha256-hex pseudonym (64 chars) through.
_BLOB = re.compile(r"[A-Za-z0-9+/_=-]{80,}")
_IMAGE_MAGIC = ("data:", "/9j/", "iVBORw0KGgo", "UklGR", "R0lGOD")  # data URI, JPEG, PNG, WEBP, GIF


class EventError(RefusedError):
    """An event that cannot be built or accepted; `reason` is a short code the backend counts.

    Reasons: too_large, json, non_canonical, schema, biometric, signature.
    """

    prefix = "event error"


Check = Callable[[Any], bool]


def _str(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= MAX_STR


def _str0(v: Any) -> bool:  # may be empty (e.g. no claim yet)
    return isinstance(v, str) and len(v) <= MAX_STR


def _nat(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**53


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _liveness(v: Any) -> bool:
    return (
        isinstance(v, dict)
        and set(v) == {"blinks", "challenge_ms"}
        and _nat(v["blinks"])
        and _nat(v["challenge_ms"])
    )


_DECISION: dict[str, Check] = {
    "subject": _str0,  # pseudonymous id, never a name or phone number
    "decision": lambda v: v in ("accept", "reject"),
    "score": lambda v: v is None or (_num(v) and -1.0 <= v <= 1.0),
    "liveness": _liveness,
}
_MONEY: dict[str, Check] = {
    "amount": _nat,
    "currency": lambda v: _str(v) and bool(_CURRENCY.fullmatch(v)),
}

# type -> (required fields, optional fields)
SCHEMA: dict[str, tuple[dict[str, Check], dict[str, Check]]] = {
    "payment.authorize": (
        {**_DECISION, **_MONEY},
        {"step_up": _bool, "method": _str, "pos_ref": _str},
    ),
    "fare.charge": ({**_DECISION, **_MONEY, "gate": _str}, {"claim": _str, "fare_product": _str}),
    "door.unlock": ({**_DECISION, "door": _str}, {"household": _str}),
    "door.denied": (
        {**_DECISION, "door": _str, "unknown_faces": _nat},
        {"household": _str, "reason": _str},
    ),
    "welfare.alert": (
        {"subject": _str, "household": _str, "days_unseen": _nat},
        {"last_seen_ts": lambda v: v is None or _num(v), "door": _str},
    ),
    "verify.reject": ({**_DECISION, "reason": _str}, {"claim": _str}),
    # The relay failed after a committed accept (the event `accept_seq` of this device): the
    # backend voids or flags that accept. `actuator` is the config's kind (gpio, serial...),
    # `reason` one word (timeout, error).
    "actuator.fault": ({"actuator": _str, "accept_seq": _nat, "reason": _str}, {}),
    "console.audit": (
        {"action": _str, "ok": _bool},
        {"detail": _str0, "actor": _str, "subject": _str},
    ),
    "device.status": (
        {"status": _str},
        {
            "outbox_pending": _nat,
            "outbox_full": _bool,
            "detail": _str0,
            "uptime_s": _num,
            "version": _str,
            # the heartbeat (edge/transport/mqtt.py): settlement state and link
            "outbox_unsettled": _nat,
            "oldest_unsettled_s": lambda v: v is None or (_num(v) and v >= 0),
            "link": _str,
        },
    ),
}
EVENT_TYPES = tuple(SCHEMA)
ENVELOPE: dict[str, Check] = {
    "v": lambda v: v == VERSION,
    "type": lambda v: v in SCHEMA,
    "device": is_valid_id,
    "site": is_valid_id,
    "seq": lambda v: _nat(v) and v >= 1,
    "ts": lambda v: _num(v) and v >= 0,
    "nonce": lambda v: isinstance(v, str) and bool(_HEX32.fullmatch(v)),
}


@functools.lru_cache(maxsize=4096)
def _biometric_key(key: str) -> bool:
    """Cached: the backend checks the same dozen field names on every event it receives."""
    return bool(_BIOMETRIC_KEY.search(key))


def check_no_biometrics(value: Any, path: str = "event") -> None:
    """Refuse anything that could carry a face: image/embedding-like keys, number arrays, blobs.

    Runs on every event the backend receives: a nested path is only spelled out for an error.
    """
    kind = type(value)
    if kind is int or kind is float or kind is bool or value is None:
        return  # a plain number cannot carry a face (a list of them could: lists are refused)
    if kind is dict:  # the common case (parsed JSON): no ABC check, no per-field path string
        for k, v in value.items():
            if type(k) is str and _biometric_key(k):
                raise EventError("biometric", f"{path}.{k}: field name suggests biometric data")
            vk = type(v)
            if vk is int or vk is float or vk is bool or v is None:
                continue
            if (
                vk is str
                and len(v) <= MAX_STR
                and not v.startswith(_IMAGE_MAGIC)
                and (len(v) < 80 or not _BLOB.search(v))
            ):
                continue
            check_no_biometrics(v, f"{path}.{k}")
        return
    if isinstance(value, (bytes, bytearray, memoryview)) or hasattr(value, "__array__"):
        raise EventError("biometric", f"{path}: binary or array data is never allowed in an event")
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(k, str) and _biometric_key(k):
                raise EventError("biometric", f"{path}.{k}: field name suggests biometric data")
            check_no_biometrics(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        # No event field is a list; a list of numbers is exactly what an embedding looks like.
        raise EventError("biometric", f"{path}: arrays are never allowed in an event")
    elif isinstance(value, str) and (
        len(value) > MAX_STR or _BLOB.search(value) or value.startswith(_IMAGE_MAGIC)
    ):
        raise EventError("biometric", f"{path}: long or encoded string (possible image/blob)")


def validate(event: Mapping[str, Any]) -> None:
    """Check an event body (without `sig`) against the envelope and its type's schema."""
    body = event if "sig" not in event else {k: v for k, v in event.items() if k != "sig"}
    check_no_biometrics(body)
    for name, ok in ENVELOPE.items():
        if name not in body:
            raise EventError("schema", f"missing field {name!r}")
        if not ok(body[name]):
            raise EventError("schema", f"field {name!r} has a bad value {body[name]!r}")
    required, optional = SCHEMA[body["type"]]
    for name, ok in required.items():
        if name not in body:
            raise EventError("schema", f"{body['type']}: missing field {name!r}")
        if not ok(body[name]):
            raise EventError(
                "schema", f"{body['type']}: field {name!r} has a bad value {body[name]!r}"
            )
    for name, value in body.items():
        if name in ENVELOPE or name in required:
            continue
        if name not in optional:
            raise EventError("schema", f"{body['type']}: unknown field {name!r}")
        if not optional[name](value):
            raise EventError("schema", f"{body['type']}: field {name!r} has a bad value {value!r}")
