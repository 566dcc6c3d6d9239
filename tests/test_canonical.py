"""Canonical JSON: one value, one byte string; anything else is refused."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from edge.trust import canonical
from edge.trust.canonical import CanonicalError

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)  # RFC 8785 / I-JSON range
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


def test_signers_round_floats_to_six_decimals_and_negative_zero_is_zero() -> None:
    value = canonical.normalize({"x": 0.12345678, "y": -0.0, "z": 2.0})
    assert canonical.dumps(value) == b'{"x":0.123457,"y":0,"z":2}'


def test_numbers_are_written_in_ecmascript_form_not_python_repr() -> None:
    # Python's repr would give 1.0, 1e-05, 1e-07 and 1e+16: RFC 8785 prints what JavaScript does
    assert canonical.dumps([1.0, 1e-05, 1e-07, 1e16, 0.91, -2.5, 1e21, 123456789012.5]) == (
        b"[1,0.00001,1e-7,10000000000000000,0.91,-2.5,1e+21,123456789012.5]"
    )


def test_rfc8785_section_3_2_2_example_gives_the_rfc_bytes() -> None:
    # RFC 8785 §3.2.2: the input (as parsed JSON) and its canonical output, byte for byte.
    raw = r'''{
      "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
      "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
      "literals": [null, true, false]
    }'''
    expected = (
        r'''{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'''
        r'''"string":"€$\u000f\nA'B\"\\\\\"/"}'''
    )
    assert canonical.dumps(json.loads(raw)) == expected.encode()


def test_rfc8785_section_3_2_3_keys_sort_by_utf16_code_units() -> None:
    value = {
        "\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One", "\U0001F600": "Emoji: Grinning Face", "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }  # fmt: skip
    expected = (
        '{"\\r":"Carriage Return","1":"One","\u0080":"Control",'
        '"\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign",'
        '"\U0001F600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
    )
    assert canonical.dumps(value) == expected.encode()


@pytest.mark.parametrize(
    ("bits", "text"),
    [  # RFC 8785 Appendix B: IEEE 754 value -> canonical number
        ("0000000000000000", "0"), ("8000000000000000", "0"), ("0000000000000001", "5e-324"),
        ("8000000000000001", "-5e-324"), ("7fefffffffffffff", "1.7976931348623157e+308"),
        ("4340000000000000", "9007199254740992"), ("4430000000000000", "295147905179352830000"),
        ("44b52d02c7e14af5", "9.999999999999997e+22"), ("44b52d02c7e14af6", "1e+23"),
        ("3eb0c6f7a0b5ed8d", "0.000001"), ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ],
)  # fmt: skip
def test_rfc8785_appendix_b_numbers(bits: str, text: str) -> None:
    value = struct.unpack(">d", bytes.fromhex(bits))[0]
    assert canonical.dumps([value]) == f"[{text}]".encode()


@given(json_values)
def test_fast_path_gives_exactly_the_rfc8785_package_bytes(value: Any) -> None:
    assert canonical.dumps(value) == rfc8785.dumps(value)  # json_values: ints in I-JSON range


def test_integers_no_double_holds_are_refused_others_take_the_double_form() -> None:
    with pytest.raises(CanonicalError):
        canonical.dumps({"seq": 2**53 + 1})
    assert canonical.dumps([2**53, 10**16]) == b"[9007199254740992,10000000000000000]"


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


@pytest.mark.parametrize(
    "raw", [b'{"b":1,"a":2}', b'{"a": 1}', b'{"a":1.0}', b'{"a":1e2}', b'{"a":1e-07}']
)
def test_loads_canonical_refuses_valid_but_non_canonical_bytes(raw: bytes) -> None:
    json.loads(raw)  # valid JSON...
    with pytest.raises(CanonicalError):
        canonical.loads_canonical(raw)  # ...but not the canonical form


@given(json_values)
def test_round_trip_is_a_fixed_point(value: Any) -> None:
    once = canonical.dumps(value)
    # the same JSON value: numbers compare as the doubles they are (1e16 is read back as an int)
    assert _doubles(canonical.loads_canonical(once)) == _doubles(value)
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


def _doubles(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _doubles(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_doubles(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
