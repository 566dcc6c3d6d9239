"""TOML configuration -> frozen, validated dataclasses.

Every section is a frozen dataclass; each field carries its allowed range or choices in
`metadata`. `load_config` reports every problem at once, one line each, naming the key path,
the bad value and what is allowed. Unknown keys are errors so typos never pass silently.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import stat
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import ConfigError
from edge.ids import ID_RULE, is_valid_id

ENV_CONFIG = "FACEGATE_CONFIG"
ENV_STATE_DIR = "FACEGATE_STATE_DIR"
PROFILES = ("demo", "fare_gate", "smart_lock", "bakery")
_CURRENCY = re.compile(r"[A-Z]{3}")  # what the event schema accepts (edge/trust/event_schema.py)


def _f(
    default: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[Any, ...] | None = None,
    why: str | None = None,
) -> Any:
    """A dataclass field with validation metadata (inclusive numeric bounds or allowed values;
    `why` says where the bounds come from and is shown with a value outside them)."""
    meta = {"lo": lo, "hi": hi, "choices": choices, "why": why}
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults")
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DeviceConfig:
    id: str = _f("kiosk-dev-0001")
    site: str = _f("lab")


@dataclass(frozen=True)
class PathsConfig:
    state_dir: str = _f("~/.local/state/facegate")
    models_dir: str = _f("")  # empty: the models/ folder shipped next to the package


@dataclass(frozen=True)
class CameraConfig:
    source: str = _f("")  # empty: the demo picks a default
    width: int = _f(640, lo=64, hi=4096)
    height: int = _f(480, lo=64, hi=4096)
    fps: float = _f(30.0, lo=1.0, hi=120.0)
    realtime: bool = _f(True)
    read_timeout_s: float = _f(2.0, lo=0.1, hi=60.0)
    reopen_attempts: int = _f(5, lo=0, hi=1000)
    reopen_backoff_s: float = _f(0.5, lo=0.0, hi=60.0)
    # A camera still gone this long after the stall ends the process (non-zero exit) so that
    # systemd's Restart=on-failure starts it afresh; the reopen attempts stop at whichever
    # of reopen_attempts / reopen_give_up_s comes first.
    reopen_give_up_s: float = _f(30.0, lo=0.0, hi=3600.0)


@dataclass(frozen=True)
class VisionConfig:
    threads: int = _f(1, lo=1, hi=16)
    detect_score: float = _f(0.6, lo=0.05, hi=0.99)
    nms_iou: float = _f(0.3, lo=0.05, hi=0.95)
    min_face_px: int = _f(40, lo=8, hi=2000)
    # Embed the chip and its mirror and average: +3 pt TAR@FAR1e-3 on LFW for 2x embed time.
    # The shipped thresholds were calibrated with it on; recalibrate if you turn it off.
    flip_tta: bool = _f(True)
    # At verification the mirrored chip is embedded only when the first (one-chip) score lies
    # within this of the threshold in use: further away the mirror cannot change the decision
    # (models/README.md, read from LFW pairsDevTrain). 2.0 = always; enrolment always mirrors.
    flip_tta_margin: float = _f(0.016, lo=0.0, hi=2.0)
    # Track faces from the last frame's mesh and run the detector on every Nth frame only (and
    # whenever the mesh loses the face); 1 = detect on every frame. N = 2 keeps every blink of
    # the developer data as it is with detection on every frame; N >= 3 adds false blinks on
    # synthetic clips (edge/vision/track.py). N <= 7 sees a newcomer within 250 ms at 30 fps.
    detect_every: int = _f(2, lo=1, hi=7)


@dataclass(frozen=True)
class QualityConfig:
    min_interocular_px: float = _f(28.0, lo=4.0, hi=1000.0)
    max_yaw_deg: float = _f(30.0, lo=5.0, hi=90.0)
    max_pitch_deg: float = _f(25.0, lo=5.0, hi=90.0)
    min_sharpness: float = _f(15.0, lo=0.0, hi=10000.0)
    min_brightness: float = _f(40.0, lo=0.0, hi=255.0)
    max_brightness: float = _f(220.0, lo=0.0, hi=255.0)


_COSINE_WHY = (
    "cosine similarity calibrated in models/README.md: at 0.90 already 2.7 % of strangers "
    "match (11 % at 0.88), at 0.97 only 18 % of genuine users do"
)
_PAYMENT_WHY = (
    "payments need a false-accept rate near 1e-4: below 0.93 it exceeds 1e-3, at 0.97 only "
    "18 % of genuine users match; models/README.md"
)
_PAD_WHY = (
    "passive PAD score calibrated by eval liveness: replays and recaptures score up to 0.09, "
    "live sessions from 0.54"
)
_CONTINUITY_WHY = (
    "same person across a session scores >= 0.964, different people up to 0.933 (eval liveness)"
)


@dataclass(frozen=True)
class VerifyConfig:
    # Cosine-similarity thresholds calibrated on LFW pairsDevTrain.txt only (see models/README.md):
    # threshold = best accuracy there; payment = FAR 1e-4 over its 3.49 M cross-identity pairs.
    # The bounds are where the calibration still means something: impostor pairs of this
    # embedder score high (median 0.84); over DevTrain's 3.49 M cross-identity pairs FAR is
    # 2.7 % at 0.90 and 11 % at 0.88, and at 0.97 TAR is 18 % (`eval lfw --calibrate`).
    threshold: float = _f(0.904, lo=0.90, hi=0.97, why=_COSINE_WHY)
    payment_threshold: float = _f(0.944, lo=0.93, hi=0.97, why=_PAYMENT_WHY)
    frames: int = _f(3, lo=1, hi=30)


@dataclass(frozen=True)
class LivenessConfig:
    ear_threshold: float = _f(0.2, lo=0.05, hi=0.5)
    closed_fraction: float = _f(0.8, lo=0.3, hi=0.95)  # measured: eval liveness
    min_blink_ms: float = _f(40.0, lo=0.0, hi=1000.0)
    max_blink_ms: float = _f(700.0, lo=50.0, hi=3000.0)
    blinks_required: int = _f(1, lo=1, hi=5)
    prompt_delay_min_s: float = _f(0.3, lo=0.0, hi=10.0)
    prompt_delay_max_s: float = _f(1.2, lo=0.0, hi=10.0)
    # A blink must start within this long after "blink now". 1.5 s fits human reaction to a
    # visual prompt; a replayed video of someone blinking every few seconds lines up far less
    # often than with 3 s (eval liveness blink-replay diagnostic: 58 % vs 80 %, BPCER 0 both).
    response_window_s: float = _f(1.5, lo=0.3, hi=30.0)
    static_motion_px: float = _f(0.35, lo=0.0, hi=50.0)
    continuity_min_iou: float = _f(0.3, lo=0.0, hi=1.0)
    continuity_min_similarity: float = _f(0.95, lo=0.9, hi=0.99, why=_CONTINUITY_WHY)
    # Passive anti-spoofing (MiniFASNet, models/README.md) on every path, blink or no blink: the
    # median real-face score of the session's crops must reach `pad_threshold`. Calibrated on
    # ../shared/data only: replays and recaptures <= 0.09, live sessions >= 0.54 (session
    # medians); the bounds keep a config from switching the check off by a threshold.
    pad: bool = _f(True)
    pad_threshold: float = _f(0.3, lo=0.15, hi=0.9, why=_PAD_WHY)
    pad_min_crops: int = _f(3, lo=1, hi=30)
    pad_every_s: float = _f(0.2, lo=0.0, hi=2.0)  # spacing of the scored crops in a session
    # The no-blink path watches the face at least this long before deciding, and calls it
    # static when no landmark moves non-rigidly by `passive_motion_px` (per 100 px between the
    # eyes) in that time: a frozen frame scores exactly 0, live sessions >= 0.44 in 0.6 s.
    passive_min_s: float = _f(0.6, lo=0.5, hi=10.0)
    passive_motion_px: float = _f(0.1, lo=0.01, hi=5.0)


@dataclass(frozen=True)
class SessionConfig:
    claim_timeout_s: float = _f(30.0, lo=1.0, hi=600.0)
    acquire_timeout_s: float = _f(8.0, lo=0.5, hi=120.0)
    challenge_timeout_s: float = _f(6.0, lo=0.5, hi=120.0)
    verify_timeout_s: float = _f(3.0, lo=0.2, hi=60.0)
    max_failures: int = _f(5, lo=1, hi=100)
    lockout_base_s: float = _f(30.0, lo=1.0, hi=86400.0)
    lockout_max_s: float = _f(3600.0, lo=1.0, hi=604800.0)
    challenge: str = _f("always", choices=("always", "never", "above_amount"))
    stepup_amount: float = _f(0.0, lo=0.0, hi=1e9)


@dataclass(frozen=True)
class TemplatesConfig:
    validity_days: int = _f(365, lo=1, hi=3650)
    enroll_frames: int = _f(5, lo=1, hi=50)
    # Lowest cosine between two enrolment frames; strangers' median is 0.84 (models/README.md).
    enroll_min_agreement: float = _f(
        0.85, lo=0.8, hi=0.99, why="cosine between frames of one enrolment; strangers score 0.84"
    )


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = _f(True)
    host: str = _f("127.0.0.1")
    port: int = _f(1883, lo=1, hi=65535)
    tls: bool = _f(False)
    ca_file: str = _f("")
    cert_file: str = _f("")  # client certificate (mutual TLS), with key_file
    key_file: str = _f("")
    username: str = _f("")  # broker login, with password_file (never a password inline)
    password_file: str = _f("")  # 0600 file, or a $CREDENTIALS_DIRECTORY credential name
    keepalive_s: int = _f(30, lo=5, hi=3600)
    max_inflight: int = _f(20, lo=1, hi=1000)
    reconnect_min_s: float = _f(0.5, lo=0.05, hi=60.0)
    reconnect_max_s: float = _f(30.0, lo=0.1, hi=3600.0)
    # Published-but-unsettled events go out again after this back-off (doubling, +-20 %).
    resend_min_s: float = _f(5.0, lo=0.05, hi=3600.0)
    resend_max_s: float = _f(300.0, lo=0.1, hi=86400.0)
    heartbeat_s: float = _f(60.0, lo=0.0, hi=86400.0)  # signed device.status; 0 = none


@dataclass(frozen=True)
class OutboxConfig:
    max_events: int = _f(100000, lo=10, hi=10_000_000)


@dataclass(frozen=True)
class ActuatorConfig:
    kind: str = _f("none", choices=("none", "gpio", "serial"))
    pin: int = _f(17, lo=0, hi=40)
    active_high: bool = _f(True)
    pulse_ms: int = _f(1500, lo=10, hi=60000)
    serial_port: str = _f("")
    # lcus: the LCUS-1 type CH340 boards' hex frames A0 <channel> <state> <sum>;
    # ascii: boards that take the lines ON / OFF.
    protocol: str = _f("lcus", choices=("lcus", "ascii"))
    channel: int = _f(1, lo=1, hi=8)  # relay channel on a multi-relay LCUS board


@dataclass(frozen=True)
class ConsoleConfig:
    port: str = _f("")
    baud: int = _f(115200, choices=(9600, 19200, 38400, 57600, 115200, 230400))
    pin_hash: str = _f("")  # scrypt hash of the technician PIN, set by `facegate keys init`
    max_attempts: int = _f(3, lo=1, hi=20)
    lockout_s: float = _f(60.0, lo=1.0, hi=86400.0)


@dataclass(frozen=True)
class FareGateConfig:
    gate: str = _f("gate-01")
    fare: float = _f(3.0, lo=0.0, hi=1e6)
    currency: str = _f("CNY")


@dataclass(frozen=True)
class SmartLockConfig:
    door: str = _f("door-01")
    household: tuple[str, ...] = _f(())
    max_household: int = _f(10, lo=1, hi=10)
    welfare_days: int = _f(3, lo=1, hi=60)


@dataclass(frozen=True)
class BakeryConfig:
    currency: str = _f("CNY")
    stepup_amount: float = _f(100.0, lo=0.0, hi=1e9)


@dataclass(frozen=True)
class ClaimsConfig:
    """Who the person at the kiosk says they are: QR token, card reader, POS/keypad bridge."""

    qr: bool = _f(False)  # read backend-signed QR claim tokens shown to the kiosk's camera
    qr_every_frames: int = _f(3, lo=1, hi=100)  # scan 1 idle frame in N (bounded cost)
    card_port: str = _f("")  # serial card reader, one card number per line ("" = none)
    card_baud: int = _f(9600, choices=(1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200))
    bridge_socket: str = _f("")  # POS / keypad bridge Unix socket ("" = none)
    # A file or FIFO of claim lines 'SUBJECT [AMOUNT] [REF]' ("" = none; `--claims-from` wins)
    lines_from: str = _f("")
    claim_timeout_s: float = _f(20.0, lo=1.0, hi=600.0)  # an unused claim expires


@dataclass(frozen=True)
class BackendConfig:
    # The backend's Ed25519 public key (64 hex): the one place for it. It verifies downlink
    # commands, settlement receipts, sealed templates and QR claim tokens.
    public_key: str = _f("")


@dataclass(frozen=True)
class DisplayConfig:
    enabled: bool = _f(False)  # serve the prompt page on 127.0.0.1:port
    port: int = _f(8080, lo=1024, hi=65535)
    preview: bool = _f(False)  # live camera preview on the page (never stored)


@dataclass(frozen=True)
class DebugConfig:
    capture_frames: bool = _f(False)
    capture_dir: str = _f("/dev/shm/facegate-debug")
    capture_ttl_s: float = _f(300.0, lo=1.0, hi=86400.0)


@dataclass(frozen=True)
class Config:
    profile: str = _f("demo", choices=PROFILES)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    liveness: LivenessConfig = field(default_factory=LivenessConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    templates: TemplatesConfig = field(default_factory=TemplatesConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    actuator: ActuatorConfig = field(default_factory=ActuatorConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    fare_gate: FareGateConfig = field(default_factory=FareGateConfig)
    smart_lock: SmartLockConfig = field(default_factory=SmartLockConfig)
    bakery: BakeryConfig = field(default_factory=BakeryConfig)
    claims: ClaimsConfig = field(default_factory=ClaimsConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    display: DisplayConfig = field(default_factory=DisplayConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

    @property
    def state_dir(self) -> Path:
        """State directory: $FACEGATE_STATE_DIR wins over [paths] state_dir."""
        raw = os.environ.get(ENV_STATE_DIR) or self.paths.state_dir
        return Path(raw).expanduser()

    @property
    def models_dir(self) -> Path:
        if self.paths.models_dir:
            return Path(self.paths.models_dir).expanduser()
        return Path(__file__).resolve().parent.parent / "models"


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, str(tp)
    )


def _check_scalar(path: str, value: Any, tp: Any, meta: Any, problems: list[str]) -> Any:
    """Coerce and check one value; append a problem line and return None when it is bad."""
    ok_type = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok_type:
        problems.append(f"{path} = {_fmt(value)}: must be {_type_name(tp)}")
        return None
    if tp is float:
        value = float(value)
        if not math.isfinite(value):
            problems.append(f"{path} = {_fmt(value)}: must be a finite number")
            return None
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        allowed = ", ".join(_fmt(c) for c in choices)
        problems.append(f"{path} = {_fmt(value)}: must be one of {allowed}")
        return None
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and hi is not None and not (lo <= value <= hi):
        why = f" ({meta['why']})" if meta.get("why") else ""
        problems.append(f"{path} = {_fmt(value)}: must be between {lo:g} and {hi:g}{why}")
        return None
    if tp is str and "\x00" in value:
        problems.append(f"{path}: must not contain NUL characters")
        return None
    return value


# Keys that moved: a config still using the old place is told the new one.
MOVED = {"mqtt.backend_public_key": "[backend] public_key (the one place for the backend key)"}


def _build(cls: Any, data: Any, prefix: str, problems: list[str]) -> Any:
    if not isinstance(data, dict):
        problems.append(f"{prefix or 'config'}: must be a table")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            if path in MOVED:
                problems.append(f"{path}: moved; set {MOVED[path]} instead")
                continue
            allowed = ", ".join(sorted(fields))
            problems.append(f"{path}: unknown key (allowed here: {allowed})")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, path, problems)
            continue
        if typing.get_origin(tp) is tuple:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append(f"{path} = {_fmt(value)}: must be a list of strings")
                continue
            kwargs[key] = tuple(value)
            continue
        checked = _check_scalar(path, value, tp, fields[key].metadata, problems)
        if checked is not None:
            kwargs[key] = checked
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - guarded by the checks above
        problems.append(f"{prefix or 'config'}: {exc}")
        return cls()


def _cross_checks(cfg: Config, problems: list[str]) -> None:
    lv, q, s, v = cfg.liveness, cfg.quality, cfg.session, cfg.verify
    if lv.prompt_delay_min_s > lv.prompt_delay_max_s:
        problems.append(
            f"liveness.prompt_delay_min_s = {lv.prompt_delay_min_s:g}: must not exceed "
            f"liveness.prompt_delay_max_s ({lv.prompt_delay_max_s:g})"
        )
    if lv.min_blink_ms >= lv.max_blink_ms:
        problems.append(
            f"liveness.min_blink_ms = {lv.min_blink_ms:g}: must be below "
            f"liveness.max_blink_ms ({lv.max_blink_ms:g})"
        )
    if q.min_brightness >= q.max_brightness:
        problems.append(
            f"quality.min_brightness = {q.min_brightness:g}: must be below "
            f"quality.max_brightness ({q.max_brightness:g})"
        )
    if v.payment_threshold < v.threshold:
        problems.append(
            f"verify.payment_threshold = {v.payment_threshold:g}: must be at least "
            f"verify.threshold ({v.threshold:g})"
        )
    if s.lockout_base_s > s.lockout_max_s:
        problems.append(
            f"session.lockout_base_s = {s.lockout_base_s:g}: must not exceed "
            f"session.lockout_max_s ({s.lockout_max_s:g})"
        )
    if len(cfg.smart_lock.household) > cfg.smart_lock.max_household:
        problems.append(
            f"smart_lock.household: {len(cfg.smart_lock.household)} subjects: must be at most "
            f"smart_lock.max_household ({cfg.smart_lock.max_household})"
        )
    if cfg.mqtt.tls and not cfg.mqtt.ca_file:
        problems.append("mqtt.ca_file = '': must name the CA certificate when mqtt.tls = true")
    if bool(cfg.mqtt.cert_file) != bool(cfg.mqtt.key_file):
        problems.append("mqtt.cert_file / mqtt.key_file: give both for mTLS, or neither")
    if bool(cfg.mqtt.username) != bool(cfg.mqtt.password_file):
        problems.append("mqtt.username / mqtt.password_file: give both to log in, or neither")
    if cfg.actuator.kind == "serial" and not cfg.actuator.serial_port:
        problems.append("actuator.serial_port = '': must name a port when actuator.kind = 'serial'")
    _id_checks(cfg, problems)


def _id_checks(cfg: Config, problems: list[str]) -> None:
    """Everything id-like follows the one id rule (edge/ids.py) the event schema and topics
    enforce, so a kiosk never starts (or binds keys) with an id its events would be refused for."""
    ids = (
        ("device.id", cfg.device.id),
        ("device.site", cfg.device.site),
        ("fare_gate.gate", cfg.fare_gate.gate),
        ("smart_lock.door", cfg.smart_lock.door),
    )
    for key, value in ids:
        if not is_valid_id(value):
            problems.append(f"{key} = {_fmt(value)}: must be {ID_RULE}")
    for subject in cfg.smart_lock.household:
        if not is_valid_id(subject):
            problems.append(f"smart_lock.household: {_fmt(subject)}: must be {ID_RULE}")
    for key, value in (("fare_gate.currency", cfg.fare_gate.currency),
                       ("bakery.currency", cfg.bakery.currency)):  # fmt: skip
        if not _CURRENCY.fullmatch(value):
            problems.append(f"{key} = {_fmt(value)}: must be an ISO 4217 code (3 capitals, 'CNY')")


def parse_config(text: str, source: str = "<string>") -> Config:
    """Parse TOML text into a validated Config, raising ConfigError listing every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML ({exc}); fix the syntax"]) from None
    problems: list[str] = []
    cfg = _build(Config, data, "", problems)
    if not problems:
        _cross_checks(cfg, problems)
    if problems:
        raise ConfigError(problems)
    return typing.cast(Config, cfg)


