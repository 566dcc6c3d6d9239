"""Subject ids from card and phone numbers: keyed, pseudonymous, reproducible by the back office."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

import pytest

from edge.errors import KeyStoreError
from edge.ids import is_valid_id
from edge.trust.keys import (
    CREDENTIAL_NAMES,
    FILE_NAMES,
    SUBJECT_KEY_CREDENTIAL,
    SUBJECT_KEY_FILE,
    init_keys,
    keys_dir,
    load_keys,
)
from edge.trust.subject_ids import normalise_digits, subject_from_number

KEY = bytes(range(32))
PHONE = "13800138000"


def test_subject_is_the_documented_hmac_so_the_back_office_can_compute_it() -> None:
    expected = hmac.new(KEY, b"phone:13800138000", hashlib.sha256).hexdigest()[:32]
    assert subject_from_number("phone", PHONE, KEY) == f"phone-{expected}"


def test_subject_follows_the_id_rule_and_holds_128_bits() -> None:
    subject = subject_from_number("card", "0004123456", KEY)
    assert is_valid_id(subject)
    kind, digest = subject.split("-", 1)
    assert kind == "card" and len(digest) == 32 and int(digest, 16) >= 0


def test_number_is_not_in_the_subject_and_each_kind_and_key_gives_another_id() -> None:
    phone = subject_from_number("phone", PHONE, KEY)
    assert PHONE not in phone
    assert subject_from_number("card", PHONE, KEY).split("-")[1] != phone.split("-")[1]
    assert subject_from_number("phone", PHONE, os.urandom(32)) != phone
    assert subject_from_number("phone", "13800138001", KEY) != phone


@pytest.mark.parametrize("typed", ["138 0013 8000", "138-0013-8000", " 13800138000 ",
                                   "(138) 0013.8000"])  # fmt: skip
def test_separators_typed_with_the_number_do_not_change_the_subject(typed: str) -> None:
    assert subject_from_number("phone", typed, KEY) == subject_from_number("phone", PHONE, KEY)


@pytest.mark.parametrize("bad", ["", "abc", "12a4", "1" * 33, "+", "١٢٣٤", "12\x00"])
def test_a_number_without_digits_only_is_refused_without_echoing_it(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        normalise_digits(bad)
    assert bad.strip() == "" or bad not in str(info.value)


def test_hashing_without_a_provisioned_key_says_how_to_provision_it() -> None:
    with pytest.raises(KeyStoreError) as info:
        subject_from_number("phone", PHONE, None)
    text = str(info.value)
    assert "facegate keys init" in text and SUBJECT_KEY_FILE in text
    assert SUBJECT_KEY_CREDENTIAL in text and PHONE not in text
    with pytest.raises(KeyStoreError, match="32 bytes"):
        subject_from_number("phone", PHONE, b"short")


def test_keys_init_creates_a_private_subject_key_that_load_returns(state_dir: Path) -> None:
    made = init_keys(state_dir, "kiosk-1")
    path = keys_dir(state_dir) / SUBJECT_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_size == 32
    assert made.subject_key is not None and len(made.subject_key) == 32
    assert load_keys(state_dir, "kiosk-1").subject_key == made.subject_key
    assert made.subject_key not in {made.template_key}
    assert made.subject_key.hex() not in repr(made)


def test_key_set_from_before_subject_ids_keeps_loading_and_init_adds_only_the_missing_key(
    state_dir: Path,
) -> None:
    made = init_keys(state_dir, "kiosk-1")
    kdir = keys_dir(state_dir)
    (kdir / SUBJECT_KEY_FILE).unlink()
    before = {n: (kdir / n).read_bytes() for n in FILE_NAMES.values()}
    old = load_keys(state_dir, "kiosk-1")
    assert old.subject_key is None and old.template_key == made.template_key
    added = init_keys(state_dir, "kiosk-1")  # `facegate keys init` on that device
    assert added.subject_key is not None
    assert {n: (kdir / n).read_bytes() for n in FILE_NAMES.values()} == before
    assert load_keys(state_dir, "kiosk-1").subject_key == added.subject_key
    with pytest.raises(KeyStoreError, match="already exists"):
        init_keys(state_dir, "kiosk-1")  # and never overwrites it afterwards
    assert load_keys(state_dir, "kiosk-1").subject_key == added.subject_key


def test_adding_the_subject_key_checks_the_device_id_first(state_dir: Path) -> None:
    init_keys(state_dir, "kiosk-1")
    (keys_dir(state_dir) / SUBJECT_KEY_FILE).unlink()
    with pytest.raises(KeyStoreError, match="belong to device"):
        init_keys(state_dir, "kiosk-2")
    assert not (keys_dir(state_dir) / SUBJECT_KEY_FILE).exists()


def test_world_readable_subject_key_is_refused(state_dir: Path) -> None:
    init_keys(state_dir, "kiosk-1")
    os.chmod(keys_dir(state_dir) / SUBJECT_KEY_FILE, 0o644)
    with pytest.raises(KeyStoreError, match="chmod 600"):
        load_keys(state_dir, "kiosk-1")


def test_subject_key_comes_from_its_credential_and_is_optional_there(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    init_keys(state_dir, "kiosk-1")
    kdir, cred = keys_dir(state_dir), tmp_path / "creds"
    cred.mkdir()
    for what, name in FILE_NAMES.items():
        (cred / CREDENTIAL_NAMES[what]).write_bytes((kdir / name).read_bytes())
        os.chmod(cred / CREDENTIAL_NAMES[what], 0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(cred))
    assert load_keys(tmp_path / "empty", "kiosk-1").subject_key is None
    shared = os.urandom(32)  # the back office's key, installed as a credential (hex form)
    (cred / SUBJECT_KEY_CREDENTIAL).write_text(shared.hex() + "\n")
    os.chmod(cred / SUBJECT_KEY_CREDENTIAL, 0o400)
    assert load_keys(tmp_path / "empty", "kiosk-1").subject_key == shared
