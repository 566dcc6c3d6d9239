"""Device identity: Ed25519 signing key, X25519 sealing key, the AES-256 template key, and the
subject-id key (HMAC-SHA256, shared with the back office: card and phone numbers -> subject ids).

The subject-id key is optional: a key set made before it existed keeps loading (with
`subject_key=None`); `edge.trust.subject_ids` says how to provision it when a number is hashed.

Two places the keys can come from:
- systemd credentials (`LoadCredentialEncrypted=`): when `$CREDENTIALS_DIRECTORY` is set (or a
  `credentials_dir` is passed) the three keys are read from there under the names in
  `CREDENTIAL_NAMES`; nothing is read from the state directory then.
- key files in `<state_dir>/keys/` (mode 0700), one file per key (mode 0600), created by
  `facegate keys init`.

A key file is 32 raw bytes; 64 hex characters (optionally newline-terminated) are accepted too,
so a credential can be made with `systemd-creds encrypt` from a hex dump. Keys readable by group
or others are refused: on a kiosk that is usually a provisioning mistake that leaks the template
key to every local account.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge.config import read_capped
from edge.errors import KeyStoreError

ENV_CREDENTIALS = "CREDENTIALS_DIRECTORY"
KEY_BYTES = 32
KEYS_SUBDIR = "keys"
DEVICE_ID_FILE = "device-id"

# File names in <state_dir>/keys/ and credential names for systemd `LoadCredentialEncrypted=`.
FILE_NAMES = {"signing": "signing.key", "sealing": "sealing.key", "template": "template.key"}
CREDENTIAL_NAMES = {
    "signing": "facegate-signing.key",
    "sealing": "facegate-sealing.key",
    "template": "facegate-template.key",
}
# Optional, so kept out of the two maps above (every name there must be present).
SUBJECT_KEY_FILE = "subject-id.key"
SUBJECT_KEY_CREDENTIAL = "facegate-subject-id.key"


@dataclass(frozen=True)
class DeviceKeys:
    """The device's secret keys; never logged or printed."""

    device_id: str
    signing_key: Ed25519PrivateKey
    sealing_key: X25519PrivateKey
    template_key: bytes  # 32 bytes, AES-256-GCM
    subject_key: bytes | None = None  # 32 bytes, HMAC-SHA256 subject ids; None = not provisioned

    def __repr__(self) -> str:  # keep key material out of tracebacks and logs
        return f"DeviceKeys(device_id={self.device_id!r})"


def keys_dir(state_dir: Path) -> Path:
    """Directory of the key files inside the state directory."""
    return Path(state_dir) / KEYS_SUBDIR


