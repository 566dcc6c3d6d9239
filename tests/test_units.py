"""The shipped systemd units (systemd/): `systemd-analyze verify` finds nothing, the exposure
score of each is at most 3.0, the command lines take only what the CLI has, and the kiosk runs
as facegate.service starts it — `facegate run --config F`, nothing else on the command line —
inside the unit's own system-call filter, address-family list and W^X rule, under the usual
login umask (022): every file it creates in the state directory is 0600, every directory 0700.

No systemd runs here (no PID 1 manager), so the run test applies the parts of the sandbox that
decide whether the process survives it with the kernel's own mechanisms: the unit's
SystemCallFilter= groups expanded by `systemd-analyze syscall-filter` and its
RestrictAddressFamilies= loaded as a seccomp filter through libseccomp (systemd's own library),
failing with SystemCallErrorNumber= (EPERM) and EAFNOSUPPORT as systemd does, and
MemoryDenyWriteExecute= as the kernel's PR_SET_MDWE (which refuses what systemd's filter
refuses: a mapping both writable and executable, or one made executable later).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from _broker import start_mosquitto
from _cli import cli_env
from conftest import require_service
from test_profiles_e2e import _frames as clip_frames
from test_profiles_e2e import profile_config, write_clip

from edge.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"
KIOSK_UNIT = "facegate.service"
CONSOLE_UNIT = "facegate-console@.service"
DISPLAY_UNIT = "facegate-display.service"
SHIPPED = (KIOSK_UNIT, CONSOLE_UNIT, DISPLAY_UNIT)
INSTALLED_FACEGATE = "/opt/facegate/.venv/bin/facegate"
MAX_EXPOSURE = 3.0
DEMO_CLIP = REPO / "edge" / "camera" / "demo_clip" / "liveportrait_d10_30fps.mp4"


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        require_service("systemd-analyze", "apt-get install systemd (.ci/run does)")
    return path


def directives(unit: str, key: str) -> list[str]:
    """Every value of `key=` in systemd/<unit>, continuation lines joined."""
    text = (UNITS / unit).read_text().replace("\\\n", " ")
    return [ln.split("=", 1)[1].strip() for ln in text.splitlines() if ln.startswith(f"{key}=")]


def exec_start(unit: str) -> list[str]:
    (line,) = directives(unit, "ExecStart")
    return shlex.split(line)


# ---------------------------------------------------------------------------- static checks


def verifiable_copies(dest: Path) -> list[Path]:
    """The units as `systemd-analyze verify` can check them on this machine: the installed
    program paths (which must exist for verify) replaced by this checkout's venv, and Chromium
    by /bin/true where the browser is not installed (the browser tests need it; the unit's
    syntax and settings do not)."""
    venv_facegate = Path(sys.executable).parent / "facegate"
    assert venv_facegate.exists(), f"no facegate console script beside {sys.executable}"
    dest.mkdir()
    out = []
    for name in SHIPPED:
        text = (UNITS / name).read_text().replace(INSTALLED_FACEGATE, str(venv_facegate))
        if not Path("/usr/bin/chromium").exists():
            text = text.replace("ExecStart=/usr/bin/chromium", "ExecStart=/bin/true")
        (dest / name).write_text(text)
        out.append(dest / name)
    # A template is checked as the technician enables it: one instance per serial port.
    out.append(dest / CONSOLE_UNIT.replace("@.", "@ttyAMA0."))
    return out


def verify(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", *map(str, paths)], capture_output=True, text=True,
        timeout=60, cwd=paths[0].parent, check=False,
    )  # fmt: skip


def test_units_pass_systemd_analyze_verify_without_a_word(tmp_path: Path) -> None:
    units = verifiable_copies(tmp_path / "units")
    proc = verify(units)
    # verify exits 0 on unknown keys and bad values (it only warns): any output is a finding.
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), (
        f"exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
    )
    # ... and it does speak up here: a misspelt setting in the kiosk's unit is reported.
    bad = tmp_path / "bad" / KIOSK_UNIT
    bad.parent.mkdir()
    bad.write_text(units[0].read_text().replace("ProtectClock=yes", "ProtectClocks=yes"))
    assert "ProtectClocks" in verify([bad]).stderr


def exposure(unit: Path) -> float:
    proc = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", proc.stdout)
    assert found, f"no exposure line for {unit.name}:\n{proc.stdout[-1500:]}{proc.stderr}"
    return float(found.group(1))


@pytest.mark.parametrize("unit", SHIPPED)
def test_unit_exposure_is_at_most_3(unit: str) -> None:
    score = exposure(UNITS / unit)
    print(f"\n[exposure] {unit}: {score}")
    assert score <= MAX_EXPOSURE, f"{unit}: exposure {score} > {MAX_EXPOSURE}"


def test_units_command_lines_take_only_what_the_cli_has() -> None:
    parser = build_parser()
    kiosk = exec_start(KIOSK_UNIT)
    assert kiosk == [INSTALLED_FACEGATE, "run", "--config", "/etc/facegate/kiosk.toml"]
    console = exec_start(CONSOLE_UNIT)
    assert console[0] == INSTALLED_FACEGATE
    args = parser.parse_args(console[1:])
    assert (args.handler, args.port, args.config) == (
        "console", "/dev/%i", "/etc/facegate/kiosk.toml"
    )
    # The console's device is its instance; `enrol` and `logs` need the camera and the journal.
    assert "/dev/%i rw" in directives(CONSOLE_UNIT, "DeviceAllow")
    assert directives(CONSOLE_UNIT, "BindsTo") == ["dev-%i.device"]


# ---------------------------------------------------------------------------- the unit's sandbox


def syscall_groups() -> dict[str, list[str]]:
    """`systemd-analyze syscall-filter`: every @group and its members (calls and @groups)."""
    proc = subprocess.run(
        [systemd_analyze(), "syscall-filter", "--no-pager"], capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in proc.stdout.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif not line.strip() or not line.startswith(" "):
            current = None
        elif current is not None and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        out |= expand(groups[name], groups) if name.startswith("@") else {name}
    return out


def unit_syscalls(unit: str) -> set[str]:
    """The calls SystemCallFilter= lets through: the allow-list minus every ~deny list."""
    groups = syscall_groups()
    allowed: set[str] = set()
    denied: set[str] = set()
    for value in directives(unit, "SystemCallFilter"):
        if value.startswith("~"):
            denied |= expand(value[1:].split(), groups)
        else:
            allowed |= expand(value.split(), groups)
    assert allowed, f"{unit} has no SystemCallFilter= allow-list"
    return allowed - denied


class ScmpArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]  # fmt: skip


SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def scmp_act_errno(code: int) -> int:
    return 0x00050000 | code


def unit_sandbox(unit: str) -> Callable[[], None]:
    """A preexec function: umask 022 (the caller's; the unit's UMask= would hide a file created
    without an explicit mode), W^X, then the unit's seccomp filter, as systemd sets them up."""
    name = ctypes.util.find_library("seccomp")
    if name is None:
        require_service("libseccomp", "apt-get install libseccomp2 (systemd depends on it)")
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(ScmpArgCmp)
    ]  # fmt: skip
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    (errno_name,) = directives(unit, "SystemCallErrorNumber")
    ctx = lib.seccomp_init(scmp_act_errno(getattr(errno, errno_name)))
    assert ctx
    families = [getattr(socket, f) for f in directives(unit, "RestrictAddressFamilies")[0].split()]
    nr_socket = lib.seccomp_syscall_resolve_name(b"socket")
    for call in sorted(unit_syscalls(unit) - {"socket"}):
        nr = lib.seccomp_syscall_resolve_name(call.encode())
        if nr >= 0:  # calls of other architectures do not resolve here
            assert lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 0, None) == 0, call
    for family in families:
        cmp = ScmpArgCmp(0, SCMP_CMP_EQ, int(family), 0)
        assert lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr_socket, 1, ctypes.byref(cmp)) == 0
    # Any other family: EAFNOSUPPORT, as RestrictAddressFamilies= answers.
    for family in range(1, 46):
        if family not in families:
            cmp = ScmpArgCmp(0, SCMP_CMP_EQ, family, 0)
            lib.seccomp_rule_add_array(ctx, scmp_act_errno(errno.EAFNOSUPPORT), nr_socket, 1,
                                       ctypes.byref(cmp))  # fmt: skip
    assert directives(unit, "MemoryDenyWriteExecute") == ["yes"]
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        os.umask(0o022)
        if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_MDWE (kernel >= 6.3)")
        if lib.seccomp_load(ctx) != 0:  # also sets no_new_privs, as NoNewPrivileges=yes
            raise OSError(ctypes.get_errno(), "seccomp_load")

    return preexec