MAX_CONFIG_BYTES = 1 << 20  # a full config is ~3 KB


def read_capped(path: Path, max_bytes: int) -> bytes | None:
    """The whole file if it holds at most `max_bytes`, else None, reading at most max_bytes + 1
    bytes (a regular file over the bound: none), so /dev/zero, a FIFO or a huge file given as
    input never fills memory. Raises OSError as open() and read() do."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if stat.S_ISREG(st.st_mode) and st.st_size > max_bytes:
            return None
        data = f.read(max_bytes + 1)  # buffered read: loops until the count or EOF (pipes too)
    return None if len(data) > max_bytes else data


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the config named by `path`, else $FACEGATE_CONFIG, else the built-in defaults."""
    chosen = path if path is not None else os.environ.get(ENV_CONFIG) or None
    if chosen is None:
        return Config()
    p = Path(chosen).expanduser()
    try:
        raw = read_capped(p, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigError([f"{p}: file not found; pass --config or set {ENV_CONFIG}"]) from None
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read ({exc.strerror}); check permissions"]) from None
    if raw is None:
        raise ConfigError([f"{p}: larger than {MAX_CONFIG_BYTES >> 10} KiB; give a TOML config"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([f"{p}: not UTF-8 text; save the file as UTF-8"]) from None
    return parse_config(text, str(p))


def config_keys() -> dict[str, Any]:
    """All valid key paths and their defaults (for docs and the console `status`)."""
    out: dict[str, Any] = {}

    def walk(cls: Any, prefix: str) -> None:
        inst = cls()
        for f in dataclasses.fields(cls):
            val = getattr(inst, f.name)
            path = f"{prefix}.{f.name}" if prefix else f.name
            if dataclasses.is_dataclass(val):
                walk(type(val), path)
            else:
                out[path] = val

    walk(Config, "")
    return out
