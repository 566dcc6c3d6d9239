"""Shared test fixtures: where the research data lives, and how a missing file is treated."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def data_root() -> Path | None:
    raw = os.environ.get("FACEGATE_DATA")
    if raw:
        return Path(raw)
    guess = REPO.parent / "shared" / "data"
    return guess if guess.is_dir() else None


def require_data(relpath: str) -> Path:
    """A path under $FACEGATE_DATA; skip (fail under FACEGATE_REQUIRE_DATA=1) when absent."""
    root = data_root()
    strict = os.environ.get("FACEGATE_REQUIRE_DATA") == "1"
    if root is None:
        msg = "FACEGATE_DATA is not set and ../shared/data is absent: research data not available"
        if strict:
            pytest.fail(msg)
        pytest.skip(msg)
    path = root / relpath
    if not path.exists():
        msg = f"research data file missing: {path}"
        if strict:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private state directory for one test, exported as FACEGATE_STATE_DIR."""
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("FACEGATE_STATE_DIR", str(d))
    return d
