"""``blazeport detect DIR --batch N --workers K``: read-ahead and batching change the speed, never the answer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import blazeport
from blazeport.cli import build_parser, main
from blazeport.pipeline.folder import FolderStats, detect_folder, read_ahead
from blazeport.pipeline.photos import list_images
from blazeport.pipeline.preprocess import ImageReadError, read_image_sized


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, boxed_photos: list[Path]) -> Path:
    """The 12 real photos of faces-boxed plus one unreadable file in the middle of the order."""
    folder = tmp_path_factory.mktemp("photos")
    for p in boxed_photos:
        shutil.copy(p, folder / p.name)
    (folder / "2008_000000_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def one_by_one(detector: blazeport.Detector, paths: list[Path]) -> tuple[list[dict], int]:
    """The loop ``detect`` ran before the pipeline: decode, then detect, one image at a time."""
    results, skipped = [], 0
    for path in paths:
        try:
            image, (w, h) = read_image_sized(path)
        except ImageReadError:
            skipped += 1
            continue
        results.append({"image": str(path), "width": w, "height": h,
                        "detections": [d.to_dict() for d in detector.detect(image)]})
    return results, skipped


def test_batched_read_ahead_cli_matches_the_one_by_one_loop(photo_folder: Path, capsys) -> None:
    paths = list_images([photo_folder])
    expected, skipped = one_by_one(blazeport.load("short_range"), paths)
    assert skipped == 1 and len(expected) == 12 and sum(len(r["detections"]) for r in expected) >= 5
    code = main(["detect", str(photo_folder), "--batch", "8", "--workers", "3", "--json"])
    out, err = capsys.readouterr()
    assert code == 1  # something was skipped: same exit code as the one-by-one loop
    assert json.loads(out) == expected  # same images, same order, same values
    assert "2008_000000_broken.jpg" in err and "1 skipped" in err


def test_pipeline_keeps_order_and_counts(photo_folder: Path) -> None:
    paths = list_images([photo_folder])
    detector = blazeport.load("short_range", backend="tflite", threads=1)
    stats = FolderStats()
    items = list(detect_folder(detector, paths, batch=5, workers=2, stats=stats))
    assert [d.path for d, _ in items] == paths
    assert [dets is None for _, dets in items] == [d.error is not None for d, _ in items]
    assert (stats.images, stats.skipped, stats.batches) == (12, 1, 3)  # 5 + 5 + 2 readable images
    assert stats.read_s > 0 and stats.detect_s > 0 and stats.wall_s > 0
    # the inline reader (workers=0) and the threaded one decode the same pixels, in the same order
    inline = [d.size for d in read_ahead(paths, workers=0)]
    assert inline == [d.size for d, _ in items]


def test_detect_help_lists_batch_and_workers(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["detect", "--help"])
    text = capsys.readouterr().out
    assert "--batch" in text and "--workers" in text


def test_bench_folder_reports_rates_and_the_ratio_to_mediapipe(tmp_path, boxed_photos: list[Path]) -> None:
    from blazeport.bench.mediapipe import find_mediapipe_python
    from blazeport.cli.bench import main as bench_main
    from blazeport.specs import WEIGHTS_DIR

    folder = tmp_path / "three"
    folder.mkdir()
    for p in boxed_photos[:3]:
        shutil.copy(p, folder / p.name)
    out = tmp_path / "folder.json"
    code = bench_main([str(WEIGHTS_DIR / "face_detection_short_range.tflite"), "--backend", "tflite-original", "--folder",
                       str(folder), "--limit", "2", "--workers", "1", "--rounds", "2", "--json", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())["results"]
    ours = [r for r in rows if r["backend"] == "tflite-original"]
    assert len(ours) == 1 and ours[0]["images"] == 2 and ours[0]["images_per_s"] > 0
    assert 0 < ours[0]["decode_share"] < 1
    assert ours[0]["detector_images_per_s"] == pytest.approx(2 / ours[0]["detect_s"], rel=0.02)  # detect_s is rounded
    assert ours[0]["rounds"] == 2 and len(ours[0]["images_per_s_rounds"]) == 2
    if find_mediapipe_python(None)[0] is None:
        pytest.skip("mediapipe is not importable here: no MediaPipe rows to compare with")
    mp = [r for r in rows if r["backend"] == "mediapipe"]
    assert sorted(r["workers"] for r in mp) == [0, 1] and all(r["images_per_s"] > 0 for r in mp)
    same = next(r for r in mp if r["workers"] == 1)
    assert ours[0]["vs_mediapipe"] == pytest.approx(ours[0]["images_per_s"] / same["images_per_s"])
    assert ours[0]["faces"] == same["faces"]  # the same files, the same model: the same number of faces


def test_fast_decode_reads_big_jpegs_reduced_and_keeps_the_faces(shared_data: Path) -> None:
    """--fast-decode: a 2280x1588 JPEG decodes at 1/8 (long side 285 >= 2 x 128), the file's size is
    still reported, PNGs decode in full; the same faces are found, close to the full decode's."""
    from blazeport.modelfiles.verify import match_detections

    big = shared_data / "unlabeled" / "deepface_tests" / "couple.jpg"
    full, size = read_image_sized(big)
    small, small_size = read_image_sized(big, reduce_to=256)
    assert size == small_size == (2280, 1588) and full.shape == (1588, 2280, 3)
    assert small.shape == (199, 285, 3)  # ceil(side / 8)
    png = shared_data / "unlabeled" / "blazeface_pytorch" / "3faces.png"
    assert read_image_sized(png, reduce_to=64)[0].shape == read_image_sized(png)[0].shape
    detector = blazeport.load("short_range", backend="tflite", threads=1)
    exact = [d for _, d in detect_folder(detector, [big, png], workers=0)]
    fast = [d for _, d in detect_folder(detector, [big, png], workers=0, fast_decode=True)]
    m = match_detections(fast, exact)
    assert m["same_count"] and m["faces"] >= 4
    assert m["max_coordinate_diff"] < 0.02 and m["max_score_diff"] < 0.05
    assert fast[1] == exact[1]  # the PNG is decoded in full either way


