"""Downlink commands: only fresh, signed, addressed, never-seen commands are accepted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.backend.commands import sign_command
from edge.transport.downlink import ReplayGuard
from edge.trust import canonical
from edge.trust.commands import CommandError, verify_command

BACKEND = Ed25519PrivateKey.generate()
NOW = 1_800_000_000.0


@pytest.fixture
def guard(tmp_path: Path) -> ReplayGuard:
    return ReplayGuard(tmp_path / "downlink.db")


def refused(payload: bytes, guard: ReplayGuard, device: str = "kiosk-1") -> str:
    with pytest.raises(CommandError) as err:
        verify_command(payload, BACKEND.public_key(), device, guard, now=NOW)
    return err.value.reason


def test_signed_command_is_accepted_once(guard: ReplayGuard) -> None:
    cmd = sign_command(BACKEND, "kiosk-1", "templates.revoke", {"subject": "s-1"}, ts=NOW)
    ok = verify_command(cmd, BACKEND.public_key(), "kiosk-1", guard, now=NOW)
    assert (ok.type, ok.body, ok.seq) == ("templates.revoke", {"subject": "s-1"}, int(NOW * 1e6))
    assert refused(cmd, guard) == "replay"


def test_replay_is_refused_after_a_reboot(tmp_path: Path) -> None:
    cmd = sign_command(BACKEND, "kiosk-1", "wipe", {}, seq=5, ts=NOW)
    g = ReplayGuard(tmp_path / "downlink.db")
    verify_command(cmd, BACKEND.public_key(), "kiosk-1", g, now=NOW)
    g.close()
    g2 = ReplayGuard(tmp_path / "downlink.db")
    assert refused(cmd, g2) == "replay"
    older = sign_command(BACKEND, "kiosk-1", "wipe", {}, seq=4, ts=NOW)
    assert refused(older, g2) == "replay"  # a lower seq with a fresh nonce is still a replay
    verify_command(
        sign_command(BACKEND, "kiosk-1", "wipe", {}, seq=6, ts=NOW),
        BACKEND.public_key(),
        "kiosk-1",
        g2,
        now=NOW,
    )


def test_unsigned_forged_misaddressed_stale_and_unknown_commands_are_refused(
    guard: ReplayGuard,
) -> None:
    good = json.loads(sign_command(BACKEND, "kiosk-1", "config.reload", {}, seq=10, ts=NOW))
    unsigned = canonical.dumps({k: v for k, v in good.items() if k != "sig"})
    forged = sign_command(Ed25519PrivateKey.generate(), "kiosk-1", "wipe", {}, seq=11, ts=NOW)
    tampered = canonical.dumps({**good, "type": "wipe"})
    other = sign_command(BACKEND, "kiosk-2", "wipe", {}, seq=12, ts=NOW)
    stale = sign_command(BACKEND, "kiosk-1", "wipe", {}, seq=13, ts=NOW - 2 * 86_400)
    future = sign_command(BACKEND, "kiosk-1", "wipe", {}, seq=14, ts=NOW + 3600)
    body = {k: v for k, v in good.items() if k != "sig"} | {"type": "reboot", "seq": 15}
    signed = b"facegate/v1/command\0" + canonical.dumps(body)
    unknown = canonical.dumps({**body, "sig": BACKEND.sign(signed).hex()})
    assert refused(unsigned, guard) == "unsigned"
    assert refused(forged, guard) == "signature"
    assert refused(tampered, guard) == "signature"
    assert refused(other, guard) == "wrong_device"
    assert refused(stale, guard) == "stale"
    assert refused(future, guard) == "stale"
    assert refused(unknown, guard) == "unknown_type"
    assert refused(b'{"sig": 1}', guard) == "malformed"
    assert refused(b"\x00" * 300_000, guard) == "too_large"
    with pytest.raises(CommandError) as err:
        verify_command(canonical.dumps(good), None, "kiosk-1", guard, now=NOW)
    assert err.value.reason == "unsigned"  # no backend key configured: refuse everything
    # None of the refusals consumed a seq: the original is still accepted.
    assert (
        verify_command(canonical.dumps(good), BACKEND.public_key(), "kiosk-1", guard, now=NOW).seq
        == 10
    )


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_crash_the_verifier(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes
) -> None:
    guard = _shared_guard(tmp_path_factory)
    with pytest.raises(CommandError):
        verify_command(raw, BACKEND.public_key(), "kiosk-1", guard, now=NOW)


_GUARDS: dict[int, ReplayGuard] = {}


def _shared_guard(factory: pytest.TempPathFactory) -> ReplayGuard:
    if id(factory) not in _GUARDS:
        _GUARDS[id(factory)] = ReplayGuard(factory.mktemp("dl") / "downlink.db")
    return _GUARDS[id(factory)]


def test_standard_handlers_sync_revoke_and_wipe_the_real_template_store(tmp_path: Path) -> None:
    import base64
    import time

    import numpy as np

    from edge.backend.sealing import seal_template
    from edge.templates.store import open_store
    from edge.transport.downlink import standard_handlers
    from edge.trust.keys import init_keys

    keys = init_keys(tmp_path, "kiosk-1")
    now = int(time.time())
    sealed = [
        seal_template(
            BACKEND,
            keys.sealing_key.public_key(),
            "kiosk-1",
            s,
            1,
            np.random.default_rng(i).normal(size=128),
            now,
            now + 3600,
        )
        for i, s in enumerate(["s-1", "s-2"])
    ]
    reloads: list[int] = []
    handlers = standard_handlers(
        lambda: open_store(tmp_path, "kiosk-1"),
        BACKEND.public_key(),
        on_config_reload=lambda: reloads.append(1),
    )
    guard = ReplayGuard(tmp_path / "downlink.db")

    def deliver(type_: str, body: dict[str, object]) -> None:
        cmd = verify_command(
            sign_command(BACKEND, "kiosk-1", type_, body), BACKEND.public_key(), "kiosk-1", guard
        )
        handlers[cmd.type](cmd)
        time.sleep(0.001)  # default seq is the signing time in microseconds

    def states() -> dict[str, str]:
        with open_store(tmp_path, "kiosk-1") as store:
            return {t.subject: t.state for t in store.list_all()}

    deliver("templates.sync", {"templates": [base64.b64encode(b).decode() for b in sealed]})
    assert states() == {"s-1": "active", "s-2": "active"}
    deliver("templates.revoke", {"subjects": ["s-1"]})
    assert states() == {"s-1": "revoked", "s-2": "active"}
    deliver("config.reload", {})
    assert reloads == [1]
    deliver("wipe", {})
    assert "active" not in states().values()
    with pytest.raises(CommandError):
        deliver("templates.revoke", {"subjects": "s-2"})  # not a list: refused, nothing done
