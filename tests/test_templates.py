"""Encrypted template store: round trip, nothing in clear on disk, every bad record refused."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.backend.sealing import seal_template
from edge.errors import TemplateError
from edge.templates.store import TemplateStore, db_path
from edge.trust.keys import DeviceKeys, init_keys

DAY = 86400
T0 = 1_800_000_000


class Clock:
    def __init__(self) -> None:
        self.t = float(T0)

    def __call__(self) -> float:
        return self.t


def unit(seed: int, dim: int = 128) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def keys(state_dir: Path) -> DeviceKeys:
    return init_keys(state_dir, "kiosk-1")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(state_dir: Path, keys: DeviceKeys, clock: Clock) -> TemplateStore:
    s = TemplateStore(db_path(state_dir), keys, clock=clock)
    yield s  # type: ignore[misc]
    s.close()


@pytest.fixture(scope="module")
def backend() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def sealed(
    keys: DeviceKeys,
    backend: Ed25519PrivateKey,
    subject: str,
    version: int,
    seed: int = 7,
    expires_s: int = T0 + 30 * DAY,
) -> bytes:
    return seal_template(
        backend,
        keys.sealing_key.public_key(),
        keys.device_id,
        subject,
        version,
        unit(seed),
        T0,
        expires_s,
    )


def raw_files(path: Path) -> bytes:
    out = b""
    for p in (path, Path(f"{path}-wal")):
        if p.exists():
            out += p.read_bytes()
    return out


def stored_records(path: Path) -> dict[str, bytes]:
    with sqlite3.connect(path) as db:
        return {
            s: bytes(r)
            for s, r in db.execute("SELECT subject, record FROM templates WHERE record IS NOT NULL")
        }


def assert_absent(needle: bytes, haystack: bytes, chunk: int = 16) -> None:
    assert needle not in haystack
    for i in range(0, len(needle) - chunk + 1, chunk):
        assert needle[i : i + chunk] not in haystack, f"substring at {i} found on disk"


# -- round trip and plaintext never on disk ---------------------------------------------------


def test_enrolled_embedding_round_trips_through_the_store(store: TemplateStore) -> None:
    info = store.enrol("u-1", unit(1) * 3.0, validity_s=365 * DAY)
    assert (info.subject, info.version, info.state, info.origin) == ("u-1", 1, "active", "enrol")
    assert info.expires_s == T0 + 365 * DAY
    np.testing.assert_allclose(store.reference("u-1"), unit(1), atol=1e-6)


def test_database_and_wal_never_contain_the_plaintext_embedding(
    store: TemplateStore, state_dir: Path
) -> None:
    vectors = {f"u-{i}": unit(100 + i) for i in range(20)}
    for s, v in vectors.items():
        store.enrol(s, v, validity_s=DAY)
    path = db_path(state_dir)
    assert Path(f"{path}-wal").stat().st_size > 0  # the WAL really holds the recent writes
    on_disk = raw_files(path)
    for v in vectors.values():
        assert_absent(v.astype("<f4").tobytes(), on_disk)
        assert_absent(v.astype(">f4").tobytes(), on_disk)
    store._checkpoint()
    on_disk = raw_files(path)
    for v in vectors.values():
        assert_absent(v.astype("<f4").tobytes(), on_disk)


def test_database_files_are_private_to_the_owner(store: TemplateStore, state_dir: Path) -> None:
    store.enrol("u-1", unit(1), validity_s=DAY)
    for p in (db_path(state_dir), Path(f"{db_path(state_dir)}-wal")):
        assert p.stat().st_mode & 0o077 == 0, p


def test_list_shows_metadata_only(store: TemplateStore) -> None:
    store.enrol("u-1", unit(1), validity_s=DAY)
    store.enrol("u-2", unit(2), validity_s=DAY)
    store.revoke("u-2")
    rows = [i.as_dict() for i in store.list_all()]
    assert [(r["subject"], r["state"]) for r in rows] == [("u-1", "active"), ("u-2", "revoked")]
    assert set(rows[0]) == {"subject", "version", "state", "origin", "created", "expires"}


def test_enrolling_an_active_subject_again_is_refused(store: TemplateStore) -> None:
    store.enrol("u-1", unit(1), validity_s=DAY)
    with pytest.raises(TemplateError, match="'u-1' is already enrolled.*revoke"):
        store.enrol("u-1", unit(2), validity_s=DAY)
    np.testing.assert_allclose(store.reference("u-1"), unit(1), atol=1e-6)


# -- every bad record is refused, naming subject and reason; the rest is untouched ------------


def test_flipped_byte_in_a_record_on_disk_is_refused_and_others_still_verify(
    store: TemplateStore, state_dir: Path, keys: DeviceKeys, clock: Clock
) -> None:
    store.enrol("u-1", unit(1), validity_s=DAY)
    store.enrol("u-2", unit(2), validity_s=DAY)
    store._checkpoint()
    store.close()
    path = db_path(state_dir)
    record = stored_records(path)["u-1"]
    raw = bytearray(path.read_bytes())
    at = raw.find(record)
    assert at >= 0 and raw.count(record) == 1
    raw[at + 40] ^= 0x04  # inside the ciphertext
    path.write_bytes(bytes(raw))
    with TemplateStore(path, keys, clock=clock) as reopened:
        with pytest.raises(TemplateError, match="'u-1'.*fails authentication"):
            reopened.reference("u-1")
        np.testing.assert_allclose(reopened.reference("u-2"), unit(2), atol=1e-6)


@pytest.mark.parametrize(
    "column, value",
    [
        ("version", "version + 1"),
        ("expires_s", "expires_s + 3650 * 86400"),
        ("subject", "'u-3'"),
    ],
)
def test_record_moved_to_another_row_or_with_edited_metadata_is_refused(
    store: TemplateStore, state_dir: Path, column: str, value: str
) -> None:
    store.enrol("u-1", unit(1), validity_s=DAY)
    store.enrol("u-2", unit(2), validity_s=DAY)
    with sqlite3.connect(db_path(state_dir)) as db:
        db.execute(f"UPDATE templates SET {column} = {value} WHERE subject = 'u-1'")
    who = "u-3" if column == "subject" else "u-1"
    with pytest.raises(TemplateError, match=f"'{who}'.*fails authentication"):
        store.reference(who)
    np.testing.assert_allclose(store.reference("u-2"), unit(2), atol=1e-6)


def test_wrong_template_key_is_refused_per_subject_and_loses_nothing(
    store: TemplateStore, state_dir: Path, tmp_path: Path, keys: DeviceKeys
) -> None:
    store.enrol("u-1", unit(1), validity_s=DAY)
    impostor = init_keys(tmp_path / "other", "kiosk-1")
    with TemplateStore(db_path(state_dir), impostor) as wrong:
        with pytest.raises(TemplateError, match="'u-1'.*template key does not match"):
            wrong.reference("u-1")
        with pytest.raises(TemplateError, match="template key does not match"):
            wrong.enrol("u-9", unit(9), validity_s=DAY)  # never mix keys in one store
        assert [i.subject for i in wrong.list_all()] == ["u-1"]
    np.testing.assert_allclose(store.reference("u-1"), unit(1), atol=1e-6)


def test_store_copied_from_another_device_is_refused(
    store: TemplateStore, state_dir: Path, tmp_path: Path
) -> None:
    store.enrol("u-1", unit(1), validity_s=DAY)
    store._checkpoint()
    other_dir = tmp_path / "other"
    other = init_keys(other_dir, "kiosk-2")
    shutil.copy(db_path(state_dir), db_path(other_dir))
    with (
        TemplateStore(db_path(other_dir), other) as copied,
        pytest.raises(TemplateError, match="'u-1'.*belongs to device 'kiosk-1'"),
    ):
        copied.reference("u-1")


def test_expired_template_is_refused_then_tombstoned_by_expire(
    store: TemplateStore, clock: Clock
) -> None:
    store.enrol("u-1", unit(1), validity_s=DAY)
    store.enrol("u-2", unit(2), validity_s=10 * DAY)
    clock.t += 2 * DAY
    with pytest.raises(TemplateError, match="'u-1'.*expired on"):
        store.reference("u-1")
    assert store.expire() == ["u-1"]
    assert {i.subject: i.state for i in store.list_all()} == {"u-1": "expired", "u-2": "active"}
    np.testing.assert_allclose(store.reference("u-2"), unit(2), atol=1e-6)


def test_revoked_template_is_refused_and_its_ciphertext_is_gone_from_disk(
    store: TemplateStore, state_dir: Path
) -> None:
    store.enrol("u-1", unit(1), validity_s=DAY)
    store.enrol("u-2", unit(2), validity_s=DAY)
    record = stored_records(db_path(state_dir))["u-1"]
    info = store.revoke("u-1")
    assert (info.state, info.version) == ("revoked", 1)
    with pytest.raises(TemplateError, match="'u-1'.*version 1 is revoked"):
        store.reference("u-1")
    assert_absent(record[12:], raw_files(db_path(state_dir)))
    np.testing.assert_allclose(store.reference("u-2"), unit(2), atol=1e-6)


def test_unknown_subject_is_refused_with_how_to_enrol(store: TemplateStore) -> None:
    with pytest.raises(TemplateError, match="'nobody'.*no template.*facegate enroll"):
        store.reference("nobody")


# -- sealed import: replay, expiry, versions --------------------------------------------------


def test_imported_template_verifies(
    store: TemplateStore, keys: DeviceKeys, backend: Ed25519PrivateKey
) -> None:
    info, changed = store.import_sealed(sealed(keys, backend, "u-5", 2), backend.public_key())
    assert changed and (info.version, info.origin) == (2, "import")
    np.testing.assert_allclose(store.reference("u-5"), unit(7), atol=1e-6)


def test_replayed_old_version_of_a_revoked_template_is_refused(
    store: TemplateStore, keys: DeviceKeys, backend: Ed25519PrivateKey
) -> None:
    pub = backend.public_key()
    v1, v2, v3 = (sealed(keys, backend, "u-5", v, seed=v) for v in (1, 2, 3))
    store.import_sealed(v1, pub)
    store.import_sealed(v2, pub)
    store.revoke("u-5")
    for old in (v1, v2):
        with pytest.raises(TemplateError, match="'u-5'.*replay.*revoked at version 2"):
            store.import_sealed(old, pub)
    with pytest.raises(TemplateError, match="revoked"):
        store.reference("u-5")
    store.import_sealed(v3, pub)  # a newer version re-activates the subject
    np.testing.assert_allclose(store.reference("u-5"), unit(3), atol=1e-6)


def test_older_version_never_replaces_a_newer_one_and_redelivery_is_a_no_op(
    store: TemplateStore, keys: DeviceKeys, backend: Ed25519PrivateKey
) -> None:
    pub = backend.public_key()
    store.import_sealed(sealed(keys, backend, "u-5", 4, seed=4), pub)
    with pytest.raises(TemplateError, match="'u-5'.*older than the stored version 4"):
        store.import_sealed(sealed(keys, backend, "u-5", 3, seed=3), pub)
    _info, changed = store.import_sealed(sealed(keys, backend, "u-5", 4, seed=4), pub)
    assert not changed
    np.testing.assert_allclose(store.reference("u-5"), unit(4), atol=1e-6)


def test_expired_sealed_template_is_refused_on_import(
    store: TemplateStore, keys: DeviceKeys, backend: Ed25519PrivateKey
) -> None:
    blob = sealed(keys, backend, "u-5", 1, expires_s=T0 - 1)
    with pytest.raises(TemplateError, match="'u-5'.*expired on"):
        store.import_sealed(blob, backend.public_key())
    assert store.list_all() == []


def test_template_sealed_for_another_device_is_refused_on_import(
    store: TemplateStore, tmp_path: Path, backend: Ed25519PrivateKey
) -> None:
    other = init_keys(tmp_path / "o", "kiosk-2")
    with pytest.raises(TemplateError, match="'u-5'.*sealed for device 'kiosk-2'"):
        store.import_sealed(sealed(other, backend, "u-5", 1), backend.public_key())
    assert store.list_all() == []


# -- wipe and damaged files -------------------------------------------------------------------


def test_wipe_leaves_no_ciphertext_or_plaintext_recoverable_from_the_files(
    store: TemplateStore, state_dir: Path
) -> None:
    vectors = {f"u-{i}": unit(200 + i) for i in range(50)}
    for s, v in vectors.items():
        store.enrol(s, v, validity_s=DAY)
    store.revoke("u-0")
    path = db_path(state_dir)
    records = stored_records(path)
    assert len(records) == 49
    assert store.wipe() == 49
    on_disk = raw_files(path)
    for rec in records.values():
        assert_absent(rec, on_disk)
    for v in vectors.values():
        assert_absent(v.astype("<f4").tobytes(), on_disk)
    # the tombstone survives, so the revoked template still cannot be replayed
    assert [(i.subject, i.state) for i in store.list_all()] == [("u-0", "revoked")]
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0


def test_truncated_database_file_gives_a_clear_error_with_the_fix(
    state_dir: Path, keys: DeviceKeys, clock: Clock
) -> None:
    path = db_path(state_dir)
    with TemplateStore(path, keys, clock=clock) as s:
        for i in range(300):
            s.enrol(f"u-{i}", unit(i), validity_s=DAY)
        s._checkpoint()
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    errors: list[str] = []
    try:
        s = TemplateStore(path, keys, clock=clock)
    except TemplateError as exc:  # damage found while opening: also a clear refusal
        errors.append(str(exc))
    else:
        with s:
            for i in range(300):
                try:
                    ref = s.reference(f"u-{i}")
                except TemplateError as exc:
                    errors.append(str(exc))
                else:
                    np.testing.assert_allclose(ref, unit(i), atol=1e-6)  # never a wrong match
    assert errors
    for msg in errors:
        assert "damaged or truncated" in msg and "facegate templates wipe --yes" in msg


def test_database_file_cut_to_a_stub_is_refused_at_open(state_dir: Path, keys: DeviceKeys) -> None:
    path = db_path(state_dir)
    with TemplateStore(path, keys) as s:
        s.enrol("u-1", unit(1), validity_s=DAY)
        s._checkpoint()
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(TemplateError, match="damaged or truncated.*templates wipe"):
        TemplateStore(path, keys).reference("u-1")


def test_wipe_of_a_damaged_database_still_destroys_it(state_dir: Path, keys: DeviceKeys) -> None:
    from edge.templates.store import wipe_files

    path = db_path(state_dir)
    with TemplateStore(path, keys) as s:
        s.enrol("u-1", unit(1), validity_s=DAY)
        s._checkpoint()
    record = stored_records(path)["u-1"]
    path.write_bytes(path.read_bytes()[:3000] + os.urandom(100))
    wipe_files(path)
    assert not path.exists() or record[12:40] not in path.read_bytes()


# -- property: whatever bytes end up in a record, it is refused and the others still verify ----


@pytest.fixture(scope="module")
def tamper_store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    d = tmp_path_factory.mktemp("tamper")
    keys = init_keys(d, "kiosk-1")
    with TemplateStore(db_path(d), keys, clock=Clock()) as s:
        s.enrol("victim", unit(1), validity_s=DAY)
        s.enrol("bystander", unit(2), validity_s=DAY)
        original = stored_records(db_path(d))["victim"]
        yield s, d, original


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_change_to_a_stored_record_is_refused_and_isolated(
    tamper_store: Any, data: st.DataObject
) -> None:
    store, d, original = tamper_store
    replacement = data.draw(
        st.one_of(
            st.binary(max_size=700),
            st.builds(
                lambda i, x: original[:i] + bytes([original[i] ^ x]) + original[i + 1 :],
                st.integers(0, len(original) - 1),
                st.integers(1, 255),
            ),
            st.integers(0, len(original) - 1).map(lambda n: original[:n]),
        )
    )
    with sqlite3.connect(db_path(d)) as db:
        db.execute("UPDATE templates SET record = ? WHERE subject = 'victim'", (replacement,))
    with pytest.raises(TemplateError, match="'victim'"):
        store.reference("victim")
    np.testing.assert_allclose(store.reference("bystander"), unit(2), atol=1e-6)