def _write_secret(path: Path, data: bytes) -> None:
    # O_EXCL: never overwrite a key; 0o600 from the start so no window where it is readable.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may have stripped bits, never added any; be explicit
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def init_keys(state_dir: Path, device_id: str) -> DeviceKeys:
    """Create fresh device keys in `<state_dir>/keys/`; refuses to overwrite existing keys."""
    if not device_id:
        raise KeyStoreError("device id is empty; set [device] id in the config")
    kdir = keys_dir(state_dir)
    names = (*FILE_NAMES.values(), DEVICE_ID_FILE)
    existing = [n for n in names if (kdir / n).exists()]
    if len(existing) == len(names) and not (kdir / SUBJECT_KEY_FILE).exists():
        return _add_subject_key(state_dir, device_id)
    if existing:
        raise KeyStoreError(
            f"{kdir / existing[0]} already exists; device keys are never overwritten "
            f"(templates encrypted under them would be lost) - use the existing keys, or wipe "
            f"the templates and remove {kdir} by hand to re-provision"
        )
    try:
        Path(state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        kdir.mkdir(exist_ok=True, mode=0o700)
        os.chmod(kdir, 0o700)
    except OSError as exc:
        raise KeyStoreError(
            f"cannot create {kdir} ({exc.strerror}); check that the state directory is writable"
        ) from None
    signing = Ed25519PrivateKey.generate()
    sealing = X25519PrivateKey.generate()
    template = os.urandom(KEY_BYTES)
    subject = os.urandom(KEY_BYTES)
    try:
        _write_secret(kdir / FILE_NAMES["signing"], signing.private_bytes_raw())
        _write_secret(kdir / FILE_NAMES["sealing"], sealing.private_bytes_raw())
        _write_secret(kdir / FILE_NAMES["template"], template)
        _write_secret(kdir / SUBJECT_KEY_FILE, subject)
        _write_secret(kdir / DEVICE_ID_FILE, device_id.encode("utf-8") + b"\n")
    except OSError as exc:
        raise KeyStoreError(
            f"cannot write keys in {kdir} ({exc.strerror}); check disk space and permissions"
        ) from None
    _fsync_dir(kdir)
    return DeviceKeys(device_id, signing, sealing, template, subject)


def _add_subject_key(state_dir: Path, device_id: str) -> DeviceKeys:
    """A key set from before subject ids: add only the missing subject-id key (no overwrite)."""
    keys = _load_key_files(state_dir, device_id)  # checks modes and the device id first
    kdir = keys_dir(state_dir)
    subject = os.urandom(KEY_BYTES)
    try:
        _write_secret(kdir / SUBJECT_KEY_FILE, subject)
    except OSError as exc:
        raise KeyStoreError(
            f"cannot write {kdir / SUBJECT_KEY_FILE} ({exc.strerror}); check disk space and "
            "permissions"
        ) from None
    _fsync_dir(kdir)
    return dataclasses.replace(keys, subject_key=subject)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_private(path: Path, st: os.stat_result, *, is_dir: bool) -> None:
    if st.st_mode & 0o077:
        mode = "700" if is_dir else "600"
        raise KeyStoreError(
            f"{path} is readable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
            f"run `chmod {mode} {path}`"
        )


def _read_key(path: Path, what: str) -> bytes:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeyStoreError(
            f"{what} key {path} is missing; run `facegate keys init` (or provide the credential)"
        ) from None
    except OSError as exc:
        raise KeyStoreError(f"cannot read {path} ({exc.strerror}); check permissions") from None
    _check_private(path, st, is_dir=False)
    try:
        # A key is 32 bytes or 64 hex characters: never read more than a line of it.
        capped = read_capped(path, 256)
    except OSError as exc:
        raise KeyStoreError(f"cannot read {path} ({exc.strerror}); check permissions") from None
    raw = capped if capped is not None else b""
    if capped is None:
        raise KeyStoreError(
            f"{what} key {path} is not 32 raw bytes or 64 hex characters (over 256 bytes); "
            f"restore it from the provisioning backup or re-provision the device"
        )
    if len(raw) == KEY_BYTES:
        return raw
    text = raw.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise KeyStoreError(
        f"{what} key {path} is not 32 raw bytes or 64 hex characters ({len(raw)} bytes); "
        f"restore it from the provisioning backup or re-provision the device"
    )


def _assemble(
    device_id: str, sign: bytes, seal: bytes, tmpl: bytes, subject: bytes | None
) -> DeviceKeys:
    return DeviceKeys(
        device_id=device_id,
        signing_key=Ed25519PrivateKey.from_private_bytes(sign),
        sealing_key=X25519PrivateKey.from_private_bytes(seal),
        template_key=tmpl,
        subject_key=subject,
    )


def _read_optional_key(path: Path, what: str) -> bytes | None:
    # Absent = not provisioned (older key sets); present but bad = the same errors as the others.
    if not os.path.lexists(path):
        return None
    return _read_key(path, what)


def load_keys(state_dir: Path, device_id: str, credentials_dir: Path | None = None) -> DeviceKeys:
    """Load the device keys from systemd credentials (if any) or from `<state_dir>/keys/`."""
    if credentials_dir is None and os.environ.get(ENV_CREDENTIALS):
        credentials_dir = Path(os.environ[ENV_CREDENTIALS])
    if credentials_dir is not None:
        cdir = Path(credentials_dir)
        sign, seal, tmpl = (_read_key(cdir / CREDENTIAL_NAMES[k], k) for k in FILE_NAMES)
        subject = _read_optional_key(cdir / SUBJECT_KEY_CREDENTIAL, "subject-id")
        return _assemble(device_id, sign, seal, tmpl, subject)
    return _load_key_files(state_dir, device_id)


def _load_key_files(state_dir: Path, device_id: str) -> DeviceKeys:
    kdir = keys_dir(state_dir)
    try:
        st = os.stat(kdir)
    except FileNotFoundError:
        raise KeyStoreError(
            f"no device keys in {kdir}; run `facegate keys init` (or set $CREDENTIALS_DIRECTORY)"
        ) from None
    except NotADirectoryError:
        raise KeyStoreError(
            f"state dir {state_dir} is not a directory; point [paths] state_dir "
            "(or $FACEGATE_STATE_DIR) at a directory"
        ) from None
    _check_private(kdir, st, is_dir=True)
    sign, seal, tmpl = (_read_key(kdir / FILE_NAMES[k], k) for k in FILE_NAMES)
    subject = _read_optional_key(kdir / SUBJECT_KEY_FILE, "subject-id")
    id_file = kdir / DEVICE_ID_FILE
    if id_file.exists():
        # Keys made for another device id would make every template fail its AAD check;
        # say so at start-up instead of as a string of confusing template errors later.
        owner = id_file.read_text("utf-8", errors="replace").strip()
        if owner != device_id:
            raise KeyStoreError(
                f"keys in {kdir} belong to device {owner!r}, config says {device_id!r}; "
                f"set [device] id = {owner!r} or re-provision this device"
            )
    return _assemble(device_id, sign, seal, tmpl, subject)


def public_keys(keys: DeviceKeys) -> dict[str, str]:
    """Public half of the identity, for registering the device with the backend (hex)."""
    raw = (Encoding.Raw, PublicFormat.Raw)
    return {
        "device": keys.device_id,
        "signing_public": keys.signing_key.public_key().public_bytes(*raw).hex(),
        "sealing_public": keys.sealing_key.public_key().public_bytes(*raw).hex(),
    }


def parse_ed25519_public(text: str, what: str, fix: str) -> Ed25519PublicKey:
    """An Ed25519 public key from 64 hex characters; KeyStoreError naming `what` and `fix`.

    The one parser for every public key the project reads: the backend key in config, a device
    key in the backend's registry.
    """
    raw_text = text.strip() if isinstance(text, str) else ""
    try:
        raw = bytes.fromhex(raw_text)
    except ValueError:
        raw = b""
    if len(raw) != 32 or len(raw_text) != 64:
        raise KeyStoreError(
            f"{what} must be 64 hex characters (an Ed25519 public key), got "
            f"{len(raw_text)} characters; {fix}"
        )
    return Ed25519PublicKey.from_public_bytes(raw)


def parse_backend_public_key(hex_key: str) -> Ed25519PublicKey:
    """The backend's public key from config (`[backend] public_key`)."""
    return parse_ed25519_public(
        hex_key,
        "backend.public_key",
        "set it to the backend's public key (backend-signing.pub)",
    )
