"""Acceptance: wrong, missing or exposed device keys and a damaged template store give ONE line
naming the problem and the fix, exit 2, no traceback — and the failing command leaves the state
directory (templates.db above all) byte-for-byte as it was. Real command line, real files.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _cli import DEVICE, assert_input_error, cli_env, facegate, tree_digest, write_config

from edge.config import Config
from edge.session.lockout import LockoutStore
from edge.templates.store import TemplateStore, db_path
from edge.transport.outbox import OUTBOX_FILE, Outbox
from edge.trust.keys import init_keys

SUBJECT = "s-1001"


@pytest.fixture(scope="module")
def pristine_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A provisioned kiosk: keys, one enrolled (synthetic) template, lockout counters."""
    state = tmp_path_factory.mktemp("pristine-store") / "state"
    keys = init_keys(state, DEVICE)
    vec = np.random.default_rng(11).standard_normal(128).astype(np.float32)
    with TemplateStore(db_path(state), keys) as store:
        store.enrol(SUBJECT, vec, validity_s=86400)
    LockoutStore.open(state, Config().session).close()
    Outbox(state / OUTBOX_FILE).close()
    assert not Path(f"{db_path(state)}-wal").exists(), "the fixture must leave a checkpointed db"
    return state


@pytest.fixture
def kiosk(tmp_path: Path, pristine_state: Path) -> tuple[Path, dict[str, str], Path]:
    state = tmp_path / "state"
    shutil.copytree(pristine_state, state)
    # Faceless frames: a command must fail on the keys/store before any frame matters.
    import cv2

    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "0001.png"), np.full((240, 320, 3), 128, np.uint8))
    env = cli_env(write_config(tmp_path / "kiosk.toml", state), tmp_path / "tmp")
    return state, env, frames


def _commands(frames: Path) -> dict[str, list[str]]:
    src = f"file:{frames}"
    return {
        "verify": ["verify", SUBJECT, "--source", src],
        "enroll": ["enroll", "s-2002", "--source", src],
        "run": ["run", "--claim", f"{SUBJECT} 5.00", "--source", src, "--max-frames", "1"],
        "templates-list": ["templates", "list"],
        "templates-revoke": ["templates", "revoke", SUBJECT],
        "keys-public": ["keys", "public"],
    }


def _fails_cleanly(
    state: Path, env: dict[str, str], argv: list[str], prefix: str, *fragments: str
) -> str:
    db_before = db_path(state).read_bytes()
    before = tree_digest(state)
    proc = facegate(env, *argv)
    line = assert_input_error(proc, prefix, *fragments)
    assert db_path(state).read_bytes() == db_before, "templates.db changed"
    assert tree_digest(state) == before, "the failing command changed the state directory"
    return line


ALL = ["verify", "enroll", "run", "templates-list", "templates-revoke", "keys-public"]


@pytest.mark.parametrize("command", ALL)
def test_keys_of_another_device_are_refused_naming_both_ids_and_the_fix(
    kiosk: tuple[Path, dict[str, str], Path], tmp_path: Path, command: str
) -> None:
    state, env, frames = kiosk
    init_keys(tmp_path / "other-kiosk", "kiosk-other-0002")
    shutil.rmtree(state / "keys")
    shutil.copytree(tmp_path / "other-kiosk" / "keys", state / "keys")
    _fails_cleanly(
        state, env, _commands(frames)[command], "key error",
        "belong to device 'kiosk-other-0002'", repr(DEVICE), "set [device] id",
    )  # fmt: skip


@pytest.mark.parametrize(
    "command",
    [
        "verify",
        "enroll",
    ],
)
def test_template_key_from_the_wrong_backup_is_refused_with_the_fix(
    kiosk: tuple[Path, dict[str, str], Path], tmp_path: Path, command: str
) -> None:
    """Same device id, but a template key the store was not written under."""
    state, env, frames = kiosk
    init_keys(tmp_path / "other-kiosk", DEVICE)
    key = state / "keys" / "template.key"
    key.write_bytes((tmp_path / "other-kiosk" / "keys" / "template.key").read_bytes())
    _fails_cleanly(
        state, env, _commands(frames)[command], "template error",
        "template key does not match", "restore the original template key",
    )  # fmt: skip


def test_kiosk_loop_refuses_to_start_with_a_template_key_from_the_wrong_backup(
    kiosk: tuple[Path, dict[str, str], Path], tmp_path: Path
) -> None:
    state, env, frames = kiosk
    init_keys(tmp_path / "other-kiosk", DEVICE)
    key = state / "keys" / "template.key"
    key.write_bytes((tmp_path / "other-kiosk" / "keys" / "template.key").read_bytes())
    proc = facegate(env, *_commands(frames)["run"])
    assert_input_error(proc, "template error", "template key does not match")


