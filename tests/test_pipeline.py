"""VisionPipeline end to end on real video frames: observe -> quality -> align + embed."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import require_data

from edge.config import Config, parse_config
from edge.errors import ModelError
from edge.vision.pipeline import VisionPipeline

VIDEOS = "liveness/videos"


@pytest.fixture(scope="module")
def cfg() -> Config:
    return parse_config("")


@pytest.fixture(scope="module")
def pipeline(cfg: Config) -> VisionPipeline:
    return VisionPipeline.from_config(cfg)


def embedding(pipeline: VisionPipeline, video: str, index: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(require_data(f"{VIDEOS}/{video}")))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, bgr = cap.read()
    cap.release()
    assert ok
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    (obs,) = pipeline.observe(image)
    assert obs.landmarks is not None and pipeline.quality(image, obs).ok
    return pipeline.embed(image, obs.landmarks)


def test_embedding_is_a_unit_128_vector(pipeline: VisionPipeline) -> None:
    e = embedding(pipeline, "blink_portrait_24fps.mp4", 40)
    assert e.shape == (128,) and e.dtype == np.float32
    assert float(np.linalg.norm(e)) == pytest.approx(1.0, abs=1e-5)


def test_same_person_matches_across_frames_and_other_people_do_not(
    pipeline: VisionPipeline, cfg: Config
) -> None:
    people = {
        "webcam": [("blink_webcam_7blinks_30fps.mp4", 10), ("blink_webcam_7blinks_30fps.mp4", 250)],
        "portrait": [("blink_portrait_24fps.mp4", 40), ("blink_portrait_24fps.mp4", 300)],
        "headturns": [("live_headturns_30fps.mp4", 0), ("live_headturns_30fps.mp4", 40)],
    }
    emb = {who: [embedding(pipeline, v, i) for v, i in frames] for who, frames in people.items()}
    same = [float(a[0] @ a[1]) for a in emb.values()]
    names = list(emb)
    other = [
        float(emb[x][i] @ emb[y][j])
        for k, x in enumerate(names)
        for y in names[k + 1 :]
        for i in range(2)
        for j in range(2)
    ]
    assert min(same) >= cfg.verify.threshold > max(other)


def test_models_are_hash_checked_when_the_pipeline_loads(tmp_path: Path, cfg: Config) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for f in cfg.models_dir.iterdir():
        if f.is_file():
            (models / f.name).write_bytes(f.read_bytes())
    data = bytearray((models / "face_landmark.tflite").read_bytes())
    data[len(data) // 3] ^= 0x80
    (models / "face_landmark.tflite").write_bytes(bytes(data))
    bad = parse_config(f'[paths]\nmodels_dir = "{models}"\n')
    with pytest.raises(ModelError, match="face_landmark.tflite.*make models"):
        VisionPipeline.from_config(bad, with_embedder=False)
