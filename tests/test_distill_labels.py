"""``distill --boxes``: hand-drawn faces beside the teacher (blazeport.distill.labels). Files in blazeport's and
COCO's format, one message for a bad one; boxes follow a sample's geometry and a mosaic; the labels term is alpha
times an SSD loss on labelled samples only, the teacher's terms (1 - alpha) there; a real run logs it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from blazeport.distill.labels import Labels, batch_labels, labels_for, read_labels, transport
from blazeport.distill.loss_terms import LossConfig
from blazeport.distill.losses import DistillLoss
from blazeport.errors import BlazeportError
from blazeport.pipeline.anchors import anchors_for
from blazeport.specs import spec_named

SPEC = spec_named("short_range")


def _write(tmp_path: Path, data: object, name: str = "boxes.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_boxes_json_and_coco_files_read_alike(tmp_path: Path) -> None:
    kps = [30, 40, 50, 40, 40, 50, 40, 60, 22, 45, 58, 45]
    ours = read_labels(_write(tmp_path, {"a.jpg": {"width": 200, "height": 100, "boxes_xywh": [[20, 30, 40, 40]],
                                                   "keypoints_xy": [kps]}, "empty.jpg": {"boxes_xywh": []}}))
    coco = read_labels(_write(tmp_path, {
        "images": [{"id": 7, "file_name": "x/a.jpg", "width": 200, "height": 100},
                   {"id": 8, "file_name": "empty.jpg", "width": 50, "height": 50}],
        "annotations": [{"image_id": 7, "bbox": [20, 30, 40, 40], "category_id": 1,
                         "keypoints": [v for k in range(6) for v in (kps[2 * k], kps[2 * k + 1], 2 if k != 3 else 0)]}]},
        "coco.json"))
    a, b = labels_for(ours["a.jpg"], 0, 0, "a"), labels_for(coco["a.jpg"], 0, 0, "a")
    np.testing.assert_allclose(a.boxes, [[0.1, 0.3, 0.3, 0.7]])
    np.testing.assert_allclose(a.boxes, b.boxes)
    assert np.isnan(b.keypoints[0, 3]).all() and not np.isnan(a.keypoints).any()  # v = 0: that point not labelled
    np.testing.assert_allclose(np.delete(a.keypoints, 3, 1), np.delete(b.keypoints, 3, 1))
    assert len(labels_for(coco["empty.jpg"], 0, 0, "e")) == 0 and len(labels_for(ours["empty.jpg"], 50, 50, "e")) == 0


@pytest.mark.parametrize(("data", "message"), [
    ("not json", "not a JSON file"),
    ({"a.jpg": {"width": 100, "height": 100, "boxes_xywh": [[500, 10, 20, 20]]}}, r"entry 'a.jpg', box 0.*outside"),
    ({"a.jpg": {"boxes_xywh": [[1, 1, 5, 5]], "keypoints_xy": [[1, 2, 3]]}}, r"entry 'a.jpg', box 0: keypoints must be 12"),
    ({"images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
      "annotations": [{"image_id": 2, "bbox": [1, 1, 2, 2]}]}, r"annotations\[0\] names no image"),
    ([1, 2], "expected blazeport's boxes.json"),
])
def test_a_bad_boxes_file_is_one_message_before_anything_runs(data: object, message: str, photos: Path,
                                                              tmp_path: Path) -> None:
    from blazeport.distill.trainer import train
    from tests.conftest import small_run

    path = tmp_path / "bad.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(BlazeportError, match=message):
        train(small_run(photos, tmp_path / "run", boxes=str(path)))
    assert not (tmp_path / "run").exists()


def test_boxes_follow_the_samples_flip_with_keypoints_in_the_subjects_order() -> None:
    labels = Labels(np.float32([[0.2, 0.4, 0.4, 0.6]]), np.float32([[[0.25, 0.45], [0.35, 0.45], [0.3, 0.5],
                                                                      [0.3, 0.55], [0.21, 0.47], [0.39, 0.47]]]))
    mirror = np.array([[-1.0, 0, 128], [0, 1, 0], [0, 0, 1]]) @ np.diag([128 / 200, 128 / 200, 1.0])  # 200x200 photo
    (out,) = transport(labels, 200, 200, mirror)
    np.testing.assert_allclose(out[:4], [128 - 0.4 * 128, 0.4 * 128, 128 - 0.2 * 128, 0.6 * 128], atol=1e-4)
    kx = out[4::2]
    assert kx[0] < kx[1] and kx[4] < kx[5]  # after the mirror the subject's right eye / ear is again the smaller x
    np.testing.assert_allclose(kx[0], 128 - 0.35 * 128, atol=1e-4)


def test_a_mosaic_carries_its_tiles_faces_only_when_every_tile_is_labelled() -> None:
    face = torch.tensor([[16.0, 32, 48, 64, *([40.0, 50.0] * 6)]])
    faces = (face.numpy(), None, np.zeros((0, 16), np.float32))
    out = batch_labels(faces, {1: [0, 0, 2, 0], 2: [0, 1, 0, 0]}, 128, torch.device("cpu"))
    assert out[0] is not None and out[2] is None  # slot 2 has an unlabelled tile: no labels
    np.testing.assert_allclose(out[1][:, :4].numpy(), [[8, 16, 24, 32], [72, 16, 88, 32], [72, 80, 88, 96]])


def _loss(alpha: float | None) -> DistillLoss:
    return DistillLoss(LossConfig.parse("recipe"), anchors_for(SPEC), SPEC, labels_alpha=alpha)


def test_the_labels_term_is_alpha_times_an_ssd_loss_on_labelled_samples_and_zero_elsewhere() -> None:
    torch.manual_seed(0)
    n = len(anchors_for(SPEC))
    student = (torch.randn(2, n, 16), torch.randn(2, n, 1))
    teacher = (torch.randn(2, n, 16), torch.randn(2, n, 1))
    face = torch.tensor([[30.0, 40, 70, 80, *([float("nan")] * 12)]])
    mixed = _loss(0.5)(student, teacher, labels=[face, None])
    alone = _loss(0.5)(tuple(t[:1] for t in student), tuple(t[:1] for t in teacher), labels=[face])
    assert alone["labels"] > 0
    assert mixed["labels"].item() == pytest.approx(alone["labels"].item() / 2)  # the unlabelled sample adds nothing
    none = _loss(0.5)(student, teacher, labels=[None, None])
    plain = _loss(None)(student, teacher)
    assert none["labels"].item() == 0.0 and none["total"].item() == pytest.approx(plain["total"].item(), rel=1e-6)
    # the labelled sample weighs the teacher's terms by 1 - alpha, the other by 1
    only_second = _loss(None)(tuple(t[1:] for t in student), tuple(t[1:] for t in teacher))["kl"]
    only_first = _loss(None)(tuple(t[:1] for t in student), tuple(t[:1] for t in teacher))["kl"]
    assert mixed["kl"].item() == pytest.approx((0.5 * only_first + only_second).item() / 2, rel=1e-5)


@pytest.fixture(scope="module")
def boxed_folder(tmp_path_factory, boxed_photos: list[Path]) -> Path:
    folder = tmp_path_factory.mktemp("boxed")
    for p in boxed_photos:
        shutil.copy(p, folder / p.name)
    return folder


@pytest.mark.slow
def test_a_real_run_logs_the_labels_term_for_photos_with_boxes_and_zero_without(boxed_folder: Path, photos: Path,
                                                                               shared_data: Path, tmp_path: Path) -> None:
    from blazeport.distill.trainer import train
    from tests.conftest import small_run

    boxes = shared_data / "faces-boxed" / "boxes.json"
    common = dict(boxes=str(boxes), batch_size=4, limit=None, val_fraction=0.2, epochs=2, augment="mosaic=0.3,ns_turn=0.3")
    labelled = train(small_run(boxed_folder, tmp_path / "with", **common))
    history = json.loads((tmp_path / "with" / "metrics.json").read_text())
    assert all(h["train_labels"] > 0 for h in history) and labelled["images"]["train"] >= 6
    # photos none of which has an entry (the folder's 8 unlabeled photos): the term is logged, and zero
    train(small_run(photos, tmp_path / "without", **common))
    assert [h["train_labels"] for h in json.loads((tmp_path / "without" / "metrics.json").read_text())] == [0.0, 0.0]
