"""The backend's Ed25519 signing key: it signs downlink commands and sealed templates."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.errors import KeyStoreError
from edge.trust.sealed import raw_public

BACKEND_KEY_FILE = "backend-signing.key"
BACKEND_PUB_FILE = "backend-signing.pub"
ENV_BACKEND_KEYS = "FACEGATE_BACKEND_KEYS"  # default key directory of `facegate-backend`


def backend_key_dir(arg: str | None) -> Path:
    """The backend key directory: `--key-dir` wins over $FACEGATE_BACKEND_KEYS; else an error."""
    raw = arg or os.environ.get(ENV_BACKEND_KEYS, "")
    if not raw:
        raise KeyStoreError(
            f"no backend key directory; pass --key-dir DIR or set ${ENV_BACKEND_KEYS}"
        )
    return Path(raw).expanduser()


def load_backend_key_dir(directory: Path) -> Ed25519PrivateKey:
    """The signing key in `directory`; a missing one names `facegate-backend keys init`."""
    key_path = Path(directory) / BACKEND_KEY_FILE
    if not key_path.exists():
        raise KeyStoreError(
            f"no backend key {key_path}; run `facegate-backend keys init --key-dir {directory}` "
            f"or point --key-dir / ${ENV_BACKEND_KEYS} at the directory that holds it"
        )
    return load_backend_signing_key(key_path)


def generate_backend_keys(directory: Path) -> Ed25519PrivateKey:
    """Create `backend-signing.key` (0600, raw) and `backend-signing.pub` (hex) in `directory`."""
    directory = Path(directory)
    key_path = directory / BACKEND_KEY_FILE
    key = Ed25519PrivateKey.generate()
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise KeyStoreError(
            f"cannot create key directory {directory} ({exc.strerror}); give a writable --key-dir"
        ) from None
    try:
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyStoreError(
            f"{key_path} already exists; backend keys are never overwritten "
            "(`facegate-backend keys public` prints its public key)"
        ) from None
    except OSError as exc:
        raise KeyStoreError(
            f"cannot create {key_path} ({exc.strerror}); give a writable --key-dir"
        ) from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key.private_bytes_raw())
        os.fsync(fd)
    finally:
        os.close(fd)
    (directory / BACKEND_PUB_FILE).write_text(raw_public(key.public_key()).hex() + "\n")
    return key


def load_backend_signing_key(path: Path) -> Ed25519PrivateKey:
    """Read the backend's Ed25519 private key (32 raw bytes or 64 hex chars, mode 0600)."""
    path = Path(path)
    try:
        st = path.stat()
        raw = path.read_bytes()
    except OSError as exc:
        raise KeyStoreError(f"cannot read backend key {path} ({exc.strerror})") from None
    if st.st_mode & 0o077:
        raise KeyStoreError(f"{path} is readable by group or others; run `chmod 600 {path}`")
    if len(raw) != 32:
        try:
            raw = bytes.fromhex(raw.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raw = b""
    if len(raw) != 32:
        raise KeyStoreError(f"backend key {path} is not 32 raw bytes or 64 hex characters")
    return Ed25519PrivateKey.from_private_bytes(raw)


def backend_public_hex(key: Ed25519PrivateKey) -> str:
    """Hex of the backend's public key, the value of config `[backend] public_key`."""
    return raw_public(key.public_key()).hex()