def test_detect_cli_fast_decode_and_inline_reader(photo_folder: Path, capsys) -> None:
    code = main(["detect", str(photo_folder), "--workers", "0", "--fast-decode", "--postprocess", "numpy", "--json"])
    out, err = capsys.readouterr()
    assert code == 1 and "1 skipped" in err  # the broken file, as with the threaded reader
    assert len(json.loads(out)) == 12


def test_fast_decode_effect_pairs_each_fast_row_with_its_exact_row() -> None:
    from blazeport.bench.folder import _fast_decode_effects

    face = {"score": 0.9, "box": [0.1, 0.1, 0.2, 0.2], "keypoints": [[0.15, 0.15]]}
    moved = {**face, "score": 0.88, "box": [0.11, 0.1, 0.2, 0.2]}
    base = {"model": "m", "backend": "tflite", "path": "f", "threads": 1, "batch": 1}
    rows = [{**base, "fast_decode": False, "images_per_s": 100.0, "detections": [[face], [], None]},
            {**base, "fast_decode": True, "images_per_s": 125.0, "detections": [[moved], [face], None]}]
    _fast_decode_effects(rows)
    e = rows[1]["fast_decode_effect"]
    assert e["speedup"] == pytest.approx(1.25) and e["images_same_count"] == 2 and e["images"] == 3
    assert e["max_score_diff"] == pytest.approx(0.02) and e["max_coordinate_diff"] == pytest.approx(0.01)
    assert "fast_decode_effect" not in rows[0] and all("detections" not in r for r in rows)


@pytest.mark.parametrize(("flags", "named"), [(["--folder", ".", "--e2e"], "--e2e"), (["--folder", ".", "--plot", "x.png"],
                                                "--plot"), (["short_range", "--fast-decode"], "--fast-decode")])
def test_bench_refuses_flags_that_do_not_apply(flags: list[str], named: str, capsys) -> None:
    assert main(["bench", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0]


def test_a_broken_symlink_in_a_folder_is_skipped_counted_and_named(tmp_path: Path, capsys) -> None:
    """A dangling symlink was dropped by list_images (``is_file()`` is False for it): neither read nor
    counted, so a folder with a vanished photo looked complete."""
    from blazeport.pipeline.photos import sample_image_path

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(sample_image_path("astronaut"), folder / "astronaut.png")
    gone = folder / "gone.jpg"
    gone.symlink_to(tmp_path / "moved_away.jpg")
    assert list_images([folder]) == [folder / "astronaut.png", gone]
    with pytest.raises(ImageReadError, match=r"gone\.jpg: broken symlink \(its target .*moved_away\.jpg does not exist\)"):
        read_image_sized(gone)
    for command in (["detect"], ["landmarks"]):
        assert main([*command, str(folder), "--json"]) == 1  # something was skipped; the run finished
        out, err = capsys.readouterr()
        assert [r["image"] for r in json.loads(out)] == [str(folder / "astronaut.png")]
        assert f"skipped: {gone}: broken symlink" in err and "1 image(s), 1 face(s), 1 skipped" in err
    assert main(["eval", "--teacher", "short_range", "--images", str(folder), "--json"]) == 1
    out, err = capsys.readouterr()
    r = json.loads(out)
    assert (r["images"], r["skipped"], r["unreadable"]) == (1, 1, 1) and f"skipped: {gone}: broken symlink" in err
