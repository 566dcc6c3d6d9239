"""A kiosk reading templates while another process (sync, technician) writes the same store."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from edge.errors import TemplateError
from edge.templates.store import TemplateStore, db_path
from edge.trust.keys import init_keys

WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np
    from edge.trust.keys import load_keys
    from edge.templates.store import TemplateStore, db_path

    state = Path(sys.argv[1])
    def unit(i):
        v = np.random.default_rng(i).standard_normal(128).astype(np.float32)
        return v / np.linalg.norm(v)
    with TemplateStore(db_path(state), load_keys(state, "kiosk-1")) as store:
        for i in range(1, 401):
            store.enrol(f"u-{i}", unit(i), validity_s=86400)
            if i % 10 == 0:
                store.revoke(f"u-{i - 5}")
    print("writer done", flush=True)
    """
)


def unit(i: int) -> np.ndarray:
    v = np.random.default_rng(i).standard_normal(128).astype(np.float32)
    return v / np.linalg.norm(v)


def test_reader_never_sees_a_wrong_or_torn_template_while_another_process_writes(
    state_dir: Path,
) -> None:
    keys = init_keys(state_dir, "kiosk-1")
    with TemplateStore(db_path(state_dir), keys) as store:
        store.enrol("u-0", unit(0), validity_s=86400)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(state_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reads = seen_written = refusals = 0
    rng = np.random.default_rng(1)
    try:
        with TemplateStore(db_path(state_dir), keys) as reader:
            deadline = time.monotonic() + 120
            while writer.poll() is None and time.monotonic() < deadline:
                np.testing.assert_allclose(reader.reference("u-0"), unit(0), atol=1e-6)
                i = int(rng.integers(1, 401))
                try:
                    ref = reader.reference(f"u-{i}")
                except TemplateError as exc:
                    # not written yet, or revoked meanwhile: refused, never mismatched
                    assert "no template" in str(exc) or "revoked" in str(exc), exc
                    refusals += 1
                else:
                    np.testing.assert_allclose(ref, unit(i), atol=1e-6)
                    seen_written += 1
                reader.list_all()
                reads += 1
    finally:
        if writer.poll() is None:
            writer.kill()
    out, err = writer.communicate(timeout=30)
    assert writer.returncode == 0, err
    assert "writer done" in out
    assert reads > 20 and seen_written > 0 and refusals > 0
    with TemplateStore(db_path(state_dir), keys) as store:
        states = {i.subject: i.state for i in store.list_all()}
    assert len(states) == 401
    assert sum(s == "revoked" for s in states.values()) == 40


def test_threads_with_their_own_connections_read_while_one_writes(state_dir: Path) -> None:
    n_threads = 4
    import threading

    keys = init_keys(state_dir, "kiosk-1")
    path = db_path(state_dir)
    with TemplateStore(path, keys) as s:
        s.enrol("u-0", unit(0), validity_s=86400)
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            with TemplateStore(path, keys) as r:
                while not stop.is_set():
                    np.testing.assert_allclose(r.reference("u-0"), unit(0), atol=1e-6)
        except BaseException as exc:  # reported to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(n_threads)]
    for t in threads:
        t.start()
    with TemplateStore(path, keys) as w:
        for i in range(1, 101):
            w.enrol(f"u-{i}", unit(i), validity_s=86400)
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors[0]
