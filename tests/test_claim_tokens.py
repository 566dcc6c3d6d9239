"""QR claim tokens: compact, signed by the backend under a context prefix, refused with a reason."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.backend.claim_tokens import issue_claim_token
from edge.ids import is_valid_id
from edge.trust.claim_tokens import (
    MAX_TOKEN_CHARS,
    ClaimTokenError,
    UsedTokens,
    encode_token,
    signed_message,
    token_body,
    verify_claim_token,
)

NOW = 1_900_000_000.0
BACKEND = Ed25519PrivateKey.generate()
PUB = BACKEND.public_key()


def _reason(text: str, now: float = NOW) -> str:
    with pytest.raises(ClaimTokenError) as info:
        verify_claim_token(text, PUB, now)
    return info.value.reason


def _raw(token: str) -> bytearray:
    return bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_issued_token_verifies_and_names_the_subject_and_expiry() -> None:
    token = issue_claim_token(BACKEND, "rider-000042", 300, NOW)
    checked = verify_claim_token(token, PUB, NOW + 1)
    assert checked.subject == "rider-000042"
    assert checked.expires_at == int(NOW + 300)
    assert len(checked.nonce) == 8


def test_token_is_small_enough_for_a_camera_read_qr_code() -> None:
    token = issue_claim_token(BACKEND, "rider-000042", 300, NOW)  # a 12-character subject id
    assert len(token) <= 120
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    longest = issue_claim_token(BACKEND, "r" * 64, 300, NOW)
    assert len(longest) <= MAX_TOKEN_CHARS
    assert verify_claim_token(longest, PUB, NOW).subject == "r" * 64


def test_two_tokens_for_one_subject_differ_by_their_nonce() -> None:
    a = issue_claim_token(BACKEND, "rider-1", 300, NOW)
    b = issue_claim_token(BACKEND, "rider-1", 300, NOW)
    assert a != b
    assert verify_claim_token(a, PUB, NOW).nonce != verify_claim_token(b, PUB, NOW).nonce


def test_token_signed_by_another_key_is_forged() -> None:
    stranger = Ed25519PrivateKey.generate()
    assert _reason(issue_claim_token(stranger, "rider-1", 300, NOW)) == "forged"


def test_changed_subject_expiry_or_signature_is_forged() -> None:
    token = issue_claim_token(BACKEND, "rider-1", 300, NOW)
    for index in (2, 8, -70, -1):  # expiry, nonce, last subject byte ("1" -> "0"), signature
        raw = _raw(token)
        raw[index] ^= 0x01
        assert _reason(_b64(bytes(raw))) == "forged", index


def test_signature_without_the_context_prefix_is_forged() -> None:
    # A backend signature over the same bytes for another purpose must never pass as a token.
    body = token_body("rider-1", int(NOW + 300), os.urandom(8))
    assert _reason(encode_token(body, BACKEND.sign(body))) == "forged"
    assert verify_claim_token(encode_token(body, BACKEND.sign(signed_message(body))), PUB, NOW)


def test_token_at_or_after_its_expiry_is_expired() -> None:
    token = issue_claim_token(BACKEND, "rider-1", 60, NOW)
    assert verify_claim_token(token, PUB, NOW + 59)
    assert _reason(token, NOW + 60) == "expired"
    assert _reason(token, NOW + 86400) == "expired"


def test_token_valid_for_more_than_a_day_from_now_is_too_far_in_future() -> None:
    body = token_body("rider-1", int(NOW + 2 * 86400), os.urandom(8))
    token = encode_token(body, BACKEND.sign(signed_message(body)))
    assert _reason(token) == "too_far_in_future"
    assert verify_claim_token(token, PUB, NOW + 1.5 * 86400).subject == "rider-1"


@pytest.mark.parametrize(
    "text",
    ["", "hello", "https://example.com/ticket?id=42", "A" * 10_000, "A" * (MAX_TOKEN_CHARS + 1),
     "!" * 120, "A" * 121],  # fmt: skip
)
def test_text_that_is_not_a_token_is_malformed(text: str) -> None:
    assert _reason(text) == "malformed"


def test_wrong_version_or_subject_breaking_the_id_rule_is_malformed_even_if_signed() -> None:
    for body in (
        b"\x02" + token_body("rider-1", int(NOW + 60), b"n" * 8)[1:],
        token_body("rider-1", int(NOW + 60), b"n" * 8)[:13] + b"-bad subject",
        token_body("rider-1", int(NOW + 60), b"n" * 8)[:13] + "rïder".encode(),
    ):
        assert _reason(encode_token(body, BACKEND.sign(signed_message(body)))) == "malformed"


def test_issuing_checks_subject_and_ttl() -> None:
    with pytest.raises(ValueError, match="id rule"):
        issue_claim_token(BACKEND, "not an id", 300, NOW)
    for ttl in (0, 9, 86401):
        with pytest.raises(ValueError, match="ttl"):
            issue_claim_token(BACKEND, "rider-1", ttl, NOW)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(min_size=60, max_size=160).map(_b64)))
def test_any_text_is_refused_with_a_reason_and_nothing_else(text: str) -> None:
    with pytest.raises(ClaimTokenError) as info:
        verify_claim_token(text, PUB, NOW)
    assert info.value.reason in {"malformed", "forged"}
    assert str(info.value) == f"claim token refused: {info.value.reason}"  # never the text


def test_used_token_is_refused_the_second_time_even_after_a_restart(tmp_path: Path) -> None:
    token = verify_claim_token(issue_claim_token(BACKEND, "rider-1", 300, NOW), PUB, NOW)
    other = verify_claim_token(issue_claim_token(BACKEND, "rider-1", 300, NOW), PUB, NOW)
    with UsedTokens(tmp_path / "used.sqlite") as used:
        used.use(token, NOW)
        with pytest.raises(ClaimTokenError) as info:
            used.use(token, NOW + 1)
        assert info.value.reason == "used"
        used.use(other, NOW + 1)  # the same rider's next token is a new token
    with UsedTokens(tmp_path / "used.sqlite") as used, pytest.raises(ClaimTokenError, match="used"):
        used.use(token, NOW + 2)


def test_used_tokens_file_is_private_and_holds_no_token_text(tmp_path: Path) -> None:
    text = issue_claim_token(BACKEND, "rider-1", 300, NOW)
    path = tmp_path / "used.sqlite"
    with UsedTokens(path) as used:
        used.use(verify_claim_token(text, PUB, NOW), NOW)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert text.encode() not in blob
    assert _raw(text)[-64:] not in blob  # not even the signature


def test_used_tokens_are_purged_after_they_expire(tmp_path: Path) -> None:
    with UsedTokens(tmp_path / "used.sqlite") as used:
        for i in range(50):
            token = issue_claim_token(BACKEND, f"rider-{i}", 60, NOW + i)
            used.use(verify_claim_token(token, PUB, NOW + i), NOW + i)
        assert len(used) == 50
        late = verify_claim_token(issue_claim_token(BACKEND, "rider-x", 60, NOW + 100), PUB,
                                  NOW + 100)  # fmt: skip
        used.use(late, NOW + 100)  # purges tokens expired by then: i + 60 < 100, i.e. i < 40
        assert len(used) == 10 + 1
        assert used.purge(NOW + 1000) == 11
        assert len(used) == 0


def test_subject_rule_is_the_one_id_rule() -> None:
    token = issue_claim_token(BACKEND, "a.b_c-9", 300, NOW)
    assert is_valid_id(verify_claim_token(token, PUB, NOW).subject)
