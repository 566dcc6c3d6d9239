"""The device-side services behind the technician console (metadata only, never secrets)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from typing import Any

from edge import __version__
from edge.config import Config
from edge.errors import FacegateError
from edge.templates.store import TemplateStore, db_path
from edge.transport.outbox import Outbox
from edge.trust.keys import DeviceKeys


class DeviceServices:
    """Implements `edge.console.session.ConsoleServices` for this device's state directory."""

    def __init__(self, cfg: Config, keys: DeviceKeys, outbox: Outbox) -> None:
        self.cfg, self.keys, self.outbox = cfg, keys, outbox
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
        }

    def diagnostics(self) -> dict[str, Any]:
        report: dict[str, Any] = {}
        try:
            from edge.vision.models import model_path

            for name in ("face_detection_short_range.tflite", "face_landmark.tflite",
                         "face_embedding_int8.tflite"):
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

    def enrol(self, subject: str) -> str:
        if not self.cfg.camera.source:
            return "error: camera.source is not configured; set it in the config"
        proc = subprocess.run(
            [sys.executable, "-m", "edge", "enroll", subject, "--source", self.cfg.camera.source],
            capture_output=True, text=True, timeout=120,
        )
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        return lines[-1] if lines else f"enrol exited with {proc.returncode}"

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
