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
from blazeport.pipeline.evaluate import agreement_with_teacher, coco_ap, evaluate_on_boxes, load_boxes
from blazeport.pipeline.postprocess import Detection

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


# --------------------------------------------------------------------------- bad boxes files: one clear error each


def _boxes_file(tmp_path: Path, entry: object, text: str | None = None) -> Path:
    path = tmp_path / "boxes.json"
    path.write_text(text if text is not None else json.dumps({"a.jpg": entry}))
    return path


def _entry(box: object = (10, 20, 30, 40), **size: object) -> dict[str, object]:
    return {"width": 200, "height": 100, **size, "boxes_xywh": [[1, 2, 3, 4], list(box) if isinstance(box, tuple) else box]}


def test_load_boxes_keeps_the_real_file_as_it_is(boxes_json: Path) -> None:
    raw = json.loads(boxes_json.read_text())
    table = load_boxes(boxes_json)
    assert list(table) == list(raw)
    for name, entry in raw.items():
        assert table[name] == {**entry, "boxes_xywh": [[float(v) for v in b] for b in entry["boxes_xywh"]]}


def test_load_boxes_accepts_dlib_style_boxes_across_the_border_and_whole_float_sizes(tmp_path: Path) -> None:
    table = load_boxes(_boxes_file(tmp_path, _entry((-12, 70, 40, 45), width=200.0)))
    assert table["a.jpg"]["width"] == 200 and isinstance(table["a.jpg"]["width"], int)
    assert table["a.jpg"]["boxes_xywh"][1] == [-12.0, 70.0, 40.0, 45.0]
    assert load_boxes(_boxes_file(tmp_path, {"boxes_xywh": []}))["a.jpg"]["boxes_xywh"] == []  # no face, no size


@pytest.mark.parametrize("key", ["width", "height"])
@pytest.mark.parametrize("value", [0, -5, 12.5, True, "200", None, 2**31])
def test_load_boxes_rejects_a_bad_image_size(key: str, value: object, tmp_path: Path) -> None:
    path = _boxes_file(tmp_path, _entry(**{key: value}))
    with pytest.raises(BlazeportError, match=rf"boxes\.json: entry 'a\.jpg': {key} must be a whole number of pixels"):
        load_boxes(path)


def test_load_boxes_rejects_a_huge_integer_and_names_the_box(tmp_path: Path) -> None:
    """Over 4300 digits Python's int() raises ValueError inside json; the entry and box must still be named."""
    huge = "9" * 5000
    path = _boxes_file(tmp_path, None, text='{"a.jpg": {"width": 200, "height": 100, "boxes_xywh": [[1, 2, 3, 4], '
                                            f'[{huge}, 2, 3, 4]]}}}}')
    with pytest.raises(BlazeportError, match=r"entry 'a\.jpg', box 1: holds <a 5000-digit integer>, far too large"):
        load_boxes(path)
    path = _boxes_file(tmp_path, None, text=f'{{"a.jpg": {{"width": {huge}, "height": 100, "boxes_xywh": []}}}}')
    with pytest.raises(BlazeportError, match=r"entry 'a\.jpg': width must be .* got <a 5000-digit integer>"):
        load_boxes(path)


def test_load_boxes_rejects_deep_nesting(tmp_path: Path) -> None:
    path = _boxes_file(tmp_path, None, text="[" * 100_000 + "]" * 100_000)  # RecursionError inside json
    with pytest.raises(BlazeportError, match=r"boxes\.json: not a boxes file: its JSON nests deeper"):
        load_boxes(path)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_load_boxes_rejects_non_finite_numbers(value: str, tmp_path: Path) -> None:
    path = _boxes_file(tmp_path, None, text='{"a.jpg": {"width": 200, "height": 100, "boxes_xywh": [[1, 2, 3, 4], '
                                            f'[10, {value}, 30, 40]]}}}}')
    with pytest.raises(BlazeportError, match=r"entry 'a\.jpg', box 1: .* is not finite"):
        load_boxes(path)


@pytest.mark.parametrize("box", [(10, 20, 0, 40), (10, 20, 30, 0), (10, 20, -30, 40), (50, 60, 10, -5)])
def test_load_boxes_rejects_zero_size_and_negative_boxes(box: tuple[int, ...], tmp_path: Path) -> None:
    with pytest.raises(BlazeportError, match=r"entry 'a\.jpg', box 1: .* width or height <= 0"):
        load_boxes(_boxes_file(tmp_path, _entry(box)))


