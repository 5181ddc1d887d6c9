"""``blazeport detect VIDEO`` / ``landmarks VIDEO``: JSON Lines per frame, drawn videos written safely, a
folder's videos run as videos, and one message per bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import blazeport
from blazeport.cli import main
from tests.videos import write_video

FACE_FREE = range(15, 25)  # the clip's frames of a photo with no face (tests/videos.py)


def frame_count(path: Path) -> tuple[int, float, int, int]:
    cap = cv2.VideoCapture(str(path))
    return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS), int(cap.get(3)), int(cap.get(4))


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def detector() -> blazeport.Detector:
    return blazeport.load("short_range", backend="tflite", threads=1)


def test_detect_video_prints_a_json_line_per_frame_and_draws_the_video(tmp_path: Path, clip_mkv: Path,
                                                                        clip_bgr: list[np.ndarray], detector, capsys) -> None:
    code = main(["detect", str(clip_mkv), "--backend", "tflite", "--json", "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 0
    rows = lines(out)
    assert [r["frame"] for r in rows] == list(range(40))
    assert all(list(r)[:2] == ["frame", "time_ms"] and (r["video"], r["width"], r["height"]) == (str(clip_mkv), 320, 240)
               for r in rows)
    assert [r["time_ms"] for r in rows] == pytest.approx([i * 1000 / 30 for i in range(40)], abs=0.5)
    expected = [[d.to_dict() for d in detector.detect(cv2.cvtColor(b, cv2.COLOR_BGR2RGB))] for b in clip_bgr]
    assert [r["detections"] for r in rows] == expected  # the same per-face fields and values as on the photos
    assert all(not rows[i]["detections"] for i in FACE_FREE) and sum(len(r["detections"]) for r in rows) >= 40
    assert frame_count(tmp_path / "out" / "clip.mp4") == (40, 30.0, 320, 240)
    assert "1 video(s), 40 frame(s)" in err and "frames/s" in err


def test_a_video_in_a_folder_of_photos_runs_as_a_video(tmp_path: Path, clip_mkv: Path, boxed_photos: list[Path],
                                                       capsys) -> None:
    folder = tmp_path / "holiday"
    folder.mkdir()
    for p in boxed_photos[:2]:
        shutil.copy(p, folder / p.name)
    shutil.copy(clip_mkv, folder / "zclip.mkv")
    (folder / "notes.txt").write_text("not a photo")
    code = main(["detect", str(folder), "--backend", "tflite", "--json", "--out", str(tmp_path / "out")])
    rows = lines(capsys.readouterr().out)
    assert code == 0
    assert [r.get("image") for r in rows[:2]] == [str(folder / p.name) for p in boxed_photos[:2]]
    assert [r["frame"] for r in rows[2:]] == list(range(40)) and rows[2]["video"] == str(folder / "zclip.mkv")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([p.name for p in boxed_photos[:2]] + ["zclip.mp4"])
    assert frame_count(tmp_path / "out" / "zclip.mp4")[0] == 40


def test_a_drawn_video_never_replaces_a_file_or_an_input(tmp_path: Path, clip_mkv: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "clip.mp4").write_bytes(b"someone's video")
    assert main(["detect", str(clip_mkv), "--backend", "tflite", "--out", str(out), "-q"]) == 0
    assert (out / "clip.mp4").read_bytes() == b"someone's video" and frame_count(out / "clip_2.mp4")[0] == 40
    assert main(["detect", str(clip_mkv), "--backend", "tflite", "--out", str(out), "-q", "--overwrite"]) == 0
    assert frame_count(out / "clip.mp4")[0] == 40 and not (out / "clip_3.mp4").exists()
    own = tmp_path / "in"  # a drawing that would land on the input video itself: refused before any work
    own.mkdir()
    shutil.copy(clip_mkv, own / "x.mp4")
    assert main(["detect", str(own / "x.mp4"), "--out", str(own), "--overwrite", "-q"]) == 2
    assert "is an input image" in capsys.readouterr().err and (own / "x.mp4").read_bytes() == clip_mkv.read_bytes()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_a_truncated_video_keeps_its_frames_and_fails_in_one_line(tmp_path: Path, clip_mkv: Path, capsys) -> None:
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(clip_mkv.read_bytes()[: clip_mkv.stat().st_size // 2])
    code = main(["detect", str(cut), "--backend", "tflite", "--json", "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    rows = lines(out)
    assert code == 1 and 5 < len(rows) < 40
    errors = [line for line in err.splitlines() if str(cut) in line and "error" in line]
    assert len(errors) == 1 and "truncated or damaged" in errors[0] and f"the {len(rows)} frame(s)" in errors[0]
    assert frame_count(tmp_path / "out" / "cut.mp4")[0] == len(rows)  # the frames so far, finalized
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["cut.mp4"]


def test_a_crash_of_ours_leaves_no_partial_video(tmp_path: Path, clip_mkv: Path, monkeypatch) -> None:
    import blazeport.cli.detect as detect_cli

    drawn = []

    def failing_draw(image: np.ndarray, dets: list) -> np.ndarray:
        drawn.append(1)
        if len(drawn) == 5:
            raise RuntimeError("a bug of ours")
        return image

    monkeypatch.setattr(detect_cli, "draw_detections", failing_draw)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="a bug of ours"):
        main(["detect", str(clip_mkv), "--backend", "tflite", "--out", str(out), "-q"])
    assert list(out.iterdir()) == []  # neither clip.mp4 nor its temporary file


def test_videos_with_no_frame_are_skipped_and_counted(tmp_path: Path, capsys) -> None:
    zero = tmp_path / "zero.avi"
    cv2.VideoWriter(str(zero), cv2.VideoWriter_fourcc(*"MJPG"), 30, (320, 240)).release()
    (tmp_path / "empty.mp4").write_bytes(b"")
    code = main(["detect", str(zero), str(tmp_path / "empty.mp4"), "--backend", "tflite", "-q"])
    err = capsys.readouterr().err.splitlines()
    assert code == 1
    assert [line.split(":")[0] for line in err] == ["skipped", "skipped"]
    assert "no frame could be decoded" in err[0] and str(tmp_path / "empty.mp4") in err[1]


@pytest.mark.parametrize("source", [["--camera", "97"], ["file:///nonexistent.mp4"], ["rtsp://127.0.0.1:9/"]])
def test_a_camera_or_stream_that_cannot_open_is_one_line(source: list[str], capsys) -> None:
    code = main(["detect", *source, "--backend", "tflite"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("blazeport detect: error: ") and (source[-1] in err[0])


def test_an_image_sequence_on_the_command_line(tmp_path: Path, clip_bgr: list[np.ndarray], capsys) -> None:
    for n in range(6):
        cv2.imwrite(str(tmp_path / f"img_{n:03d}.png"), clip_bgr[n])
    code = main(["detect", str(tmp_path / "img_%03d.png"), "--fps", "12.5", "--backend", "tflite", "--json",
                 "--out", str(tmp_path / "out")])
    rows = lines(capsys.readouterr().out)
    assert code == 0 and [r["time_ms"] for r in rows] == [i * 80.0 for i in range(6)]
    assert frame_count(tmp_path / "out" / "img.mp4")[:2] == (6, 12.5)


def test_smooth_changes_coordinates_not_faces(clip_mkv: Path, capsys) -> None:
    main(["detect", str(clip_mkv), "--backend", "tflite", "--json", "-q"])
    raw = lines(capsys.readouterr().out)
    main(["detect", str(clip_mkv), "--backend", "tflite", "--json", "-q", "--smooth"])
    smooth = lines(capsys.readouterr().out)
    assert [len(r["detections"]) for r in raw] == [len(s["detections"]) for s in smooth]
    assert [[d["score"] for d in r["detections"]] for r in raw] == [[d["score"] for d in s["detections"]] for s in smooth]
    assert sum(r["detections"] != s["detections"] for r, s in zip(raw, smooth, strict=True)) > 10
    assert main(["detect", "--smooth", "--backend", "tflite"]) == 2  # on a photo it means nothing: said
    assert "applies to videos" in capsys.readouterr().err


def test_landmarks_on_video_track_by_default_and_run_every_frame_with_static(tmp_path: Path, clip_bgr: list[np.ndarray],
                                                                             capsys) -> None:
    clip = write_video(tmp_path / "short.mkv", clip_bgr[10:18])  # faces, then none
    code = main(["landmarks", str(clip), "--static", "--backend", "tflite", "--json", "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    rows = lines(out)
    assert code == 0 and [r["frame"] for r in rows] == list(range(8)) and list(rows[0])[:2] == ["frame", "time_ms"]
    landmarker = blazeport.load_landmarks(backend="tflite")
    expected = [[f.to_dict() for f in landmarker.process(cv2.cvtColor(b, cv2.COLOR_BGR2RGB))] for b in clip_bgr[10:18]]
    assert [r["faces"] for r in rows] == json.loads(json.dumps(expected))
    faces = [f for r in rows for f in r["faces"]]
    assert faces and all({"score", "landmarks", "roi", "detection"} <= set(f) and len(f["landmarks"]) == 468 for f in faces)
    assert frame_count(tmp_path / "out" / "short.mp4")[0] == 8
    assert ", static)" in err  # the summary names the mode
    # without --static: MediaPipe's tracking loop, as blazeport.video.tracking runs it on the same frames
    assert main(["landmarks", str(clip), "--backend", "tflite", "--json"]) == 0
    out, err = capsys.readouterr()
    tracked = [r["faces"] for r in lines(out)]
    tracker = blazeport.FaceMeshTracker(blazeport.load_landmarks(backend="tflite"))
    want = [[f.to_dict() for f in tracker.process(cv2.cvtColor(b, cv2.COLOR_BGR2RGB))] for b in clip_bgr[10:18]]
    assert tracked == json.loads(json.dumps(want)) and ", tracking)" in err
    assert any(f["detection"] is None for r in tracked for f in r)  # faces carried from frame to frame
