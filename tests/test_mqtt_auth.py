"""Broker login: a private mosquitto that wants a client certificate (test CA made here) AND a
username/password (mosquitto_passwd). A kiosk link (the burst tool runs edge's MqttLink from an
MqttConfig) and a backend worker get in only with both; the password comes from a 0600 file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from _backend import PUBLISHER, REPO, backend, start_worker, wait_for, wait_subscribed
from _broker import start_mosquitto
from conftest import require_service

from edge.backend.ledger import Ledger
from edge.errors import ConfigError
from edge.transport.credentials import read_password

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def _passwd_file(path: Path, users: dict[str, str]) -> None:
    if not os.path.exists(MOSQUITTO_PASSWD):
        require_service("mosquitto_passwd", f"no binary at {MOSQUITTO_PASSWD}")
    path.touch(mode=0o600)
    for user, password in users.items():
        subprocess.run([MOSQUITTO_PASSWD, "-b", str(path), user, password], check=True, timeout=30)


def _secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def test_kiosk_and_worker_need_certificate_and_password_and_read_it_from_a_private_file(
    tmp_path: Path,
) -> None:
    users = tmp_path / "mosquitto.passwd"
    _passwd_file(users, {"kiosk-auth": "k-secret-1", "backend": "b-secret-2"})
    broker = start_mosquitto(
        tmp_path, tls=True,
        extra_config=f"require_certificate true\npassword_file {users}\nallow_anonymous false",
    )  # fmt: skip
    try:
        assert broker.ca_file and broker.client_cert and broker.client_key
        tls = ["--ca-file", str(broker.ca_file), "--cert-file", str(broker.client_cert),
               "--key-file", str(broker.client_key)]  # fmt: skip
        good = _secret(tmp_path / "kiosk.pw", "k-secret-1")
        wrong = _secret(tmp_path / "wrong.pw", "not-it")
        state = tmp_path / "kiosk"

        def publish(*extra: str, count: int = 5, timeout_s: float = 20) -> dict[str, object]:
            r = subprocess.run(
                [*PUBLISHER, "publish-burst", "--state-dir", str(state), "--broker", broker.url,
                 "--count", str(count), "--device", "kiosk-auth", "--timeout", str(timeout_s),
                 *extra],
                capture_output=True, text=True, timeout=timeout_s + 30, cwd=REPO,
            )  # fmt: skip
            out = json.loads(r.stdout.strip().splitlines()[-1])
            return {"rc": r.returncode, "stderr": r.stderr, **out}

        # Refused: no certificate; certificate but no login; certificate and a wrong password.
        creds = ["--username", "kiosk-auth"]
        for extra in (["--ca-file", str(broker.ca_file), *creds, "--password-file", str(good)],
                      tls, [*tls, *creds, "--password-file", str(wrong)]):  # fmt: skip
            res = publish(*extra, count=2, timeout_s=2)
            assert res["rc"] == 1 and res["published_acked"] == 0 and res["pending"] == 2, res
        # A password file others can read is refused before anything is sent.
        loose = _secret(tmp_path / "loose.pw", "k-secret-1", mode=0o644)
        res_loose = subprocess.run(
            [*PUBLISHER, "publish-burst", "--state-dir", str(state), "--broker", broker.url,
             "--count", "2", "--device", "kiosk-auth", *tls, *creds, "--password-file",
             str(loose)],
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )  # fmt: skip
        assert res_loose.returncode == 2 and "chmod 600" in res_loose.stderr, res_loose.stderr

        # The backend worker logs in the same way, and books what the kiosk now publishes.
        db = str(tmp_path / "ledger.db")
        pub = subprocess.run(
            [*PUBLISHER, "pubkey", "--state-dir", str(state), "--device", "kiosk-auth"],
            capture_output=True, text=True, check=True, timeout=30, cwd=REPO,
        ).stdout.strip()  # fmt: skip
        backend("devices", "add", "kiosk-auth", pub, "--site", "lab", "--db", db)
        wtls = ["--ca", str(broker.ca_file), "--cert", str(broker.client_cert),
                "--key", str(broker.client_key)]  # fmt: skip
        refused_log = tmp_path / "w-anon.log"
        anon = start_worker(broker.url, db, "w-anon", refused_log, *wtls)
        try:
            wait_for(lambda: "refused connection" in refused_log.read_text(), 20, "refusal")
        finally:
            anon.kill()
            anon.wait()
        log = tmp_path / "w.log"
        bpw = _secret(tmp_path / "backend.pw", "b-secret-2")
        worker = start_worker(broker.url, db, "w-auth", log, *wtls, "--username", "backend",
                              "--password-file", str(bpw))  # fmt: skip
        try:
            wait_subscribed(log, worker)
            res = publish(*tls, *creds, "--password-file", str(good), count=5)
            assert res["rc"] == 0 and res["pending"] == 0, res
            wait_for(lambda: Ledger(db).count() == 5, 20, "5 events booked")
        finally:
            worker.terminate()
            assert worker.wait(20) == 0, log.read_text()[-2000:]
        with Ledger(db) as led:
            assert led.keys_by_device() == {"kiosk-auth": [1, 2, 3, 4, 5]}
            assert led.rejection_counts() == {}
    finally:
        broker.stop()


def test_password_is_found_in_the_systemd_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("from-systemd\n")
    (creds / "mqtt-password").chmod(0o440)  # systemd's own mode for credentials
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_password("mqtt-password") == "from-systemd"
    with pytest.raises(ConfigError, match="cannot read it"):
        read_password("absent")
    _secret(tmp_path / "two.pw", "a\nb")
    with pytest.raises(ConfigError, match="exactly one"):
        read_password(str(tmp_path / "two.pw"))
