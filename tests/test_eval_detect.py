"""`facegate eval detect`: the DESIGN.md §4 JSON, the §7 target, and clean errors on bad data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require_data

from edge.commands.eval_detect import match, read_boxes
from edge.errors import DataError
from edge.vision.types import FaceBox

Json = dict[str, object]


def facegate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def full_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[int, dict[str, object], dict[str, object]]:
    data = require_data("detection")
    out = tmp_path_factory.mktemp("eval") / "detect.json"
    proc = facegate("eval", "detect", "--data", str(data), "--json", str(out))
    return proc.returncode, json.loads(proc.stdout), json.loads(out.read_text())


def test_json_has_the_contract_fields_and_matches_the_file(full_run) -> None:  # type: ignore[no-untyped-def]
    _, printed, saved = full_run
    assert printed == saved
    for key in ("images", "faces", "recall_iou50", "precision_iou50", "false_positives_no_face"):
        assert key in printed
    assert printed["images"] == 17 and printed["faces"] == 22
    assert set(printed["full_frame"]) >= {"recall_iou50", "false_positives_no_face"}


def test_tiled_detection_meets_the_target_and_exit_code_says_so(full_run) -> None:  # type: ignore[no-untyped-def]
    code, result, _ = full_run
    assert result["recall_iou50"] >= 0.95
    assert result["false_positives_no_face"] <= result["no_face_images"] / 20
    assert result["passed"] is True and code == 0


def test_kiosk_full_frame_mode_is_reported_not_hidden(full_run) -> None:  # type: ignore[no-untyped-def]
    _, result, _ = full_run
    full = result["full_frame"]
    # One inference per frame cannot see ~40 px faces in 500 px photos; it must say so.
    assert full["recall_iou50"] < result["recall_iou50"]
    assert full["false_positives_no_face"] == 0


def test_same_command_works_on_any_folder_of_the_format(tmp_path: Path) -> None:
    src = require_data("detection")
    (tmp_path / "images").mkdir()
    for name in ("two_people.jpg", "noface_skimage_coffee.png"):
        (tmp_path / "images" / name).symlink_to(src / "images" / name)
    rows = [r for r in (src / "boxes.csv").read_text().splitlines() if "two_people" in r]
    (tmp_path / "boxes.csv").write_text("file,x1,y1,x2,y2,ignore\n" + "\n".join(rows) + "\n")
    proc = facegate("eval", "detect", "--data", str(tmp_path))
    result = json.loads(proc.stdout)
    assert (result["images"], result["faces"], result["no_face_images"]) == (2, 2, 1)
    assert result["recall_iou50"] == 1.0 and proc.returncode == 0


def test_missing_or_malformed_data_is_a_one_line_error_exit_2(tmp_path: Path) -> None:
    proc = facegate("eval", "detect", "--data", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "not a folder" in proc.stderr
    (tmp_path / "images").mkdir()
    (tmp_path / "boxes.csv").write_text("file,x1,y1,x2,y2,ignore\nimages/a.jpg,1,2,x,4,0\n")
    proc = facegate("eval", "detect", "--data", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "boxes.csv" in proc.stderr


def test_unreadable_image_is_named_in_the_error(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    (tmp_path / "boxes.csv").write_text("file,x1,y1,x2,y2,ignore\n")
    proc = facegate("eval", "detect", "--data", str(tmp_path))
    assert proc.returncode == 2 and "broken.jpg" in proc.stderr


def test_ignored_faces_are_neither_hits_nor_false_positives() -> None:
    kp = np.zeros((6, 2), np.float32)
    boxes = read_boxes(require_data("detection"))
    gts = boxes["images/dlib_dogs.jpg"]
    assert [g.ignore for g in gts] == [True]
    on_ignored = FaceBox(*gts[0].box, score=0.9, keypoints=kp)
    elsewhere = FaceBox(500, 500, 600, 600, 0.8, kp)
    assert match([on_ignored], gts)[:2] == (0, 0)
    assert match([on_ignored, elsewhere], gts)[:2] == (0, 1)


def test_boxes_naming_an_absent_image_are_refused(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "boxes.csv").write_text("file,x1,y1,x2,y2,ignore\nimages/ghost.jpg,1,2,3,4,0\n")
    with pytest.raises(DataError, match="ghost.jpg"):
        read_boxes(tmp_path)


def test_unwritable_json_path_is_refused_before_any_work(tmp_path: Path) -> None:
    data = require_data("detection")
    proc = facegate("eval", "detect", "--data", str(data), "--json", str(tmp_path / "x" / "d.json"))
    assert proc.returncode == 2 and "--json" in proc.stderr and proc.stdout == ""
