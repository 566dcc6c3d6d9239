"""Error types that the command line turns into one-line messages and exit codes."""

from __future__ import annotations


class FacegateError(Exception):
    """An input or environment problem the operator can fix; printed as one line, exit 2."""

    exit_code = 2
    prefix = "error"

    def __str__(self) -> str:
        return f"{self.prefix}: {self.args[0] if self.args else ''}"


class RefusedError(FacegateError):
    """Refused input with a fixed `reason` word, which callers count and audit (never the
    input itself); the message says what was wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ConfigError(FacegateError):
    """Invalid configuration; the message names the key path, the bad value and what is allowed."""

    prefix = "config error"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems

    def lines(self) -> list[str]:
        return [f"{self.prefix}: {p}" for p in self.problems]


class SourceError(FacegateError):
    """A camera or file source that cannot be opened or read."""

    prefix = "source error"


class ModelError(FacegateError):
    """A model file that is missing, tampered with or unloadable."""

    prefix = "model error"


class KeyStoreError(FacegateError):
    """Device keys missing, unreadable, world-readable or wrong."""

    prefix = "key error"


class TemplateError(FacegateError):
    """A template that cannot be used (tampered, wrong key, expired, revoked, other device)."""

    prefix = "template error"


class DataError(FacegateError):
    """Evaluation or benchmark data that is missing or malformed."""

    prefix = "data error"
