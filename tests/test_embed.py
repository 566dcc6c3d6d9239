"""The int8 embedder on real faces: same person closer than different people, unit norm,
deterministic; a model file with a flipped byte is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import require_data

from edge.config import parse_config
from edge.errors import DataError, ModelError
from edge.vision.align import align_chip, five_points
from edge.vision.embed import Embedder
from edge.vision.models import EMBEDDER, LANDMARKER, MANIFEST, model_path
from edge.vision.pipeline import VisionPipeline

MODELS = Path(__file__).resolve().parent.parent / "models"
# Identities from LFW pairsDevTrain.txt (calibration data, not the evaluated dev pairs):
# two photos each of five people.
PEOPLE = [
    ("Aaron_Peirsol", 1, 2),
    ("Aaron_Peirsol", 3, 4),
    ("Abdullah", 1, 3),
    ("Abdullah_al-Attiyah", 1, 3),
    ("Abel_Pacheco", 1, 4),
]


@pytest.fixture(scope="module")
def pipeline() -> VisionPipeline:
    return VisionPipeline.from_config(parse_config(""))


def lfw_chip(pipe: VisionPipeline, name: str, n: int) -> np.ndarray:
    path = require_data(f"lfw/images/{name}/{name}_{n:04d}.jpg")
    img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    faces = [o for o in pipe.observe(img) if o.landmarks is not None]
    assert faces, f"no face found in {path.name}"
    centre = np.array([img.shape[1], img.shape[0]]) / 2
    obs = min(
        faces,
        key=lambda o: float(
            np.hypot(*(np.array([(o.box.x1 + o.box.x2) / 2, (o.box.y1 + o.box.y2) / 2]) - centre))
        ),
    )
    assert obs.landmarks is not None
    return align_chip(img, five_points(obs.landmarks))


@pytest.fixture(scope="module")
def embeddings(pipeline: VisionPipeline) -> dict[tuple[str, int], np.ndarray]:
    assert pipeline.embedder is not None
    return {
        (name, n): pipeline.embedder.embed(lfw_chip(pipeline, name, n))
        for name, a, b in PEOPLE
        for n in (a, b)
    }


def test_same_person_is_closer_than_any_other_person(
    embeddings: dict[tuple[str, int], np.ndarray],
) -> None:
    for name, a, b in PEOPLE:
        same = float(embeddings[(name, a)] @ embeddings[(name, b)])
        others = [
            float(embeddings[(name, a)] @ v)
            for (other, _), v in embeddings.items()
            if other != name
        ]
        assert same > max(others), (name, same, max(others))


def test_embeddings_are_unit_length_128d_float32(
    embeddings: dict[tuple[str, int], np.ndarray],
) -> None:
    for v in embeddings.values():
        assert v.shape == (128,) and v.dtype == np.float32
        assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-5


def test_embedding_is_deterministic_across_calls_and_instances(pipeline: VisionPipeline) -> None:
    chip = lfw_chip(pipeline, "Aaron_Sorkin", 1)
    first = Embedder(model_path(MODELS, EMBEDDER))
    second = Embedder(model_path(MODELS, EMBEDDER))
    v1, v2, v3 = first.embed(chip), first.embed(chip), second.embed(chip)
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_array_equal(v1, v3)


def test_flip_tta_combines_the_chip_with_its_mirror_image_of_the_same_person(
    pipeline: VisionPipeline, embeddings: dict[tuple[str, int], np.ndarray]
) -> None:
    # (That TTA of a chip equals TTA of its mirror holds by construction, so it is no test.)
    assert pipeline.embedder is not None and pipeline.embedder.flip_tta  # shipped thresholds
    chip = lfw_chip(pipeline, "Aaron_Sorkin", 1)  # a person not in PEOPLE
    plain = Embedder(model_path(MODELS, EMBEDDER), flip_tta=False)
    single, mirrored = plain.embed(chip), plain.embed(np.ascontiguousarray(chip[:, ::-1]))
    tta = Embedder(model_path(MODELS, EMBEDDER)).embed(chip)
    others = list(embeddings.values())
    # The mirror image is the same person: closer to the chip than anybody else is.
    assert float(single @ mirrored) > max(float(single @ o) for o in others)
    # TTA really changes the embedding, and towards the mirror image: it lies between the two,
    # and is closer to the mirrored embedding than to any other person's.
    assert float(tta @ single) < 0.9999
    assert min(float(tta @ single), float(tta @ mirrored)) > float(single @ mirrored)
    assert float(tta @ mirrored) > max(float(tta @ o) for o in others)


def test_embedder_with_a_flipped_byte_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "models"
    d.mkdir()
    for name in (MANIFEST, EMBEDDER):
        shutil.copy(MODELS / name, d / name)
    data = bytearray((d / EMBEDDER).read_bytes())
    data[len(data) // 2] ^= 0x10
    (d / EMBEDDER).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="make models"):
        model_path(d, EMBEDDER)
    with pytest.raises(ModelError, match="does not match"):
        Embedder(d / EMBEDDER)


def test_a_model_that_is_not_the_embedder_is_refused() -> None:
    with pytest.raises(ModelError, match="not the face embedder"):
        Embedder(model_path(MODELS, LANDMARKER))


def test_a_chip_of_the_wrong_shape_or_type_is_a_clear_error() -> None:
    emb = Embedder(model_path(MODELS, EMBEDDER))
    for bad in (
        np.zeros((112, 112, 3), np.uint8),
        np.zeros((150, 150, 3), np.float32),
        np.zeros((150, 150), np.uint8),
    ):
        with pytest.raises(DataError, match="150, 150, 3"):
            emb.embed(bad)
