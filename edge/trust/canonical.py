"""Canonical JSON: the exact bytes a signature covers — RFC 8785 (JSON Canonicalization Scheme).

`dumps` is RFC 8785 (package `rfc8785`): UTF-8, object keys sorted by UTF-16 code units, no
whitespace, minimal string escaping, numbers in ECMAScript form (`1` not `1.0`, `1e-7` not
`1e-07`), integers within ±(2**53 - 1), NaN and infinities refused. Any JCS library (Go, Java,
JavaScript, Rust) produces the same bytes for the same value, so a backend in another language
can verify a device's signature. `loads` refuses anything that is not plain JSON (duplicate keys,
NaN, trailing data) and `loads_canonical` anything not already in that exact form, so a verifier
compares bytes, not meanings.

`normalize` is a separate, signer-side step: it rounds floats to FLOAT_DECIMALS decimals (a
score of 0.912345678 is signed as 0.912346) so payloads stay short; verifiers never round.

Contract change (issue 15): before RFC 8785 the bytes were Python's `json.dumps` (float repr:
`1.0`, `1e-05`). Events still waiting in a kiosk's outbox from that version are accepted by the
backend through `legacy_dumps` (see edge/trust/events.py); nothing new is signed that way.
"""

from __future__ import annotations

import json
import math
from typing import Any

import rfc8785

FLOAT_DECIMALS = 6
_SAFE_INT = 2**53 - 1


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


def _same_in_stdlib(value: Any) -> bool:
    """True when `json.dumps(sort_keys, ",", ":")` gives exactly the RFC 8785 bytes for `value`.

    That holds for ASCII keys (code-point order = UTF-16 order), integers in the I-JSON range and
    floats that Python and ECMAScript both print in plain decimal (not integral, no exponent);
    string escaping is the same in both. The verifier's hot path takes this C encoder (about 5x
    faster than the pure-Python one); anything else goes through `rfc8785`. (Written with
    exact type checks and loops: it runs on every event the backend receives.)
    """
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-_SAFE_INT <= value <= _SAFE_INT)
    if kind is float:
        return math.isfinite(value) and not value.is_integer() and "e" not in repr(value)
    if kind is dict:
        for k, v in value.items():
            if type(k) is not str or not k.isascii():
                return False
            vk = type(v)
            if vk is str or vk is bool or v is None:
                continue  # the common leaves, without a call each
            if vk is int:
                if not -_SAFE_INT <= v <= _SAFE_INT:
                    return False
            elif not _same_in_stdlib(v):
                return False
        return True
    if kind is list:
        return all(_same_in_stdlib(v) for v in value)  # lists are rare: no event has one
    return False  # subclasses (IntEnum, OrderedDict, tuples…): the general encoder decides


def dumps(value: Any) -> bytes:
    """RFC 8785 canonical UTF-8 bytes of a JSON value; raise CanonicalError if it has none."""
    if _same_in_stdlib(value):
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates in a str
            raise CanonicalError(
                f"string is not valid Unicode ({exc.reason}); remove surrogates"
            ) from exc
    try:
        try:
            return rfc8785.dumps(value)
        except rfc8785.IntegerDomainError:
            # A JSON number is a double: an integer beyond 2**53 that a double holds exactly (as
            # a parsed "1e+16" or "9007199254740992" is) has the double's form; others have none.
            return rfc8785.dumps(_big_ints_as_doubles(value))
    except rfc8785.CanonicalizationError as exc:
        raise CanonicalError(f"no RFC 8785 form: {exc}") from exc
    except RecursionError as exc:
        raise CanonicalError("JSON nested too deeply") from exc
    except OverflowError as exc:
        raise CanonicalError("integer too large for a JSON number") from exc


def _big_ints_as_doubles(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _SAFE_INT:
        double = float(value)  # the number a JSON reader takes it for (OverflowError: too big)
        if rfc8785.dumps(double) != str(value).encode():
            raise CanonicalError(f"integer {value} is not the canonical form of a JSON number")
        return double
    if isinstance(value, dict):
        return {k: _big_ints_as_doubles(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_big_ints_as_doubles(v) for v in value]
    return value


def legacy_dumps(value: Any) -> bytes:
    """The pre-RFC 8785 canonical bytes (Python float repr), for verifying old outbox events."""
    text = json.dumps(
        normalize(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
        allow_nan=False,
    )  # fmt: skip
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalError(f"string is not valid Unicode ({exc.reason})") from exc


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
        raise CanonicalError(
            "JSON is valid but not canonical (RFC 8785: key order, spacing or number form)"
        )
    return value