@pytest.mark.parametrize("command", ["verify", "run", "templates-revoke", "keys-public"])
def test_world_readable_key_file_is_refused_with_the_chmod_that_fixes_it(
    kiosk: tuple[Path, dict[str, str], Path], command: str
) -> None:
    state, env, frames = kiosk
    key = state / "keys" / "template.key"
    os.chmod(key, 0o644)
    _fails_cleanly(
        state, env, _commands(frames)[command], "key error",
        str(key), "readable by group or others", f"chmod 600 {key}",
    )  # fmt: skip


@pytest.mark.parametrize("command", ["verify", "run", "templates-list"])
def test_world_readable_key_directory_is_refused_with_the_chmod_that_fixes_it(
    kiosk: tuple[Path, dict[str, str], Path], command: str
) -> None:
    state, env, frames = kiosk
    os.chmod(state / "keys", 0o755)
    _fails_cleanly(
        state, env, _commands(frames)[command], "key error", f"chmod 700 {state / 'keys'}"
    )


@pytest.mark.parametrize("command", ["verify", "enroll", "run", "templates-list"])
def test_missing_keys_tell_the_operator_to_run_keys_init(
    kiosk: tuple[Path, dict[str, str], Path], command: str
) -> None:
    state, env, frames = kiosk
    shutil.rmtree(state / "keys")
    _fails_cleanly(
        state, env, _commands(frames)[command], "key error",
        str(state / "keys"), "facegate keys init",
    )  # fmt: skip


def test_one_missing_key_file_is_named(kiosk: tuple[Path, dict[str, str], Path]) -> None:
    state, env, frames = kiosk
    (state / "keys" / "signing.key").unlink()
    _fails_cleanly(
        state, env, _commands(frames)["verify"], "key error",
        str(state / "keys" / "signing.key"), "missing", "facegate keys init",
    )  # fmt: skip


def test_keys_init_never_overwrites_existing_keys(
    kiosk: tuple[Path, dict[str, str], Path],
) -> None:
    state, env, _ = kiosk
    _fails_cleanly(
        state, env, ["keys", "init"], "key error", "already exists", "never overwritten"
    )