def test_the_sandbox_refuses_what_the_unit_refuses() -> None:
    """The harness is not a no-op: inside it a W+X mapping, an AF_PACKET socket and a call
    outside the filter (@resources: setpriority) fail with the errors systemd would give."""
    probe = (
        "import errno, mmap, os, socket\n"
        "def code(f):\n"
        "    try:\n        f()\n    except OSError as e:\n        return e.errno\n"
        "    return 0\n"
        "print(code(lambda: mmap.mmap(-1, 4096, prot=7)),"
        " code(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)),"
        " code(lambda: os.setpriority(os.PRIO_PROCESS, 0, 5)),"
        " code(lambda: socket.socket(socket.AF_INET6).close()))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], preexec_fn=unit_sandbox(KIOSK_UNIT), capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(errno.EACCES), str(errno.EAFNOSUPPORT),
                                   str(errno.EPERM), "0"]  # fmt: skip


def login_umask() -> None:
    os.umask(0o022)


def modes_while_running(
    proc: subprocess.Popen[str], state: Path, deadline_s: float
) -> dict[str, int]:
    """Every path seen under `state` while `proc` runs (SQLite's -wal/-shm side files exist only
    while a connection is open) and after it exits -> its permission bits."""
    seen: dict[str, int] = {}

    def scan() -> None:
        for p in state.rglob("*"):
            # A side file may go between listing and stat.
            with contextlib.suppress(FileNotFoundError):
                st = p.lstat()
                seen[str(p.relative_to(state))] = stat.S_IMODE(st.st_mode) | (
                    0o40000 if stat.S_ISDIR(st.st_mode) else 0
                )

    deadline = time.monotonic() + deadline_s
    while proc.poll() is None:
        assert time.monotonic() < deadline, f"the run did not end within {deadline_s:g} s"
        scan()
        time.sleep(0.01)
    scan()
    return seen


