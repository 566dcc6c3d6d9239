"""Canonical JSON: the exact bytes a signature covers.

UTF-8, keys sorted, separators (",", ":"), no ASCII escaping of non-ASCII text, floats rounded
to FLOAT_DECIMALS decimals (NaN and infinities refused, -0.0 written as 0.0). Two parties that
agree on a value therefore agree on its bytes, and `loads` refuses anything that is not exactly
that form (duplicate keys, NaN, trailing data), so a verifier can compare bytes, not meanings.
"""

from __future__ import annotations

import json
import math
from typing import Any

FLOAT_DECIMALS = 6


class CanonicalError(ValueError):
    """A value that has no canonical JSON form, or bytes that are not canonical JSON."""


def normalize(value: Any) -> Any:
    """The JSON value with floats rounded and tuples as lists; raise CanonicalError if not JSON."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)  # bool is handled above; IntEnum etc. become plain ints
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CanonicalError(f"float {value!r} has no JSON form; use a finite number")
        rounded = round(value, FLOAT_DECIMALS)
        return 0.0 if rounded == 0.0 else rounded  # -0.0 and 0.0 must give the same bytes
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise CanonicalError(f"object key {k!r} is not a string; use string keys")
            out[k] = normalize(v)
        return out
    raise CanonicalError(f"{type(value).__name__} is not a JSON value; use str/int/float/list/dict")


def dumps(value: Any) -> bytes:
    """Canonical UTF-8 bytes of a JSON value."""
    text = json.dumps(
        normalize(value),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates in a str
        raise CanonicalError(
            f"string is not valid Unicode ({exc.reason}); remove surrogates"
        ) from exc


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise CanonicalError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise CanonicalError(f"{name} is not allowed in canonical JSON")


def loads(data: bytes) -> Any:
    """Parse UTF-8 JSON strictly (no duplicate keys, no NaN/Infinity); raise CanonicalError."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CanonicalError(f"not UTF-8 at byte {exc.start}") from exc
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise CanonicalError(f"not JSON: {exc.msg} at offset {exc.pos}") from exc
    except RecursionError as exc:
        raise CanonicalError("JSON nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer longer than Python's digit limit
        raise CanonicalError(f"not acceptable JSON: {exc}") from exc


def loads_canonical(data: bytes) -> Any:
    """Parse bytes and insist they are already canonical (re-encoding gives the same bytes)."""
    value = loads(data)
    if dumps(value) != data:
        raise CanonicalError("JSON is valid but not canonical (key order, spacing or float form)")
    return value
