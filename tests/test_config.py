"""Config loading: every validation path names the key, the bad value and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.config import Config, config_keys, load_config, parse_config
from edge.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    return err.value.problems


def test_empty_config_gives_all_defaults() -> None:
    assert parse_config("") == Config()


@pytest.mark.parametrize("name", ["demo", "fare_gate", "smart_lock", "bakery"])
def test_shipped_profiles_load_and_name_their_profile(name: str) -> None:
    cfg = load_config(REPO / "config" / f"{name}.toml")
    assert cfg.profile == name


def test_out_of_range_value_names_key_value_and_range() -> None:
    assert problems("[liveness]\near_threshold = 1.7\n") == [
        "liveness.ear_threshold = 1.7: must be between 0.05 and 0.5"
    ]


def test_unknown_key_is_an_error_listing_allowed_keys() -> None:
    (msg,) = problems("[liveness]\near_treshold = 0.2\n")
    assert msg.startswith("liveness.ear_treshold: unknown key (allowed here: ")
    assert "ear_threshold" in msg


def test_unknown_section_is_an_error() -> None:
    (msg,) = problems("[livenes]\nx = 1\n")
    assert msg.startswith("livenes: unknown key")


def test_wrong_type_is_reported_with_the_expected_type() -> None:
    assert problems('[camera]\nwidth = "wide"\n') == ["camera.width = 'wide': must be an integer"]
    assert problems("[camera]\nrealtime = 1\n") == ["camera.realtime = 1: must be true or false"]
    assert problems("[device]\nid = 5\n") == ["device.id = 5: must be a string"]


def test_integer_is_accepted_where_a_number_is_expected() -> None:
    # (This once parsed "0.2", a float, and asserted the always-true `.liveness`.)
    window = parse_config("[liveness]\nresponse_window_s = 2\n").liveness.response_window_s
    assert window == 2.0 and isinstance(window, float)
    fps = parse_config("[camera]\nfps = 25\n").camera.fps
    assert fps == 25.0 and isinstance(fps, float)


def test_bool_is_not_accepted_as_a_number() -> None:
    assert problems("[camera]\nfps = true\n") == ["camera.fps = True: must be a number"]


def test_choice_outside_the_allowed_set() -> None:
    assert problems('profile = "casino"\n') == [
        "profile = 'casino': must be one of 'demo', 'fare_gate', 'smart_lock', 'bakery'"
    ]


def test_section_given_as_a_value_is_an_error() -> None:
    assert problems("camera = 3\n") == ["camera: must be a table"]


def test_list_of_strings_is_checked() -> None:
    assert problems("[smart_lock]\nhousehold = [1, 2]\n") == [
        "smart_lock.household = [1, 2]: must be a list of strings"
    ]


def test_every_problem_is_reported_at_once() -> None:
    found = problems("[liveness]\near_threshold = 9.0\n[camera]\nwidth = 1\nbogus = 2\n")
    assert len(found) == 3


@pytest.mark.parametrize(
    ("text", "start"),
    [
        ("[liveness]\nprompt_delay_min_s = 5.0\nprompt_delay_max_s = 1.0\n",
         "liveness.prompt_delay_min_s = 5: must not exceed"),
        ("[liveness]\nmin_blink_ms = 800.0\nmax_blink_ms = 700.0\n",
         "liveness.min_blink_ms = 800: must be below"),
        ("[quality]\nmin_brightness = 200.0\nmax_brightness = 100.0\n",
         "quality.min_brightness = 200: must be below"),
        ("[verify]\nthreshold = 0.95\npayment_threshold = 0.94\n",
         "verify.payment_threshold = 0.94: must be at least"),
        ("[session]\nlockout_base_s = 100.0\nlockout_max_s = 10.0\n",
         "session.lockout_base_s = 100: must not exceed"),
        ("[mqtt]\ntls = true\n", "mqtt.ca_file = '': must name the CA"),
        ('[mqtt]\ncert_file = "c.pem"\n', "mqtt.cert_file / mqtt.key_file: give both"),
        ('[mqtt]\nusername = "k1"\n', "mqtt.username / mqtt.password_file: give both"),
        ('[actuator]\nkind = "serial"\n', "actuator.serial_port = '': must name a port"),
        ('[device]\nid = "a/b"\n', "device.id = 'a/b': must be 1-64 ASCII letters, digits"),
        ('[device]\nsite = "x+y"\n', "device.site = 'x+y': must be 1-64 ASCII letters, digits"),
        ('[device]\nid = "kiosk#1"\n', "device.id = 'kiosk#1': must be 1-64 ASCII"),
        ('[device]\nid = "kiosk 1"\n', "device.id = 'kiosk 1': must be 1-64 ASCII"),
        ('[device]\nid = "kiosk-ü"\n', "device.id = 'kiosk-ü': must be 1-64 ASCII"),
        ('[fare_gate]\ngate = "gate 3"\n', "fare_gate.gate = 'gate 3': must be 1-64 ASCII"),
        ('[smart_lock]\ndoor = ""\n', "smart_lock.door = '': must be 1-64 ASCII"),
        ('[smart_lock]\nhousehold = ["ten ant"]\n', "smart_lock.household: 'ten ant': must be"),
        ('[bakery]\ncurrency = "yuan"\n', "bakery.currency = 'yuan': must be an ISO 4217 code"),
        ('[smart_lock]\nmax_household = 1\nhousehold = ["a", "b"]\n',
         "smart_lock.household: 2 subjects: must be at most"),
    ],
)
def test_cross_field_rules(text: str, start: str) -> None:
    (msg,) = problems(text)
    assert msg.startswith(start), msg


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        # Both at -1.0 once accepted a different person; every cosine bound names its reason.
        ("[verify]\nthreshold = -1.0\npayment_threshold = -1.0\n",
         ("verify.threshold = -1.0: must be between 0.9 and 0.97 (cosine", "of strangers match")),
        ("[verify]\nthreshold = 0.99\n", ("verify.threshold = 0.99: must be between 0.9",)),
        ("[verify]\npayment_threshold = 0.92\n",
         ("verify.payment_threshold = 0.92: must be between 0.93 and 0.97", "1e-4")),
        ("[liveness]\npad_threshold = 0.05\n",
         ("liveness.pad_threshold = 0.05: must be between 0.15 and 0.9", "replays")),
        ("[liveness]\ncontinuity_min_similarity = -1.0\n",
         ("liveness.continuity_min_similarity = -1.0: must be between 0.9 and 0.99",)),
        ("[templates]\nenroll_min_agreement = 0.0\n",
         ("templates.enroll_min_agreement = 0.0: must be between 0.8 and 0.99",)),
    ],
)
def test_thresholds_outside_the_calibrated_range_name_the_range_and_why(
    text: str, fragments: tuple[str, ...]
) -> None:
    found = problems(text)
    assert found and all(f in found[0] for f in fragments), found


def test_shipped_thresholds_sit_inside_their_bounds() -> None:
    for name in ("demo", "fare_gate", "smart_lock", "bakery"):
        v = load_config(REPO / "config" / f"{name}.toml").verify
        assert 0.9 <= v.threshold <= v.payment_threshold <= 0.97


def test_nan_is_refused() -> None:
    assert problems("[camera]\nfps = nan\n") == ["camera.fps = nan: must be a finite number"]


def test_invalid_toml_names_the_file_and_the_fix() -> None:
    (msg,) = problems("[camera\n")
    assert "not valid TOML" in msg and "fix the syntax" in msg


def test_missing_file_names_the_path_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "none.toml")
    assert "file not found; pass --config or set FACEGATE_CONFIG" in err.value.problems[0]


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_bytes(b"[device]\nid = \"\xff\xfe\"\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert "not UTF-8" in err.value.problems[0]


def test_config_path_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "k.toml"
    p.write_text('[device]\nid = "env-kiosk"\n')
    monkeypatch.setenv("FACEGATE_CONFIG", str(p))
    assert load_config().device.id == "env-kiosk"


def test_state_dir_environment_wins_over_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = parse_config(f'[paths]\nstate_dir = "{tmp_path / "cfg"}"\n')
    monkeypatch.delenv("FACEGATE_STATE_DIR", raising=False)
    assert cfg.state_dir == tmp_path / "cfg"
    monkeypatch.setenv("FACEGATE_STATE_DIR", str(tmp_path / "env"))
    assert cfg.state_dir == tmp_path / "env"


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.camera.fps = 5.0  # type: ignore[misc]


def test_every_default_is_itself_valid() -> None:
    lines = []
    for path, value in config_keys().items():
        section, _, key = path.rpartition(".")
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, (int, float)):
            rendered = repr(value)
        elif isinstance(value, tuple):
            rendered = "[" + ", ".join(f'"{v}"' for v in value) + "]"
        else:
            rendered = f'"{value}"'
        lines.append((section, f"{key} = {rendered}"))
    text = "".join(f"{k}\n" for s, k in lines if not s)
    for section in sorted({s for s, _ in lines if s}):
        text += f"[{section}]\n" + "".join(f"{k}\n" for s, k in lines if s == section)
    assert parse_config(text) == Config()


def test_cli_reports_config_error_in_one_line_with_exit_2(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[liveness]\near_threshold = 1.7\n")
    proc = subprocess.run(
        [sys.executable, "-m", "edge", "outbox", "status", "--config", str(p)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "config error: liveness.ear_threshold = 1.7: must be between 0.05 and 0.5"
    )


toml_scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(), st.booleans(),
    st.text(max_size=20), st.lists(st.integers(), max_size=3),
)
key_names = st.sampled_from(
    ["profile", "camera", "fps", "width", "liveness", "ear_threshold", "device", "id",
     "mqtt", "tls", "household", "smart_lock", "x", "session", "challenge"]
)
toml_values = st.recursive(
    toml_scalars, lambda inner: st.dictionaries(key_names, inner, max_size=4), max_leaves=12
)


def _render(value: object) -> str:
    import json
    import math

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_render(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{k} = {_render(v)}" for k, v in value.items()) + "}"


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(key_names, toml_values, max_size=5))
def test_random_toml_never_crashes_the_loader(doc: dict[str, object]) -> None:
    text = "".join(f"{k} = {_render(v)}\n" for k, v in doc.items())
    try:
        cfg = parse_config(text)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and "\n" not in p for p in exc.problems)
    else:
        assert isinstance(cfg, Config)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_text_never_crashes_the_loader(text: str) -> None:
    try:
        parse_config(text)
    except ConfigError as exc:
        assert exc.problems