def test_smart_lock_runs_as_the_unit_starts_it_and_keeps_every_state_file_private(
    tmp_path: Path,
) -> None:
    broker = start_mosquitto(tmp_path)
    try:
        backend_key = "11" * 32  # any Ed25519 public key: no token is shown in this clip
        frames, fps = clip_frames(DEMO_CLIP, 0, 90)  # 3 s of the demo clip: a face at the door
        clip = write_clip(tmp_path / "door.avi", fps, [frames])
        cfg = profile_config(
            "smart_lock", tmp_path, broker, clip, realtime=False,
            smart_lock={"household": ["s-tenant-a"]},
            claims={"qr": True}, backend={"public_key": backend_key},
        )  # fmt: skip
        state = tmp_path / "state"
        env = {**cli_env(cfg), "GPIOZERO_PIN_FACTORY": "mock"}
        facegate = str(Path(sys.executable).parent / "facegate")
        init = subprocess.run(
            [facegate, "keys", "init"], env=env, capture_output=True, text=True, timeout=120,
            preexec_fn=login_umask, check=False,
        )  # fmt: skip
        assert init.returncode == 0, init.stderr
        # ExecStart= of the unit, with the config path of this test.
        argv = [facegate if a == INSTALLED_FACEGATE else a for a in exec_start(KIOSK_UNIT)]
        argv[argv.index("--config") + 1] = str(cfg)
        # Output to files: a pipe nobody reads while the run is watched would fill and block it.
        with (tmp_path / "run.out").open("w+") as out_f, (tmp_path / "run.err").open("w+") as err_f:
            run = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=out_f, stderr=err_f, text=True,
                preexec_fn=unit_sandbox(KIOSK_UNIT),
            )  # fmt: skip
            try:
                seen = modes_while_running(run, state, deadline_s=120.0)
            finally:
                run.kill()
                run.wait()
    finally:
        broker.stop()
    out, err = (tmp_path / "run.out").read_text(), (tmp_path / "run.err").read_text()
    assert run.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["profile"] == "smart_lock" and summary["frames"] == len(frames), summary
    assert summary["events"], (summary, err[-2000:])  # a face at the door was decided on

    stores = {"outbox.db", "templates.db", "lockout.sqlite", "presence.sqlite", "downlink.db",
              "used-claim-tokens.sqlite"}  # fmt: skip
    missing = {s for s in stores if s not in seen}
    assert not missing, f"not created by the run: {missing}; saw {sorted(seen)}"
    assert any(p.endswith("-wal") for p in seen) and any(p.endswith("-shm") for p in seen), seen
    assert any(p.startswith("keys/") for p in seen), seen
    loose = {p: f"{m & 0o7777:o}" for p, m in seen.items()
             if m != (0o40700 if m & 0o40000 else 0o600)}  # fmt: skip
    assert not loose, f"state paths not 0600 (files) / 0700 (dirs) under umask 022: {loose}"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


