"""tools/changed_photos.py: a change that moves faces moves the truth with them; the report is written whole."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from blazeport.pipeline.postprocess import Detection
from tools.changed_photos import CHANGES, _params, carry, change_photo, main


@pytest.mark.parametrize("name", ["flip", "turn", "half", "crop", "tilt"])
def test_a_change_that_moves_faces_moves_the_truth_onto_them(name: str) -> None:
    photo = np.zeros((300, 400, 3), np.uint8)
    photo[90:150, 160:220] = 255  # a bright "face": x 0.4-0.55, y 0.3-0.5
    truth = [Detection(0.9, (160 / 400, 90 / 300, 60 / 400, 60 / 300))]
    for seed in range(6):
        rng = np.random.default_rng(seed)
        params = _params(name, CHANGES[name], rng)
        if name == "crop":
            params.update(u=0.45, v=0.25)  # a window that keeps the face
        changed, m = change_photo(photo, name, params, rng, 128)
        (box,) = carry(truth, m)
        h, w = changed.shape[:2]
        ys, xs = np.nonzero(changed[..., 0] > 128)
        found = (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)
        expect = (box[0], box[1], box[0] + box[2], box[1] + box[3])
        assert np.allclose(found, expect, atol=0.02), (name, params, found, expect)


def test_a_face_cropped_out_of_the_picture_no_longer_counts() -> None:
    photo = np.zeros((200, 200, 3), np.uint8)
    truth = [Detection(0.9, (0.02, 0.02, 0.1, 0.1)), Detection(0.9, (0.6, 0.6, 0.1, 0.1))]
    _, m = change_photo(photo, "crop", {"zoom": 1.6, "u": 1.0, "v": 1.0}, np.random.default_rng(0), 128)
    assert len(carry(truth, m)) == 1


def test_the_report_scores_the_teacher_against_itself_on_clean_photos(boxed_photos: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in boxed_photos[:2]:
        shutil.copy(p, folder / p.name)
    assert main(["--images", str(folder), "--changes", "dark", "turn", "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "changed_photos.json").read_text())
    rows = report["changes"]
    assert report["images"] == 2 and rows["clean"]["faces"] == report["teacher_faces_clean"] > 0
    assert rows["clean"]["short_range"]["AP50"] == 1.0  # the truth is the teacher on the clean photo
    assert rows["turn"]["faces"] == rows["clean"]["faces"]  # a turn keeps every face in the picture
    assert "| dark | dark(gamma=2, gain=0.4, noise=5) |" in (tmp_path / "out" / "changed_photos.md").read_text()
