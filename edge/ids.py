"""The one rule for subject, device and site ids (pseudonymous, ASCII, safe in topics and SQL)."""

from __future__ import annotations

import re

ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
ID_RULE = "1-64 ASCII letters, digits, '_', '.', '-', starting with a letter or digit"
_ID = re.compile(ID_PATTERN)


def is_valid_id(value: object) -> bool:
    """True if `value` is a str that follows the id rule."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def id_problem(kind: str, value: object) -> str | None:
    """None if `value` is a valid id, else a one-line problem naming `kind` and the rule."""
    if is_valid_id(value):
        return None
    shown = value[:80] if isinstance(value, str) else value
    return f"{kind} {shown!r} is not a valid id: use {ID_RULE}"
