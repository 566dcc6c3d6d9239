"""Device identity: key files, permissions, systemd credentials."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.errors import KeyStoreError
from edge.trust.event_schema import EventError
from edge.trust.events import EventFactory, verify_event
from edge.trust.keys import (
    CREDENTIAL_NAMES,
    FILE_NAMES,
    init_keys,
    keys_dir,
    load_keys,
    public_keys,
)


def test_init_creates_private_key_files_and_load_returns_the_same_keys(state_dir: Path) -> None:
    made = init_keys(state_dir, "kiosk-1")
    kdir = keys_dir(state_dir)
    assert kdir.stat().st_mode & 0o777 == 0o700
    for name in FILE_NAMES.values():
        assert (kdir / name).stat().st_mode & 0o777 == 0o600
        assert (kdir / name).stat().st_size == 32
    loaded = load_keys(state_dir, "kiosk-1")
    assert loaded.template_key == made.template_key
    assert public_keys(loaded) == public_keys(made)
    assert len(set(public_keys(made).values())) == 3


def test_init_refuses_to_overwrite_existing_keys(state_dir: Path) -> None:
    first = init_keys(state_dir, "kiosk-1")
    with pytest.raises(KeyStoreError, match="already exists"):
        init_keys(state_dir, "kiosk-1")
    assert load_keys(state_dir, "kiosk-1").template_key == first.template_key


def test_events_signed_after_a_reload_verify_with_the_key_published_at_init(
    state_dir: Path,
) -> None:
    # The public key must be the one published when the device was provisioned (init), not one
    # derived from the reloaded key itself: that would verify by construction.
    published = public_keys(init_keys(state_dir, "kiosk-1"))["signing_public"]
    keys = load_keys(state_dir, "kiosk-1")  # after a reboot
    ev = EventFactory("kiosk-1", "s-1", keys.signing_key).build(
        "device.status", 1, status="online"
    )
    pub = Ed25519PublicKey.from_public_bytes(bytes.fromhex(published))
    assert verify_event(ev.payload, pub) == ev.event
    stranger = public_keys(init_keys(state_dir / "other", "kiosk-1"))["signing_public"]
    with pytest.raises(EventError, match="signature"):
        verify_event(ev.payload, Ed25519PublicKey.from_public_bytes(bytes.fromhex(stranger)))


@pytest.mark.parametrize("name", sorted(FILE_NAMES.values()))
def test_group_or_world_readable_key_file_is_refused_with_chmod_fix(
    state_dir: Path, name: str
) -> None:
    init_keys(state_dir, "kiosk-1")
    path = keys_dir(state_dir) / name
    os.chmod(path, 0o644)
    with pytest.raises(KeyStoreError) as err:
        load_keys(state_dir, "kiosk-1")
    assert str(path) in str(err.value) and f"chmod 600 {path}" in str(err.value)


def test_world_readable_key_directory_is_refused(state_dir: Path) -> None:
    init_keys(state_dir, "kiosk-1")
    os.chmod(keys_dir(state_dir), 0o755)
    with pytest.raises(KeyStoreError, match="chmod 700"):
        load_keys(state_dir, "kiosk-1")


def test_missing_keys_tell_the_operator_to_run_keys_init(state_dir: Path) -> None:
    with pytest.raises(KeyStoreError, match="facegate keys init"):
        load_keys(state_dir, "kiosk-1")


def test_truncated_key_file_is_refused(state_dir: Path) -> None:
    init_keys(state_dir, "kiosk-1")
    path = keys_dir(state_dir) / FILE_NAMES["template"]
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(KeyStoreError, match="not 32 raw bytes"):
        load_keys(state_dir, "kiosk-1")


def test_keys_of_another_device_id_are_refused(state_dir: Path) -> None:
    init_keys(state_dir, "kiosk-1")
    with pytest.raises(KeyStoreError, match="belong to device 'kiosk-1'"):
        load_keys(state_dir, "kiosk-2")


def _credentials_from(state_dir: Path, cred: Path) -> None:
    cred.mkdir(mode=0o700)
    for what, name in FILE_NAMES.items():
        raw = (keys_dir(state_dir) / name).read_bytes()
        # one as hex text, the others raw: both forms are accepted
        data = (raw.hex() + "\n").encode() if what == "sealing" else raw
        (cred / CREDENTIAL_NAMES[what]).write_bytes(data)
        os.chmod(cred / CREDENTIAL_NAMES[what], 0o400)


def test_credentials_directory_env_wins_over_key_files(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other-state"
    made = init_keys(other, "kiosk-1")
    cred = tmp_path / "creds"
    _credentials_from(other, cred)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(cred))
    loaded = load_keys(state_dir, "kiosk-1")  # state_dir has no keys at all
    assert public_keys(loaded) == public_keys(made)
    assert loaded.template_key == made.template_key


def test_missing_credential_names_the_credential(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    init_keys(state_dir, "kiosk-1")
    cred = tmp_path / "creds"
    _credentials_from(state_dir, cred)
    (cred / CREDENTIAL_NAMES["template"]).unlink()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(cred))
    with pytest.raises(KeyStoreError, match="facegate-template.key"):
        load_keys(state_dir, "kiosk-1")


def test_repr_of_keys_does_not_leak_key_material(state_dir: Path) -> None:
    keys = init_keys(state_dir, "kiosk-1")
    assert keys.template_key.hex() not in repr(keys)


def test_cli_keys_init_then_public_prints_only_public_keys(state_dir: Path) -> None:
    env = {**os.environ, "FACEGATE_STATE_DIR": str(state_dir)}
    env.pop("CREDENTIALS_DIRECTORY", None)
    cmd = [sys.executable, "-m", "edge", "keys"]
    init = subprocess.run([*cmd, "init"], env=env, capture_output=True, text=True, check=False)
    assert init.returncode == 0, init.stderr
    pub = subprocess.run([*cmd, "public"], env=env, capture_output=True, text=True, check=False)
    assert pub.returncode == 0, pub.stderr
    assert pub.stdout.strip() == init.stdout.strip().splitlines()[-1]
    secret = (keys_dir(state_dir) / FILE_NAMES["template"]).read_bytes().hex()
    assert secret not in init.stdout + pub.stdout
    again = subprocess.run([*cmd, "init"], env=env, capture_output=True, text=True, check=False)
    assert again.returncode == 2 and again.stderr.startswith("key error:")
