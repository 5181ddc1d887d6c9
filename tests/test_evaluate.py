"""COCO AP (pycocotools) on hand-made cases with known answers, and on the real model and photos."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import blazeport
from blazeport.cli import build_parser, main
from blazeport.errors import BlazeportError
from blazeport.evaluate import agreement_with_teacher, coco_ap, evaluate_on_boxes, load_boxes
from blazeport.postprocess import Detection

# pycocotools interpolates precision at the 101 recall points 0.00, 0.01, ..., 1.00
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
SIZE = [(200, 100)]  # one image, width 200, height 100 (not square, so x and y scale differently)
A = (0.10, 0.10, 0.25, 0.40)
B = (0.60, 0.50, 0.20, 0.30)


def det(box: tuple[float, float, float, float], score: float = 0.9) -> Detection:
    return Detection(score, box)


def test_perfect_predictions_score_one() -> None:
    r = coco_ap([[det(A), det(B, 0.7)], [det(B)]], [[A, B], [B]], [(200, 100), (64, 48)])
    assert r["AP50"] == pytest.approx(1.0) and r["AP"] == pytest.approx(1.0) and r["AP75"] == pytest.approx(1.0)
    assert (r["images"], r["references"], r["predictions"]) == (2, 3, 3)


def test_one_of_two_faces_missed() -> None:
    r = coco_ap([[det(A)]], [[A, B]], SIZE)
    # recall 0.5 at precision 1, nothing beyond: precision 1 at the recall points <= 0.5, 0 after
    expected = np.count_nonzero(RECALL_POINTS <= 0.5) / 101
    assert expected == pytest.approx(51 / 101)
    assert r["AP50"] == pytest.approx(expected, abs=1e-12)
    assert r["AR100"] == pytest.approx(0.5)


def test_iou_about_0_6_counts_at_ap50_not_ap75() -> None:
    ref = (0.0, 0.0, 1.0, 1.0)
    pred = (0.0, 0.0, 0.62, 1.0)  # inside the reference: IoU = 0.62
    r = coco_ap([[det(pred)]], [[ref]], [(100, 100)])
    assert r["AP50"] == pytest.approx(1.0)
    assert r["AP75"] == 0.0
    assert r["AP"] == pytest.approx(0.3)  # matched at IoU 0.50, 0.55, 0.60: 3 of the 10 thresholds


def test_no_predictions_is_zero_and_no_references_is_nan() -> None:
    r = coco_ap([[], []], [[A], [B]], SIZE * 2)
    assert r["AP50"] == 0.0 and r["AP"] == 0.0 and r["AP75"] == 0.0 and r["predictions"] == 0
    r = coco_ap([[det(A)]], [[]], SIZE)
    assert math.isnan(r["AP50"]) and math.isnan(r["AP"]) and r["references"] == 0


def test_false_positive_ranked_above_the_true_positive_lowers_ap() -> None:
    fp_first = coco_ap([[det(B, 0.95), det(A, 0.9)]], [[A]], SIZE)
    tp_first = coco_ap([[det(B, 0.5), det(A, 0.9)]], [[A]], SIZE)
    assert tp_first["AP50"] == pytest.approx(1.0)
    # ranked list FP, TP: precision 0 then 0.5 at recall 1; interpolated precision is 0.5 everywhere
    assert fp_first["AP50"] == pytest.approx(0.5)


def test_mismatched_lists_are_refused() -> None:
    with pytest.raises(ValueError, match="one of each per image"):
        coco_ap([[det(A)]], [[A], [B]], SIZE)


@pytest.fixture(scope="module")
def short_range() -> blazeport.Detector:
    return blazeport.load("short_range")


@pytest.fixture(scope="module")
def boxes_json(shared_data: Path) -> Path:
    return shared_data / "faces-boxed" / "boxes.json"


def test_a_detector_agrees_perfectly_with_itself(short_range, astronaut, boxed_photos) -> None:
    images = [astronaut] + [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in boxed_photos[:3]]
    r = agreement_with_teacher(short_range, short_range, images)
    assert r["references"] > 0 and r["predictions"] == r["references"] and r["images"] == 4
    assert r["AP50"] == pytest.approx(1.0) and r["AP"] == pytest.approx(1.0)


def test_short_range_against_the_hand_drawn_boxes(short_range, boxes_json) -> None:
    r = evaluate_on_boxes(short_range, boxes_json.parent / "images", boxes_json)
    assert (r["images"], r["references"], r["skipped"], r["unreadable"], r["missing"]) == (9, 43, 3, 0, 0)
    assert math.isfinite(r["AP50"]) and 0.0 < r["AP50"] < 1.0
    assert 0.0 <= r["AP"] <= r["AP50"]


def test_load_boxes_rejects_a_malformed_file(tmp_path) -> None:
    bad = tmp_path / "boxes.json"
    bad.write_text(json.dumps({"a.jpg": {"width": 10, "height": 10, "boxes_xywh": [[1, 2, 3]]}}))
    with pytest.raises(BlazeportError, match=r"boxes\.json.*a\.jpg"):
        load_boxes(bad)
    bad.write_text("{not json")
    with pytest.raises(BlazeportError, match="not a JSON"):
        load_boxes(bad)
    with pytest.raises(BlazeportError, match="cannot read"):
        load_boxes(tmp_path / "absent.json")


def test_cli_eval_json_on_the_shared_boxes(boxes_json, capsys) -> None:
    code = main(["eval", "--model", "short_range", "--boxes", str(boxes_json), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    r = json.loads(out)
    assert (r["images"], r["references"], r["skipped"], r["threshold"]) == (9, 43, 3, 0.5)
    assert 0.0 < r["AP50"] < 1.0


def test_cli_eval_skips_unreadable_and_unannotated_images(tmp_path, boxes_json, capsys) -> None:
    table = load_boxes(boxes_json)
    names = sorted(table)[:2]
    (tmp_path / "images").mkdir()
    for n in names:
        shutil.copy(boxes_json.parent / "images" / n, tmp_path / "images" / n)
    shutil.copy(boxes_json.parent / "images" / "dogs.jpg", tmp_path / "images" / "dogs.jpg")  # no entry
    (tmp_path / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    subset = {n: table[n] for n in names}
    subset["broken.jpg"] = {"width": 100, "height": 100, "boxes_xywh": [[10, 10, 40, 40]]}
    (tmp_path / "boxes.json").write_text(json.dumps(subset))
    # --images defaults to the boxes file's folder + /images
    code = main(["eval", "--boxes", str(tmp_path / "boxes.json"), "--json", "--threshold", "0.3"])
    out, err = capsys.readouterr()
    assert code == 1  # an unreadable image, and the run still finished
    assert "broken.jpg" in err
    r = json.loads(out)
    assert (r["images"], r["skipped"], r["unreadable"], r["threshold"]) == (2, 2, 1, 0.3)
    assert r["references"] == sum(len(table[n]["boxes_xywh"]) for n in names)


def test_eval_help_exits_zero(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["eval", "--help"])
    assert exc.value.code == 0
    assert "usage: blazeport eval" in capsys.readouterr().out
