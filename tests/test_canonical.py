"""Canonical JSON: one value, one byte string; anything else is refused."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from edge.trust import canonical
from edge.trust.canonical import CanonicalError

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=25,
)


def test_known_bytes_sorted_keys_no_spaces_utf8() -> None:
    assert canonical.dumps({"b": 1, "a": "é", "c": [1.5, None, True]}) == (
        '{"a":"é","b":1,"c":[1.5,null,true]}'.encode()
    )


def test_floats_are_rounded_to_six_decimals_and_negative_zero_is_zero() -> None:
    assert (
        canonical.dumps({"x": 0.12345678, "y": -0.0, "z": 2.0}) == b'{"x":0.123457,"y":0.0,"z":2.0}'
    )


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused(bad: float) -> None:
    with pytest.raises(CanonicalError):
        canonical.dumps({"x": bad})


@pytest.mark.parametrize("bad", [{1: "int key"}, {"x": b"bytes"}, {"x": {1, 2}}, {"x": "\ud800"}])
def test_non_json_values_are_refused(bad: Any) -> None:
    with pytest.raises(CanonicalError):
        canonical.dumps(bad)


@pytest.mark.parametrize(
    "raw",
    [b'{"a":1,"a":2}', b'{"a":NaN}', b'{"a":Infinity}', b"\xff\xfe", b'{"a":1} x', b"", b"{"],
)
def test_strict_parser_refuses_duplicates_nan_garbage(raw: bytes) -> None:
    with pytest.raises(CanonicalError):
        canonical.loads(raw)


@pytest.mark.parametrize("raw", [b'{"b":1,"a":2}', b'{"a": 1}', b'{"a":1.0000001}', b'{"a":1e2}'])
def test_loads_canonical_refuses_valid_but_non_canonical_bytes(raw: bytes) -> None:
    json.loads(raw)  # valid JSON...
    with pytest.raises(CanonicalError):
        canonical.loads_canonical(raw)  # ...but not the canonical form


@given(json_values)
def test_round_trip_is_a_fixed_point(value: Any) -> None:
    once = canonical.dumps(value)
    assert canonical.loads_canonical(once) == canonical.normalize(value)
    assert canonical.dumps(canonical.loads(once)) == once


@given(st.dictionaries(st.text(max_size=8), scalars, min_size=1, max_size=8), st.randoms())
def test_key_insertion_order_does_not_change_bytes(d: dict[str, Any], rnd: Any) -> None:
    items = list(d.items())
    rnd.shuffle(items)
    assert canonical.dumps(dict(items)) == canonical.dumps(d)


_KEY = Ed25519PrivateKey.generate()


@given(json_values, st.randoms())
def test_a_signature_verifies_over_any_equivalent_encoding_once_canonicalised(
    value: Any, rnd: Any
) -> None:
    # Not the fixed point again (test_round_trip_is_a_fixed_point): the verifier here gets the
    # same value in other bytes - keys in another order, spaces, \u escapes, full-precision
    # floats - and canonicalising them must give back exactly the bytes that were signed.
    sig = _KEY.sign(canonical.dumps(value))
    other = json.dumps(_shuffled(value, rnd), ensure_ascii=True, indent=1).encode()
    _KEY.public_key().verify(sig, canonical.dumps(canonical.loads(other)))


def _shuffled(value: Any, rnd: Any) -> Any:
    if isinstance(value, dict):
        items = [(k, _shuffled(v, rnd)) for k, v in value.items()]
        rnd.shuffle(items)
        return dict(items)
    if isinstance(value, list):
        return [_shuffled(v, rnd) for v in value]
    return value