def test_claim_lines_come_from_the_config_without_a_flag(tmp_path: Path) -> None:
    """[claims] lines_from: the POS / keypad FIFO of a unit's config, instead of --claims-from;
    a path that is not there is one line naming the key."""
    from _cli import assert_input_error, facegate, write_config

    lines = tmp_path / "claims.txt"
    lines.write_text("s-walkin 42.00 pos-7\n")
    cfg = write_config(tmp_path / "bakery.toml", tmp_path / "state",
                       extra=f'[claims]\nlines_from = "{lines}"\n')  # fmt: skip
    env = cli_env(cfg)
    assert facegate(env, "keys", "init").returncode == 0
    frames, fps = clip_frames(DEMO_CLIP, 0, 60)
    clip = write_clip(tmp_path / "counter.avi", fps, [frames])
    proc = facegate(env, "run", "--source", f"file:{clip}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    decisions = json.loads(proc.stdout.strip().splitlines()[-1])["decisions"]
    assert decisions and decisions[0]["subject"] == "s-walkin", decisions  # the file's claim

    lines.unlink()
    proc = facegate(env, "run", "--source", f"file:{clip}")
    assert_input_error(proc, "error", "claims.lines_from", str(lines))


def test_the_console_serves_a_technician_inside_its_units_sandbox(tmp_path: Path) -> None:
    """facegate-console@.service's ExecStart= on a pty (the instance's /dev/%i) under that unit's
    system-call filter, address families and W^X: login, status and `logs` (which runs
    journalctl) work, SIGTERM ends it cleanly, and what it writes in the state dir is 0600."""
    from test_console import Terminal

    from edge.console.auth import hash_pin

    pin = "482915"
    cfg = tmp_path / "kiosk.toml"
    cfg.write_text(
        f'[device]\nid = "kiosk-con-1"\nsite = "lab"\n[paths]\nstate_dir = "{tmp_path / "st"}"\n'
        f'[console]\npin_hash = "{hash_pin(pin)}"\n[mqtt]\nenabled = false\n'
    )
    env = cli_env(cfg)
    facegate = str(Path(sys.executable).parent / "facegate")
    subprocess.run([facegate, "keys", "init"], env=env, check=True, capture_output=True,
                   timeout=60, preexec_fn=login_umask)  # fmt: skip
    term = Terminal()
    argv = [facegate if a == INSTALLED_FACEGATE else a for a in exec_start(CONSOLE_UNIT)]
    argv[argv.index("--port") + 1] = term.name  # the instance's device: a pty here
    argv[argv.index("--config") + 1] = str(cfg)
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                            preexec_fn=unit_sandbox(CONSOLE_UNIT))  # fmt: skip
    try:
        term.expect("facegate> ")
        term.send(b"login\r\n")
        term.expect("PIN: ")
        term.send(pin.encode() + b"\r\n")
        term.expect("logged in")
        term.expect("facegate> ")
        term.send(b"status\r\n")
        assert '"device": "kiosk-con-1"' in term.expect("facegate> ")
        term.send(b"logs 3\r\n")
        logs = term.expect("facegate> ")  # journalctl ran inside the filter (no journal here)
        assert "not available" not in logs and "not permitted" not in logs, logs
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        term.close()
    assert code == 0
    state = tmp_path / "st"
    loose = {str(p.relative_to(state)): f"{stat.S_IMODE(p.stat().st_mode):o}"
             for p in state.rglob("*")
             if stat.S_IMODE(p.stat().st_mode) != (0o700 if p.is_dir() else 0o600)}  # fmt: skip
    assert not loose, f"console state paths not 0600 / 0700 under umask 022: {loose}"
