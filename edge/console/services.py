"""The device-side services behind the technician console (metadata only, never secrets)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from typing import Any

from edge import __version__
from edge.camera.lease import CameraLease
from edge.config import Config
from edge.console.session import Outcome
from edge.errors import FacegateError
from edge.templates.store import TemplateStore, db_path
from edge.transport.outbox import Outbox
from edge.trust.keys import DeviceKeys

ENROL_TIMEOUT_S = 120.0
# Error prefixes of `facegate enroll` (edge.errors) -> the fixed word the audit event carries.
_ERROR_WORDS = (
    ("template error:", "template_error"),
    ("source error:", "source_error"),
    ("model error:", "model_error"),
    ("key error:", "key_error"),
    ("config error:", "config_error"),
    ("enrolment refused:", "enrol_refused"),
    ("error:", "enrol_error"),
)


class DeviceServices:
    """Implements `edge.console.session.ConsoleServices` for this device's state directory.

    `config_path` is the config file the console itself was started with (None: $FACEGATE_CONFIG
    or the defaults, which a child inherits anyway); child commands get it passed through."""

    def __init__(
        self, cfg: Config, keys: DeviceKeys, outbox: Outbox, config_path: str | None = None
    ) -> None:
        self.cfg, self.keys, self.outbox, self.config_path = cfg, keys, outbox, config_path
        self.started = time.monotonic()

    def _store(self) -> TemplateStore:
        return TemplateStore(db_path(self.cfg.state_dir), self.keys)

    def status(self) -> dict[str, Any]:
        with self._store() as store:
            infos = store.list_all()
        return {
            "device": self.cfg.device.id,
            "site": self.cfg.device.site,
            "profile": self.cfg.profile,
            "version": __version__,
            "console_uptime_s": round(time.monotonic() - self.started, 1),
            "templates_active": sum(1 for i in infos if i.state == "active"),
            "templates_total": len(infos),
            "outbox": self.outbox.status(),
            # Who streams the camera: the kiosk when it runs, an enrolment it lent it to.
            "camera": CameraLease(self.cfg.state_dir).state(),
        }

    def diagnostics(self) -> dict[str, Any]:
        report: dict[str, Any] = {}
        try:
            from edge.vision.models import DETECTOR, EMBEDDER, LANDMARKER, model_path
            from edge.vision.pad import PAD_V1SE, PAD_V2

            # Every model the kiosk loads: with the passive check on, it refuses to start
            # without the two anti-spoofing models.
            names = [DETECTOR, LANDMARKER, EMBEDDER]
            if self.cfg.liveness.pad:
                names += [PAD_V2, PAD_V1SE]
            for name in names:
                model_path(self.cfg.models_dir, name)
            report["models"] = {"ok": True}
        except (FacegateError, ImportError) as exc:
            report["models"] = {"ok": False, "detail": str(exc)}
        try:
            with self._store() as store:
                store.list_all()
            report["templates"] = {"ok": True}
        except FacegateError as exc:
            report["templates"] = {"ok": False, "detail": str(exc)}
        report["keys"] = {"ok": True}  # loaded at console start, or the console would not run
        if self.cfg.mqtt.enabled:
            try:
                with socket.create_connection((self.cfg.mqtt.host, self.cfg.mqtt.port), 3.0):
                    report["broker"] = {"ok": True}
            except OSError as exc:
                report["broker"] = {"ok": False, "detail": f"{exc.strerror or exc}"}
        report["disk_free_mb"] = shutil.disk_usage(self.cfg.state_dir).free // 2**20
        return report

    def templates(self) -> list[dict[str, Any]]:
        with self._store() as store:
            return [i.as_dict() for i in store.list_all()]

    def enrol(self, subject: str) -> Outcome:
        """Run `facegate enroll` with this console's own config (and so its device id and keys).

        The child's last output line is shown to the (logged-in) technician; the audit gets only
        a fixed reason word derived from the child's error prefix or exit status."""
        if not self.cfg.camera.source:
            msg = "error: camera.source is not configured; set it in the config"
            return Outcome(False, "no_camera_source", msg)
        cmd = [sys.executable, "-m", "edge"]
        if self.config_path:
            cmd += ["--config", self.config_path]
        cmd += ["enroll", subject, "--source", self.cfg.camera.source]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                                  timeout=ENROL_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            msg = f"error: enrolment took over {ENROL_TIMEOUT_S:.0f} s; check the camera"
            return Outcome(False, "enrol_timeout", msg)
        if proc.returncode == 0:  # the result is the last stdout line (stderr has the prompt)
            out = proc.stdout.strip().splitlines()
            return Outcome(True, "", out[-1] if out else "enrolled")
        err = proc.stderr.strip().splitlines()
        last_err = err[-1] if err else f"error: enrol exited with status {proc.returncode}"
        reason = next((word for prefix, word in _ERROR_WORDS if last_err.startswith(prefix)),
                      "enrol_refused" if proc.returncode == 1 else "enrol_failed")
        return Outcome(False, reason, last_err)

    def revoke(self, subject: str) -> str:
        with self._store() as store:
            info = store.revoke(subject)
        return f"revoked {info.subject} version {info.version}"

    def wipe(self) -> int:
        with self._store() as store:
            return store.wipe()

    def logs(self, n: int) -> list[str]:
        if shutil.which("journalctl"):
            proc = subprocess.run(
                ["journalctl", "-u", "facegate", "-n", str(n), "--no-pager", "-o", "short-iso"],
                capture_output=True, text=True, timeout=10,
            )
            if proc.returncode == 0:
                return proc.stdout.splitlines()[-n:]
        return ["journal not available on this system"]
