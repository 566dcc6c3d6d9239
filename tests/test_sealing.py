"""Sealed templates: backend seals and signs for one device; the device opens or refuses."""

from __future__ import annotations

import base64
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.backend.keys import backend_public_hex, generate_backend_keys, load_backend_signing_key
from edge.backend.sealing import seal_template
from edge.errors import KeyStoreError, TemplateError
from edge.trust.keys import DeviceKeys, init_keys, parse_backend_public_key
from edge.trust.sealed import decode_sealed_file, open_sealed

NOW = 1_800_000_000


def unit(seed: int, dim: int = 128) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> DeviceKeys:
    return init_keys(tmp_path_factory.mktemp("dev"), "kiosk-1")


@pytest.fixture(scope="module")
def backend() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def seal(device: DeviceKeys, backend: Ed25519PrivateKey, **kw: object) -> bytes:
    args: dict[str, object] = dict(
        device_sealing_public=device.sealing_key.public_key(),
        device_id=device.device_id,
        subject="u-0001",
        version=3,
        embedding=unit(1),
        created_s=NOW,
        expires_s=NOW + 86400,
    )
    args.update(kw)
    return seal_template(backend, **args)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def blob(device: DeviceKeys, backend: Ed25519PrivateKey) -> bytes:
    return seal(device, backend)


def test_round_trip_recovers_metadata_and_embedding(
    device: DeviceKeys, backend: Ed25519PrivateKey, blob: bytes
) -> None:
    opened = open_sealed(blob, device, backend.public_key())
    assert (opened.subject, opened.version, opened.device_id) == ("u-0001", 3, "kiosk-1")
    assert (opened.created_s, opened.expires_s) == (NOW, NOW + 86400)
    np.testing.assert_allclose(opened.embedding, unit(1), atol=1e-6)
    assert "embedding" not in repr(opened) and str(unit(1)[0]) not in repr(opened)


def test_plaintext_embedding_is_not_visible_in_the_sealed_bytes(blob: bytes) -> None:
    plain = unit(1).astype("<f4").tobytes()
    for i in range(0, len(plain) - 8, 8):
        assert plain[i : i + 8] not in blob


def test_template_sealed_for_another_device_is_refused_naming_the_device(
    tmp_path: Path, device: DeviceKeys, backend: Ed25519PrivateKey
) -> None:
    other = init_keys(tmp_path, "kiosk-2")
    blob = seal(other, backend)
    with pytest.raises(TemplateError, match=r"'u-0001'.*sealed for device 'kiosk-2'"):
        open_sealed(blob, device, backend.public_key())


def test_template_sealed_to_another_sealing_key_is_refused(
    tmp_path: Path, device: DeviceKeys, backend: Ed25519PrivateKey
) -> None:
    other = init_keys(tmp_path, "kiosk-1")  # same id, different key (device re-provisioned)
    blob = seal(other, backend)
    with pytest.raises(TemplateError, match="sealing key"):
        open_sealed(blob, device, backend.public_key())


def test_template_signed_by_another_backend_is_refused(device: DeviceKeys, blob: bytes) -> None:
    stranger = Ed25519PrivateKey.generate()
    with pytest.raises(TemplateError, match="'u-0001'.*signature does not verify"):
        open_sealed(blob, device, stranger.public_key())


def test_every_single_flipped_byte_is_refused(
    device: DeviceKeys, backend: Ed25519PrivateKey, blob: bytes
) -> None:
    pub = backend.public_key()
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(TemplateError):
            open_sealed(bytes(bad), device, pub)


def test_every_truncation_is_refused(
    device: DeviceKeys, backend: Ed25519PrivateKey, blob: bytes
) -> None:
    for n in range(len(blob)):
        with pytest.raises(TemplateError):
            open_sealed(blob[:n], device, backend.public_key())
    with pytest.raises(TemplateError, match="trailing"):
        open_sealed(blob + b"\0", device, backend.public_key())


def test_file_may_hold_raw_bytes_or_base64_text(blob: bytes) -> None:
    assert decode_sealed_file(blob) == blob
    assert decode_sealed_file(base64.b64encode(blob) + b"\n") == blob
    with pytest.raises(TemplateError, match="bad magic"):
        decode_sealed_file(b"hello world")


def test_invalid_subject_ids_are_refused_before_sealing(
    device: DeviceKeys, backend: Ed25519PrivateKey
) -> None:
    for subject in ["", "a/b", "x" * 129, "bad\nline", "-lead"]:
        with pytest.raises(TemplateError, match="not a valid subject id"):
            seal(device, backend, subject=subject)


def test_backend_key_pair_files_round_trip_and_permissions(tmp_path: Path) -> None:
    key = generate_backend_keys(tmp_path / "backend")
    path = tmp_path / "backend" / "backend-signing.key"
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = load_backend_signing_key(path)
    assert backend_public_hex(loaded) == backend_public_hex(key)
    pub_text = (tmp_path / "backend" / "backend-signing.pub").read_text().strip()
    parsed = parse_backend_public_key(pub_text)
    assert parsed.public_bytes_raw() == key.public_key().public_bytes_raw()
    with pytest.raises(KeyStoreError, match="never overwritten"):
        generate_backend_keys(tmp_path / "backend")
    os.chmod(path, 0o644)
    with pytest.raises(KeyStoreError, match="chmod 600"):
        load_backend_signing_key(path)
    with pytest.raises(KeyStoreError, match="backend.public_key"):
        parse_backend_public_key("zz")


# -- property tests: the parser meets arbitrary bytes ------------------------------------------

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(data=st.binary(max_size=2048))
def test_random_bytes_never_crash_the_parser(
    device: DeviceKeys, backend: Ed25519PrivateKey, data: bytes
) -> None:
    with pytest.raises(TemplateError):
        open_sealed(data, device, backend.public_key())


@SETTINGS
@given(tail=st.binary(max_size=1024), dev_len=st.integers(0, 70000), sub_len=st.integers(0, 300))
def test_plausible_headers_with_random_bodies_never_crash(
    device: DeviceKeys, backend: Ed25519PrivateKey, tail: bytes, dev_len: int, sub_len: int
) -> None:
    head = b"FGST\x01" + struct.pack(">H", dev_len % 65536) + b"k" * min(dev_len, 300)
    head += struct.pack(">H", sub_len) + b"u" * sub_len
    with pytest.raises(TemplateError):
        open_sealed(head + tail, device, backend.public_key())


@SETTINGS
@given(
    edits=st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from("xid")),
        min_size=1,
        max_size=6,
    )
)
def test_random_mutations_of_a_valid_blob_are_always_refused(
    device: DeviceKeys,
    backend: Ed25519PrivateKey,
    blob: bytes,
    edits: list[tuple[int, int, str]],
) -> None:
    bad = bytearray(blob)
    for pos, value, op in edits:
        i = pos % (len(bad) + 1)
        if op == "x" and i < len(bad):
            bad[i] ^= value or 1
        elif op == "i":
            bad.insert(i, value)
        elif op == "d" and i < len(bad):
            del bad[i]
    if bytes(bad) == blob:
        return
    with pytest.raises(TemplateError):
        open_sealed(bytes(bad), device, backend.public_key())
