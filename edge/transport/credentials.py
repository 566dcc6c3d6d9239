"""Broker passwords: read from a private file or a systemd credential, never from a config value.

A config names a *file* (`[mqtt] password_file`, `facegate-backend run --password-file`); a
relative name is looked up in `$CREDENTIALS_DIRECTORY` first (systemd `LoadCredential=` /
`LoadCredentialEncrypted=`), so the password never sits in a world-readable config or on a
command line (`ps` shows those). A file that group or others can read is refused.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from edge.errors import ConfigError

MAX_PASSWORD_BYTES = 1024


def password_path(name: str) -> Path:
    """Where `name` is: `$CREDENTIALS_DIRECTORY/name` when that exists, else `name` itself."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY", "")
    if creds and not os.path.isabs(name):
        candidate = Path(creds) / name
        if candidate.exists():
            return candidate
    return Path(name)


def read_password(name: str, what: str = "mqtt.password_file") -> str:
    """The password in file `name` (one line; trailing newline dropped); ConfigError if unsafe."""
    path = password_path(name)
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(
            [f"{what} = {name!r}: cannot read it ({exc.strerror}); give a file holding only the"
             " password, mode 0600, or a systemd credential of that name"]
        ) from exc  # fmt: skip
    in_credentials = "CREDENTIALS_DIRECTORY" in os.environ and path.parent == Path(
        os.environ["CREDENTIALS_DIRECTORY"]
    )
    if stat.S_IMODE(st.st_mode) & 0o077 and not in_credentials:
        raise ConfigError(
            [f"{what} = {name!r}: readable by group or others (mode "
             f"{stat.S_IMODE(st.st_mode):04o}); chmod 600 {path}"]
        )  # fmt: skip
    if st.st_size > MAX_PASSWORD_BYTES:
        raise ConfigError([f"{what} = {name!r}: over {MAX_PASSWORD_BYTES} bytes; not a password"])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{what} = {name!r}: cannot read it as UTF-8 text ({exc})"]) from exc
    password = text.rstrip("\r\n")
    if not password or "\n" in password:
        raise ConfigError([f"{what} = {name!r}: must hold exactly one non-empty line"])
    return password
