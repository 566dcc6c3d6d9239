"""Stateful property test: the store behaves like a simple model under any sequence of operations.

Model per subject: nothing, (active, version, vector) or (revoked|expired, version). Rules follow
the store's contract: enrolment refuses an active subject; an import older than the stored
version, or not newer than a tombstone, is refused; a same-version redelivery changes nothing;
wipe destroys active templates and keeps tombstones; expire turns past-due templates into
tombstones. After every step each subject verifies exactly as the model says.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from edge.backend.sealing import seal_template
from edge.errors import TemplateError
from edge.templates.store import TemplateStore, db_path
from edge.trust.keys import init_keys

SUBJECTS = st.sampled_from(["s-1", "s-2", "s-3"])
DAY = 86400
BACKEND = Ed25519PrivateKey.generate()


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(128).astype(np.float32)
    return v / np.linalg.norm(v)


class StoreModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="fg-model-"))
        self.keys = init_keys(self.dir, "kiosk-1")
        self.now = 1_800_000_000.0
        self.store = TemplateStore(db_path(self.dir), self.keys, clock=lambda: self.now)
        self.model: dict[str, tuple[str, int, int | None]] = {}

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(subject=SUBJECTS, seed=st.integers(0, 50))
    def enrol(self, subject: str, seed: int) -> None:
        cur = self.model.get(subject)
        if cur is not None and cur[0] == "active":
            try:
                self.store.enrol(subject, unit(seed), validity_s=5 * DAY)
            except TemplateError:
                return
            raise AssertionError("enrolling an active subject must be refused")
        info = self.store.enrol(subject, unit(seed), validity_s=5 * DAY)
        assert info.version == (1 if cur is None else cur[1] + 1)
        self.model[subject] = ("active", info.version, seed)

    @rule(subject=SUBJECTS, version=st.integers(1, 6), seed=st.integers(0, 50))
    def import_sealed(self, subject: str, version: int, seed: int) -> None:
        now = int(self.now)
        blob = seal_template(
            BACKEND,
            self.keys.sealing_key.public_key(),
            "kiosk-1",
            subject,
            version,
            unit(seed),
            now,
            now + 5 * DAY,
        )
        cur = self.model.get(subject)
        refused = cur is not None and (
            (cur[0] != "active" and version <= cur[1]) or (cur[0] == "active" and version < cur[1])
        )
        try:
            _info, changed = self.store.import_sealed(blob, BACKEND.public_key())
        except TemplateError as exc:
            assert refused, f"import v{version} over {cur} refused: {exc}"
            return
        assert not refused, f"import v{version} over {cur} must be refused"
        if cur is not None and cur[0] == "active" and cur[1] == version:
            assert not changed  # redelivery: the stored template stays
        else:
            assert changed
            self.model[subject] = ("active", version, seed)

    @rule(subject=SUBJECTS)
    def revoke(self, subject: str) -> None:
        cur = self.model.get(subject)
        try:
            info = self.store.revoke(subject)
        except TemplateError:
            assert cur is None
            return
        assert cur is not None and info.version == cur[1] and info.state == "revoked"
        self.model[subject] = ("revoked", cur[1], None)

    @rule()
    def time_passes_and_expire(self) -> None:
        self.now += 6 * DAY
        expired = set(self.store.expire())
        assert expired == {s for s, m in self.model.items() if m[0] == "active"}
        for s in expired:
            self.model[s] = ("expired", self.model[s][1], None)

    @rule()
    def wipe(self) -> None:
        n = self.store.wipe()
        assert n == sum(1 for m in self.model.values() if m[0] == "active")
        self.model = {s: m for s, m in self.model.items() if m[0] != "active"}

    @invariant()
    def every_subject_verifies_as_the_model_says(self) -> None:
        for subject in ("s-1", "s-2", "s-3"):
            cur = self.model.get(subject)
            if cur is not None and cur[0] == "active":
                assert cur[2] is not None
                np.testing.assert_allclose(self.store.reference(subject), unit(cur[2]), atol=1e-6)
            else:
                try:
                    self.store.reference(subject)
                except TemplateError as exc:
                    assert subject in str(exc)
                else:
                    raise AssertionError(f"{subject} ({cur}) must not verify")
        listed = {i.subject: (i.state, i.version) for i in self.store.list_all()}
        assert listed == {s: (m[0], m[1]) for s, m in self.model.items()}


StoreModel.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_store_behaves_like_its_model = StoreModel.TestCase
