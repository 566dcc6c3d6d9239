"""`facegate templates list | import | revoke | wipe` as an operator runs them."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edge.backend.keys import backend_public_hex, generate_backend_keys
from edge.backend.sealing import seal_template
from edge.trust.keys import load_keys


def facegate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_operator_imports_lists_revokes_and_wipes_templates(
    state_dir: Path, tmp_path: Path
) -> None:
    backend = generate_backend_keys(tmp_path / "backend")
    cfg = tmp_path / "kiosk.toml"
    cfg.write_text(
        f'[device]\nid = "kiosk-7"\n[backend]\npublic_key = "{backend_public_hex(backend)}"\n'
    )
    env = {**os.environ, "FACEGATE_STATE_DIR": str(state_dir), "FACEGATE_CONFIG": str(cfg)}
    env.pop("CREDENTIALS_DIRECTORY", None)
    assert facegate(env, "keys", "init").returncode == 0
    keys = load_keys(state_dir, "kiosk-7")
    now = int(time.time())
    vec = np.random.default_rng(3).standard_normal(128).astype(np.float32)

    def sealed_file(subject: str, version: int, as_base64: bool = False) -> str:
        blob = seal_template(
            backend,
            keys.sealing_key.public_key(),
            "kiosk-7",
            subject,
            version,
            vec,
            now,
            now + 86400,
        )
        path = tmp_path / f"{subject}-{version}.sealed"
        path.write_bytes(base64.b64encode(blob) if as_base64 else blob)
        return str(path)

    v1, v2 = sealed_file("u-1", 1), sealed_file("u-1", 2, as_base64=True)
    r = facegate(env, "templates", "import", v1)
    assert r.returncode == 0 and "imported u-1 version 1" in r.stdout, r.stderr
    r = facegate(env, "templates", "import", v1)
    assert r.returncode == 0 and "already present" in r.stdout
    assert facegate(env, "templates", "import", v2).returncode == 0

    listed = [
        json.loads(line) for line in facegate(env, "templates", "list").stdout.split("\n") if line
    ]
    assert [(t["subject"], t["version"], t["state"]) for t in listed] == [("u-1", 2, "active")]

    r = facegate(env, "templates", "revoke", "u-1")
    assert r.returncode == 0 and "revoked u-1 (version 2)" in r.stdout
    r = facegate(env, "templates", "import", v1)
    assert r.returncode == 2
    assert r.stderr.startswith("template error: subject 'u-1': version 1 is a replay")
    assert len(r.stderr.strip().splitlines()) == 1

    r = facegate(env, "templates", "wipe")
    assert r.returncode == 2 and "--yes" in r.stderr
    assert facegate(env, "templates", "wipe", "--yes").returncode == 0


def test_import_without_backend_key_configured_says_which_key_to_set(
    state_dir: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "FACEGATE_STATE_DIR": str(state_dir)}
    env.pop("FACEGATE_CONFIG", None)
    env.pop("CREDENTIALS_DIRECTORY", None)
    assert facegate(env, "keys", "init").returncode == 0
    f = tmp_path / "x.sealed"
    f.write_bytes(b"FGST\x01")
    r = facegate(env, "templates", "import", str(f))
    assert r.returncode == 2 and "backend.public_key" in r.stderr


def test_wipe_destroys_a_store_too_damaged_to_open(state_dir: Path) -> None:
    env = {**os.environ, "FACEGATE_STATE_DIR": str(state_dir)}
    env.pop("FACEGATE_CONFIG", None)
    env.pop("CREDENTIALS_DIRECTORY", None)
    assert facegate(env, "keys", "init").returncode == 0
    db = state_dir / "templates.db"
    db.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    r = facegate(env, "templates", "list")
    assert r.returncode == 2 and "templates wipe --yes" in r.stderr
    r = facegate(env, "templates", "wipe", "--yes")
    assert r.returncode == 0 and not db.exists()
    assert facegate(env, "templates", "list").returncode == 0


def test_list_destroys_expired_templates_and_shows_them_as_expired(state_dir: Path) -> None:
    from edge.templates.store import TemplateStore, db_path

    env = {**os.environ, "FACEGATE_STATE_DIR": str(state_dir)}
    env.pop("FACEGATE_CONFIG", None)
    env.pop("CREDENTIALS_DIRECTORY", None)
    assert facegate(env, "keys", "init").returncode == 0
    keys = load_keys(state_dir, "kiosk-dev-0001")
    vec = np.ones(128, np.float32)
    long_ago = time.time() - 400 * 86400
    with TemplateStore(db_path(state_dir), keys, clock=lambda: long_ago) as store:
        store.enrol("old", vec, validity_s=86400)
    with TemplateStore(db_path(state_dir), keys) as store:
        store.enrol("new", -vec, validity_s=86400)
    r = facegate(env, "templates", "list")
    assert r.returncode == 0 and "expired old" in r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(t["subject"], t["state"]) for t in rows] == [("new", "active"), ("old", "expired")]