@pytest.mark.parametrize("command", ["templates-list", "verify", "run", "enroll"])
def test_truncated_template_store_is_named_with_the_fix_and_left_as_it_is(
    kiosk: tuple[Path, dict[str, str], Path], command: str
) -> None:
    state, env, frames = kiosk
    db = db_path(state)
    os.truncate(db, db.stat().st_size // 2)
    _fails_cleanly(
        state, env, _commands(frames)[command], "template error",
        str(db), "damaged or truncated", "facegate templates wipe --yes",
    )  # fmt: skip


def _truncate_to_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize(
    "argv",
    [["outbox", "status"], ["outbox", "drain", "--timeout", "1"], None],
    ids=["outbox-status", "outbox-drain", "run"],
)
@pytest.mark.parametrize("damage", ["truncated", "not-sqlite"])
def test_damaged_outbox_is_named_with_the_fix_and_left_as_it_is(
    kiosk: tuple[Path, dict[str, str], Path], argv: list[str] | None, damage: str
) -> None:
    """The outbox may hold unsent signed events: say so, and never rewrite or delete it."""
    state, env, frames = kiosk
    outbox = state / OUTBOX_FILE
    if damage == "truncated":
        _truncate_to_half(outbox)
    else:
        outbox.write_bytes(b"not an sqlite file\n" * 200)
    _fails_cleanly(
        state, env, argv or _commands(frames)["run"], "error",
        str(outbox), "damaged", "move it aside", "unsent events",
    )  # fmt: skip


@pytest.mark.parametrize("command", ["verify", "run"])
def test_damaged_lockout_counters_are_named_with_the_fix_and_left_as_they_are(
    kiosk: tuple[Path, dict[str, str], Path], command: str
) -> None:
    state, env, frames = kiosk
    lockout = state / "lockout.sqlite"
    _truncate_to_half(lockout)
    _fails_cleanly(
        state, env, _commands(frames)[command], "error", str(lockout), "unusable", "move it aside"
    )



@pytest.mark.parametrize(
    ("argv", "prefix"),
    [
        (["keys", "init"], "key error"),
        (["outbox", "status"], "error"),
        (["templates", "list"], "key error"),
        (["verify", SUBJECT, "--source", "cam:9"], "key error"),
        (["run", "--source", "cam:9"], "error"),
    ],
    ids=["keys-init", "outbox-status", "templates-list", "verify", "run"],
)
def test_state_dir_that_is_a_file_is_one_line_naming_it(
    tmp_path: Path, argv: list[str], prefix: str
) -> None:
    not_a_dir = tmp_path / "state"
    not_a_dir.write_bytes(b"an operator's mistake\n")
    env = cli_env(write_config(tmp_path / "kiosk.toml", not_a_dir), tmp_path / "tmp")
    proc = facegate(env, *argv)
    assert_input_error(proc, prefix, str(not_a_dir))
    assert not_a_dir.read_bytes() == b"an operator's mistake\n"


# -- sealed template files from the backend ---------------------------------------------------


def _sealed_variants(state: Path, tmp_path: Path) -> tuple[str, dict[str, bytes]]:
    """The backend's public key (hex) and sealed-template files, one good and several bad."""
    import time

    from edge.backend.keys import backend_public_hex, generate_backend_keys
    from edge.backend.sealing import seal_template
    from edge.trust.keys import load_keys

    backend = generate_backend_keys(tmp_path / "backend")
    stranger = generate_backend_keys(tmp_path / "stranger")
    keys = load_keys(state, DEVICE)
    other = init_keys(tmp_path / "other-kiosk", "kiosk-other-0002")
    vec = np.random.default_rng(5).standard_normal(128).astype(np.float32)
    now = int(time.time())

    def seal(signer: Any, pub: Any, device: str) -> bytes:
        return seal_template(signer, pub, device, "s-3003", 1, vec, now, now + 86400)

    good = seal(backend, keys.sealing_key.public_key(), DEVICE)
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x01
    return backend_public_hex(backend), {
        "good": good,
        "random-bytes": np.random.default_rng(2).integers(0, 256, 300, np.uint8).tobytes(),
        "truncated": good[:-1],
        "one-flipped-byte": bytes(flipped),
        "signed-by-another-backend": seal(stranger, keys.sealing_key.public_key(), DEVICE),
        "sealed-for-another-device": seal(backend, other.sealing_key.public_key(),
                                          "kiosk-other-0002"),
        "empty": b"",
    }


SEALED_FAULTS = {
    "random-bytes": ("not a sealed template", "check the file"),
    "empty": ("not a sealed template", "check the file"),
    "truncated": ("truncated", "fresh copy"),
    "one-flipped-byte": ("does not verify", "request a fresh copy"),
    "signed-by-another-backend": ("does not verify", "check [backend] public_key"),
    "sealed-for-another-device": (
        "sealed for device 'kiosk-other-0002'", "request a template sealed for this device"
    ),
    "missing-file": ("cannot read", "check the path"),
}


@pytest.mark.parametrize("variant", list(SEALED_FAULTS))
def test_bad_sealed_template_file_is_refused_in_one_line_and_the_store_is_untouched(
    kiosk: tuple[Path, dict[str, str], Path], tmp_path: Path, variant: str
) -> None:
    state, _, _ = kiosk
    backend_hex, files = _sealed_variants(state, tmp_path)
    path = tmp_path / f"{variant}.sealed"
    if variant != "missing-file":
        path.write_bytes(files[variant])
    conf = tmp_path / "sync.toml"
    conf.write_text(
        (tmp_path / "kiosk.toml").read_text().replace(
            "[mqtt]\n", f'[backend]\npublic_key = "{backend_hex}"\n[mqtt]\n'
        )
    )
    env = cli_env(conf, tmp_path / "tmp")
    _fails_cleanly(
        state, env, ["templates", "import", str(path)], "template error", *SEALED_FAULTS[variant]
    )


def test_the_good_sealed_file_of_those_variants_imports(
    kiosk: tuple[Path, dict[str, str], Path], tmp_path: Path
) -> None:
    """Control: the faults above are the only difference from a file that is accepted."""
    state, _, _ = kiosk
    backend_hex, files = _sealed_variants(state, tmp_path)
    good = tmp_path / "good.sealed"
    good.write_bytes(files["good"])
    conf = tmp_path / "sync.toml"
    conf.write_text(
        (tmp_path / "kiosk.toml").read_text().replace(
            "[mqtt]\n", f'[backend]\npublic_key = "{backend_hex}"\n[mqtt]\n'
        )
    )
    proc = facegate(cli_env(conf, tmp_path / "tmp"), "templates", "import", str(good))
    assert proc.returncode == 0 and "imported s-3003 version 1" in proc.stdout, proc.stderr
