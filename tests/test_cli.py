"""The console command and the Python API, end to end on the real model and real photos."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import blazeport
from blazeport.cli import build_parser, main
from blazeport.specs import WEIGHTS_DIR

# MediaPipe 0.10.14's FaceDetection(model_selection=0) on skimage's astronaut (measured once).
MEDIAPIPE_ASTRONAUT = {
    "score": 0.9217386841773987,
    "box": [0.34680745, 0.161857769, 0.186218888, 0.1862192],
    "keypoints": [[0.39354578, 0.20487954], [0.48016739, 0.21308003], [0.43052614, 0.24855779],
                  [0.42933598, 0.29025936], [0.34802571, 0.22601373], [0.53163111, 0.24192587]],
}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", ["convert", "detect", "models"])
def test_every_subcommand_has_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([command, "--help"])
    assert exc.value.code == 0
    assert "usage: blazeport " + command in capsys.readouterr().out


def test_detect_default_photo_matches_mediapipe(capsys) -> None:
    code, out, _ = run(capsys, "detect", "--json")
    assert code == 0
    result = json.loads(out)
    assert len(result) == 1 and result[0]["width"] == 512 and result[0]["height"] == 512
    (det,) = result[0]["detections"]
    assert abs(det["score"] - MEDIAPIPE_ASTRONAUT["score"]) < 1e-3
    np.testing.assert_allclose(det["box"], MEDIAPIPE_ASTRONAUT["box"], atol=1e-3)
    np.testing.assert_allclose(det["keypoints"], MEDIAPIPE_ASTRONAUT["keypoints"], atol=1e-3)
    assert det["keypoints"][0][0] < det["keypoints"][1][0]  # subject's right eye is on the image's left


def test_detect_draws_and_skips_unreadable_files(tmp_path, astronaut, capsys) -> None:
    good = tmp_path / "face.png"
    cv2.imwrite(str(good), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "detect", str(bad), str(good), "--out", str(out_dir), "--json")
    assert code == 1  # something was skipped, and the run still finished
    assert "broken.jpg" in err and "skipped" in err
    result = json.loads(out)
    assert [r["image"] for r in result] == [str(good)]
    drawn = cv2.imread(str(out_dir / "face.jpg"))
    assert drawn.shape == astronaut.shape
    assert np.abs(drawn.astype(int) - cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR)).max() > 100  # boxes drawn


def test_grayscale_and_rgba_images_work(tmp_path, astronaut) -> None:
    gray = tmp_path / "gray.png"
    rgba = tmp_path / "rgba.png"
    cv2.imwrite(str(gray), cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY))
    cv2.imwrite(str(rgba), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGRA))
    det = blazeport.load("short_range")
    for path in (gray, rgba):
        faces = det.detect(path)
        assert len(faces) == 1 and faces[0].score > 0.8
    assert len(det.detect(cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY))) == 1  # arrays too


def test_torch_and_tflite_backends_agree_on_real_photos(boxed_photos) -> None:
    torch_det = blazeport.load("short_range", backend="torch")
    tflite_det = blazeport.load("short_range", backend="tflite")
    total = 0
    for path in boxed_photos:
        a, b = torch_det.detect(path), tflite_det.detect(path)
        assert len(a) == len(b), path
        for x, y in zip(a, b, strict=True):
            assert abs(x.score - y.score) < 1e-4
            np.testing.assert_allclose(x.box, y.box, atol=1e-4)
            np.testing.assert_allclose(x.keypoints, y.keypoints, atol=1e-4)
        total += len(a)
    assert total >= 5  # the photos do contain faces the short-range model finds


def test_back_model_detects(astronaut) -> None:
    faces = blazeport.load("back").detect(astronaut)
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].box[:2], MEDIAPIPE_ASTRONAUT["box"][:2], atol=0.03)


def test_user_errors_end_in_one_line(tmp_path, capsys) -> None:
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    code, _, err = run(capsys, "convert", str(empty))
    assert code == 2 and str(empty) in err and "Traceback" not in err
    code, _, err = run(capsys, "detect", "--model", "no_such_model")
    assert code == 2 and "short_range" in err  # lists the known specs
    code, _, err = run(capsys, "detect", str(tmp_path / "nothing_here"))
    assert code == 1 and "nothing_here" in err


@pytest.mark.slow
def test_models_lists_specs(capsys) -> None:
    code, out, _ = run(capsys, "models", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0
    assert rows["short_range"]["anchors"] == 896 and rows["short_range"]["params"] == 101_390
    assert rows["short_range"]["converted"] is True
    # the landmark models after detection (blazeport landmarks), with their outputs instead of anchors
    assert rows["face_landmark"]["kind"] == "landmarks" and rows["face_landmark"]["params"] == 604_685
    assert rows["iris_landmark"]["outputs"] == {"eye_contour": 213, "iris": 15}


def test_runtime_pipeline_needs_no_torch(tmp_path) -> None:
    """Boards with only LiteRT and numpy run the tflite backend: torch must never be imported."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import blazeport, skimage.data\n"
        "faces = blazeport.load('short_range', backend='tflite').detect(skimage.data.astronaut())\n"
        "assert len(faces) == 1, faces\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


