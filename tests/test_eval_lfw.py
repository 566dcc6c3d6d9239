"""`facegate eval lfw`: pair-list parsing, the metrics, and a small real run end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import require_data
from hypothesis import given
from hypothesis import strategies as st

from edge.errors import DataError
from edge.measure import eval_lfw as ev

FIELDS = {"pairs", "accuracy", "threshold", "auc", "eer", "tar_at_far", "per_pair_ms", "no_face"}


@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4)), min_size=1, max_size=12))
def test_folds_start_at_each_same_block_after_a_different_block(
    blocks: list[tuple[int, int]],
) -> None:
    lines = [f"{len(blocks)}\t4"]
    for f, (n_same, n_diff) in enumerate(blocks):
        lines += [f"P{f}_{i}\t1\t2" for i in range(n_same)]
        lines += [f"A{f}_{i}\t1\tB{f}_{i}\t3" for i in range(n_diff)]
    pairs = ev.read_pairs_text("\n".join(lines) + "\n", "x.txt")
    assert [p.fold for p in pairs] == [f for f, (s, d) in enumerate(blocks) for _ in range(s + d)]
    assert sum(p.same for p in pairs) == sum(s for s, _ in blocks)
    assert pairs[0].a.endswith("_0001")


def test_a_malformed_pair_line_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "pairs.txt"
    bad.write_text("1\t1\nAlice\t1\t2\nAlice\tone\t2\n")
    with pytest.raises(DataError, match="pairs.txt:3"):
        ev.read_pairs(bad)


def test_metrics_of_perfectly_separated_scores() -> None:
    pairs = [ev.Pair(f"a_{i:04d}", f"b_{i:04d}", i < 50, 0) for i in range(100)]
    scores = np.r_[np.linspace(0.8, 0.99, 50), np.linspace(0.0, 0.5, 50)]
    s = ev.summarize(pairs, scores, threshold=0.6, payment_threshold=0.9)
    assert s["accuracy"] == 1.0 and s["auc"] == pytest.approx(1.0) and s["eer"] == 0.0
    assert s["tar_at_far"] == {"1e-3": 1.0, "1e-4": 1.0}
    assert s["payment_far"] == 0.0 and 0.4 < s["payment_tar"] < 0.6  # type: ignore[operator]


def test_a_pair_without_a_face_is_an_error_whatever_its_label() -> None:
    pairs = [ev.Pair("a_0001", "a_0002", True, 0), ev.Pair("a_0001", "b_0001", False, 0)]
    emb = {"a_0001": None, "a_0002": np.ones(128, np.float32), "b_0001": np.ones(128, np.float32)}
    scores = ev.pair_scores(pairs, emb)
    assert np.isnan(scores).all()
    assert ev.accuracy_at(scores, np.array([True, False]), 0.5) == 0.0


def test_best_threshold_sits_in_the_middle_of_the_gap() -> None:
    same = np.array([True] * 3 + [False] * 3)
    thr, acc = ev.best_threshold(np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1]), same)
    assert acc == 1.0 and thr == pytest.approx(0.5)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, object], Path]:
    lfw = require_data("lfw/pairsDevTrain.txt").parent
    out = tmp_path_factory.mktemp("eval")
    cmd = [
        sys.executable,
        "-m",
        "edge",
        "eval",
        "lfw",
        "--pairs",
        str(lfw / "pairsDevTrain.txt"),
        "--images",
        str(lfw / "images"),
        "--limit",
        "8",
        "--json",
        str(out / "r.json"),
        "--plot",
        str(out / "roc.png"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads((out / "r.json").read_text()), out / "roc.png"


def test_small_run_emits_every_json_field(small_run: tuple[int, dict[str, object], Path]) -> None:
    code, result, _ = small_run
    assert set(result) >= FIELDS
    assert result["pairs"] == 8 and result["same_pairs"] == 4
    assert set(result["tar_at_far"]) == {"1e-3", "1e-4"}  # type: ignore[arg-type]
    assert 0.0 <= result["accuracy"] <= 1.0  # type: ignore[operator]
    assert code == (0 if result["accuracy"] >= ev.TARGET_ACCURACY else 1)  # type: ignore[operator]


def test_the_threshold_reported_is_the_shipped_one(
    small_run: tuple[int, dict[str, object], Path],
) -> None:
    from edge.config import load_config

    assert small_run[1]["threshold"] == load_config(None).verify.threshold


def test_small_run_draws_a_roc_png(small_run: tuple[int, dict[str, object], Path]) -> None:
    img = cv2.imread(str(small_run[2]))
    assert img is not None and img.shape[0] > 100 and img.shape[1] > 100


def test_missing_images_folder_is_a_usage_error(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1\t1\nAlice\t1\t2\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge",
            "eval",
            "lfw",
            "--pairs",
            str(pairs),
            "--images",
            str(tmp_path / "nope"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--images" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