@pytest.mark.parametrize("box", [[True, 20, 30, 40], [10, 20, 30, False], ["10", 20, 30, 40], [10, None, 30, 40],
                                 [10, [20], 30, 40]])
def test_load_boxes_rejects_booleans_strings_and_nulls_as_numbers(box: list[object], tmp_path: Path) -> None:
    with pytest.raises(BlazeportError, match=r"entry 'a\.jpg', box 1: .* is not a number"):
        load_boxes(_boxes_file(tmp_path, _entry(box)))


@pytest.mark.parametrize("box", [(250, 20, 30, 40),  # right of a 200 px wide image
                                 (10, -60, 30, 40),  # above it
                                 (10, 20, 5000, 40),  # reaching 25 image widths past its border
                                 (-300, 20, 310, 40),  # starting more than an image width before it
                                 (1e300, 20, 30, 40)])
def test_load_boxes_rejects_boxes_far_outside_the_image(box: tuple[float, ...], tmp_path: Path) -> None:
    with pytest.raises(BlazeportError, match=r"entry 'a\.jpg', box 1: .* lies outside the 200x100 image"):
        load_boxes(_boxes_file(tmp_path, _entry(box)))


def test_load_boxes_rejects_a_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "boxes.json"
    path.write_bytes(b'{"a.jpg": "\xff\xfe"}')
    with pytest.raises(BlazeportError, match=r"boxes\.json: not a JSON file"):
        load_boxes(path)


def _never_detects() -> blazeport.Detector:
    """A short-range Detector whose backend reports no face anywhere (no model, no torch)."""
    from blazeport.specs import spec_named

    detector = blazeport.Detector(spec_named("short_range"), lambda batch: (None, None))
    n = len(detector.anchors)
    detector.backend = lambda batch: (np.zeros((len(batch), n, 16), np.float32), np.full((len(batch), n, 1), -100, np.float32))
    return detector


def test_evaluate_on_boxes_checks_a_mapping_and_boxes_against_the_image_size(tmp_path: Path) -> None:
    """Without width/height in the entry, a box is checked against the image once it is read."""
    assert cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((100, 200, 3), np.uint8))
    detector = _never_detects()
    r = evaluate_on_boxes(detector, tmp_path, {"a.jpg": {"boxes_xywh": [[10, 20, 30, 40]]}})
    assert (r["images"], r["references"], r["AP50"]) == (1, 1, 0.0)
    with pytest.raises(BlazeportError, match=r"entry 'a\.jpg', box 0: .* lies outside the 200x100 image"):
        evaluate_on_boxes(detector, tmp_path, {"a.jpg": {"boxes_xywh": [[250, 20, 30, 40]]}})
    with pytest.raises(BlazeportError, match=r"entry 'a\.jpg', box 0: .* is not finite"):
        evaluate_on_boxes(detector, tmp_path, {"a.jpg": {"boxes_xywh": [[math.nan, 20, 30, 40]]}})


def test_evaluate_on_boxes_normalizes_by_the_full_size_of_a_reduced_jpeg(tmp_path: Path, monkeypatch) -> None:
    """A big JPEG decoded reduced (here 1600x1200 -> 200x150): boxes are in the file's pixels, not the array's."""
    from blazeport.pipeline import preprocess

    monkeypatch.setattr(preprocess, "REDUCE_ABOVE_PIXELS", 100_000)
    monkeypatch.setattr(preprocess, "REDUCED_MIN_SIDE", 200)
    assert cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((1200, 1600, 3), np.uint8))
    assert preprocess.read_image(tmp_path / "a.jpg").shape == (150, 200, 3)
    r = evaluate_on_boxes(_never_detects(), tmp_path, {"a.jpg": {"boxes_xywh": [[1000, 800, 100, 100]]}})
    assert (r["images"], r["references"], r["unreadable"]) == (1, 1, 0)


def test_evaluate_on_boxes_counts_images_over_max_pixels_as_unreadable(tmp_path: Path) -> None:
    assert cv2.imwrite(str(tmp_path / "a.png"), np.zeros((100, 200, 3), np.uint8))
    r = evaluate_on_boxes(_never_detects(), tmp_path, {"a.png": {"boxes_xywh": [[10, 20, 30, 40]]}}, max_pixels=19_999)
    assert (r["images"], r["skipped"], r["unreadable"]) == (0, 1, 1)
    assert "200x100 is 20,000 pixels, over the limit of 19,999 pixels" in r["messages"][0]