@pytest.mark.parametrize(("name", "teacher"), [("short_range_resnet", "short_range"),
                                               ("short_range_resnet_large", "short_range"),
                                               ("full_range_sparse_mobilenet", "full_range_sparse")])
def test_shipped_student_loads_by_name_and_agrees_with_its_teacher(name: str, teacher: str, astronaut, capsys) -> None:
    from blazeport.modelfiles.weights import load_safetensors

    student = blazeport.load(name)
    assert student.spec.architecture == name.removeprefix(f"{teacher}_") and student.spec.teacher == teacher
    assert student.spec.num_anchors == blazeport.load(teacher).spec.num_anchors
    (s,) = student.detect(astronaut)
    (t,) = blazeport.load(teacher).detect(astronaut)
    sx, sy, sw, sh = s.box
    tx, ty, tw, th = t.box
    ix = max(0.0, min(sx + sw, tx + tw) - max(sx, tx))
    iy = max(0.0, min(sy + sh, ty + th) - max(sy, ty))
    # the same face by the criterion distillation is scored with (AP50: IoU > 0.5); measured 0.70 and 0.83
    assert ix * iy / (sw * sh + tw * th - ix * iy) > 0.5
    _, spec = load_safetensors(WEIGHTS_DIR / f"{name}.safetensors")
    assert spec.name == name
    code, out, _ = run(capsys, "detect", "--model", name, "--json")
    assert code == 0 and len(json.loads(out)[0]["detections"]) == 1


def test_detect_skips_images_over_max_pixels(tmp_path, astronaut, capsys) -> None:
    import cv2

    big = tmp_path / "big.png"
    cv2.imwrite(str(big), astronaut)  # 512 x 512 = 262,144 pixels
    code, out, err = run(capsys, "detect", str(big), "--max-pixels", "100000", "--json")
    assert code == 1 and json.loads(out) == [] and "over the limit of 100,000 pixels" in err
    code, out, _ = run(capsys, "detect", str(big), "--max-pixels", "300000", "--json")
    assert code == 0 and len(json.loads(out)[0]["detections"]) == 1


class _FailingStdout:
    """A stdout whose writes (or only its flush) fail as a full disk's or a dead pipe's do."""

    def __init__(self, exc: OSError, on_flush: bool = False) -> None:
        self.exc, self.on_flush, self.text = exc, on_flush, ""

    def write(self, text: str) -> int:
        if not self.on_flush:
            raise self.exc
        self.text += text
        return len(text)

    def flush(self) -> None:
        if self.on_flush and self.text:
            raise self.exc


def test_a_stdout_that_cannot_be_written_ends_in_one_line(monkeypatch, capsys) -> None:
    """``detect --json > full/det.json`` on a full disk ended in an OSError traceback."""
    import errno
    import os

    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(sys, "stdout", _FailingStdout(full))
    assert main(["detect", "--json", "-q"]) == 2
    assert capsys.readouterr().err == "blazeport detect: error: cannot write the output (No space left on device)\n"
    # the last buffered bytes fail only when flushed (at exit, after main returned 0): flushed in main now
    monkeypatch.setattr(sys, "stdout", _FailingStdout(OSError(errno.EIO, os.strerror(errno.EIO)), on_flush=True))
    assert main(["detect", "--json", "-q"]) == 2
    assert capsys.readouterr().err == "blazeport detect: error: cannot write the output (Input/output error)\n"
    monkeypatch.setattr(sys, "stdout", _FailingStdout(BrokenPipeError(errno.EPIPE, "Broken pipe")))
    assert main(["detect", "--json", "-q"]) == 141  # `| head`: quiet, as before
    assert capsys.readouterr().err == ""


def test_an_oserror_that_is_not_the_output_is_not_called_one(monkeypatch, capsys) -> None:
    """Only writes to stdout are "cannot write the output"; a model file on a failing disk is not."""
    import errno

    def failing_load(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/models/cache")

    monkeypatch.setattr("blazeport.cli.detect.load", failing_load)
    with pytest.raises(OSError) as info:
        main(["detect", "--json", "-q"])
    assert info.value.filename == "/models/cache"
    assert "cannot write the output" not in capsys.readouterr().err
    assert type(sys.stdout).__name__ != "_GuardedStdout"  # main put the stream back


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux), a disk that is always full")
def test_json_redirected_to_a_full_disk_exits_2_with_one_line() -> None:
    """The real thing: the console entry point writing into /dev/full (ENOSPC on every write), also
    through the interpreter's exit-time flush (which would print "Exception ignored" and exit 120)."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "blazeport.cli", "detect", "--json", "-q"], stdout=full,
                              stderr=subprocess.PIPE, text=True, cwd=WEIGHTS_DIR.parent)
    assert proc.returncode == 2
    assert proc.stderr == "blazeport detect: error: cannot write the output (No space left on device)\n"
