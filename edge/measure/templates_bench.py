"""Template store benchmark: on-disk size, decrypt+compare cost, claim verification latency.

    python -m edge.measure.templates_bench [--templates 10000] [--claims 1000] [--dir D]
        [--json OUT]

Builds a fresh store of N random unit-length 128-d templates through the public API (one
transaction per enrolment, synchronous=FULL, as on a kiosk), then measures:
- `bytes_per_template`: (templates.db + WAL after checkpoint) / N;
- `decrypt_compare_us`: per-template cost of a full 1:N scan (AES-GCM open + dot product);
- `verify_claim_ms`: one 1:1 claim on the open store (lookup, decrypt, compare), p50/p95;
- `verify_claim_cold_ms`: the same including opening the store and loading keys.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edge.templates.store import TemplateStore, cosine, db_path
from edge.trust.keys import init_keys, load_keys

DEVICE = "bench-device"


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run_bench(state_dir: Path, n_templates: int, n_claims: int, seed: int = 0) -> dict[str, object]:
    """Build the store in `state_dir` (must be empty) and return the figures as a dict."""
    rng = np.random.default_rng(seed)
    keys = init_keys(state_dir, DEVICE)
    path = db_path(state_dir)
    t0 = time.perf_counter()
    with TemplateStore(path, keys) as store:
        for i in range(n_templates):
            store.enrol(f"s-{i:06d}", rng.standard_normal(128), validity_s=365 * 86400)
        store._checkpoint()  # the steady state a kiosk reaches after SQLite's auto-checkpoint
    insert_s = time.perf_counter() - t0
    wal = Path(f"{path}-wal")
    db_bytes = path.stat().st_size
    wal_bytes = wal.stat().st_size if wal.exists() else 0

    probe = rng.standard_normal(128).astype(np.float32)
    probe /= np.linalg.norm(probe)
    with TemplateStore(path, keys) as store:
        scans = []
        for _ in range(3):
            t = time.perf_counter()
            best = store.best_match(probe)
            scans.append(time.perf_counter() - t)
        assert best is not None
        warm = []
        for _ in range(n_claims):
            subject = f"s-{int(rng.integers(n_templates)):06d}"
            t = time.perf_counter()
            score = cosine(store.reference(subject), probe)
            warm.append((time.perf_counter() - t) * 1e3)
            assert -1.0 <= score <= 1.0
    cold = []
    for _ in range(max(1, n_claims // 10)):
        subject = f"s-{int(rng.integers(n_templates)):06d}"
        t = time.perf_counter()
        with TemplateStore(path, load_keys(state_dir, DEVICE)) as store:
            cosine(store.reference(subject), probe)
        cold.append((time.perf_counter() - t) * 1e3)
    scan_s = statistics.median(scans)
    return {
        "templates": n_templates,
        "db_bytes": db_bytes,
        "wal_bytes": wal_bytes,
        "bytes_per_template": round((db_bytes + wal_bytes) / n_templates, 1),
        "insert_ms_per_template": round(insert_s * 1e3 / n_templates, 3),
        "scan_all_ms": round(scan_s * 1e3, 2),
        "decrypt_compare_us": round(scan_s * 1e6 / n_templates, 2),
        "verify_claim_ms": {"p50": round(_pct(warm, 50), 4), "p95": round(_pct(warm, 95), 4)},
        "verify_claim_cold_ms": {"p50": round(_pct(cold, 50), 3), "p95": round(_pct(cold, 95), 3)},
        "claims": n_claims,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge.measure.templates_bench", description=__doc__)
    p.add_argument("--templates", type=int, default=10_000, metavar="N")
    p.add_argument("--claims", type=int, default=1000, metavar="N")
    p.add_argument("--dir", type=Path, help="empty directory for the store (default: a temp dir)")
    p.add_argument("--json", type=Path, metavar="OUT", dest="json_out")
    args = p.parse_args(argv)
    if args.templates < 1 or args.claims < 1:
        p.error("--templates and --claims must be at least 1")
    if args.dir is not None:
        result = run_bench(args.dir, args.templates, args.claims)
    else:
        with tempfile.TemporaryDirectory(prefix="facegate-bench-") as tmp:
            result = run_bench(Path(tmp) / "state", args.templates, args.claims)
    text = json.dumps(result, indent=2, sort_keys=True)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