def test_ap_and_found_by_face_width_and_teacher_score() -> None:
    """A student that finds the teacher's large faces and misses its small ones: AP by band says so."""
    from blazeport.pipeline.evaluate import breakdown
    from blazeport.pipeline.postprocess import Detection

    small = [Detection(0.65, (0.1 * i, 0.1, 0.08, 0.08)) for i in range(3)]  # 8% of the width, teacher 0.65
    large = [Detection(0.9, (0.2, 0.4, 0.5, 0.5))]  # 50%, teacher 0.9
    refs = [small, large]
    preds = [[], [Detection(0.8, (0.21, 0.41, 0.5, 0.5))]]  # only the large face, at IoU ~0.92
    out = breakdown(preds, refs, 192)
    width = out["by_face_width"]
    assert width["under_15pct"]["references"] == 3 and width["under_15pct"]["AP50"] == 0.0
    assert width["over_40pct"]["references"] == 1 and width["over_40pct"]["AP50"] == pytest.approx(1.0)
    assert width["15_to_40pct"]["references"] == 0 and math.isnan(width["15_to_40pct"]["AP50"])
    assert out["by_teacher_score"]["0.6-0.7"] == {"faces": 3, "found50": 0}
    assert out["by_teacher_score"]["0.8-1.0"] == {"faces": 1, "found50": 1}
    # the bands do not change the overall figures
    whole = coco_ap(preds, [[d.box for d in r] for r in refs], [(192, 192)] * 2)
    banded = coco_ap(preds, [[d.box for d in r] for r in refs], [(192, 192)] * 2, area_bands={"all2": (0, 1e10)})
    assert banded["AP50"] == whole["AP50"] and banded["by_area"]["all2"]["AP50"] == pytest.approx(whole["AP50"])


def test_breakdown_reads_face_width_in_the_letterboxed_input_frame() -> None:
    """Bands are read in the model's input frame: a 200x100 photo fills a 128x64 strip of the 128 input,
    a 100x200 one a 64x128 strip, and a square face's normalized box says different things in each."""
    from blazeport.pipeline.evaluate import breakdown

    wide_face = Detection(0.9, (0.3, 0.2, 0.3, 0.6))  # 60x60 px in 200x100: 38 px, 30% of the input
    tall_face = Detection(0.9, (0.3, 0.3, 0.25, 0.125))  # 25x25 px in 100x200: 16 px, 12.5% of the input
    for face, frame, band in ((wide_face, (128.0, 64.0), "15_to_40pct"), (tall_face, (64.0, 128.0), "under_15pct")):
        out = breakdown([[face]], [[face]], 128, [frame])
        assert out["by_face_width"][band]["references"] == 1 and out["by_face_width"][band]["AP50"] == pytest.approx(1.0)
    # read as if the photo were square, the portrait's face would land in the wrong band
    assert breakdown([[tall_face]], [[tall_face]], 128)["by_face_width"]["under_15pct"]["references"] == 0


def test_cli_eval_by_size_against_the_teacher(shared_data: Path, capsys) -> None:
    images = sorted((shared_data / "unlabeled" / "human_samples").glob("group-*"))[:4]
    code = main(["eval", "--model", "short_range_resnet", "--teacher", "short_range", "--by-size", "--json", "--images",
                 *map(str, images)])
    report = json.loads(capsys.readouterr().out)
    split = report["breakdown"]
    assert code == 0 and report["references"] > 0
    assert sum(v["references"] for v in split["by_face_width"].values()) == report["references"]
    found = sum(v["found50"] for v in split["by_teacher_score"].values())
    assert sum(v["faces"] for v in split["by_teacher_score"].values()) == report["references"]
    # COCO matches one box per face; the score bands count any overlapping box, so never fewer
    assert report["references"] >= found >= report["found50"] > 0
    code = main(["eval", "--boxes", str(shared_data / "faces-boxed" / "boxes.json"), "--by-size"])
    err = capsys.readouterr().err
    assert code != 0 and "--by-size reads face sizes and scores from the teacher's detections" in err
