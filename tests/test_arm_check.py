"""tools/arm_check.py and the modules beside it (arm_sysroot, arm_wheel): the comparison and wheel checks
(fast, no qemu), and the whole check end to end under emulation (slow, opt-in: a full emulated pip install
takes minutes)."""

from __future__ import annotations

import copy
import importlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SHORT_RANGE_TFLITE

arm_check = importlib.import_module("tools.arm_check")
arm_sysroot = importlib.import_module("tools.arm_sysroot")
arm_wheel = importlib.import_module("tools.arm_wheel")


def _face(score: float, x: float) -> dict[str, Any]:
    return {"score": score, "box": [x, 0.2, 0.1, 0.12], "keypoints": [[x + 0.01 * i, 0.25] for i in range(6)]}


def _photos() -> list[dict[str, Any]]:
    return [{"image": "/data/a.jpg", "width": 640, "height": 480, "detections": [_face(0.9, 0.1), _face(0.8, 0.5)]},
            {"image": "/data/b.jpg", "width": 500, "height": 375, "detections": [_face(0.7, 0.3)]},
            {"image": "/data/none.jpg", "width": 300, "height": 200, "detections": []}]


def test_equal_within_tolerance_passes() -> None:
    x86, arm = _photos(), _photos()
    arm[0]["detections"][1]["keypoints"][4][0] += 9e-5
    arm[1]["detections"][0]["score"] -= 5e-5
    result = arm_check.compare(x86, arm)
    assert result.ok, result.problems
    assert result.faces == 3
    assert result.worst == pytest.approx(9e-5, rel=1e-3)
    assert "keypoints[4][0]" in arm_check.format_table(result)


def test_identical_outputs_have_zero_difference() -> None:
    result = arm_check.compare(_photos(), _photos())
    assert result.ok and result.worst == 0.0


def test_difference_over_tolerance_fails_naming_the_photo() -> None:
    x86, arm = _photos(), _photos()
    arm[1]["detections"][0]["box"][2] += 2e-4
    result = arm_check.compare(x86, arm)
    assert not result.ok
    assert len(result.problems) == 1
    assert result.problems[0].startswith("/data/b.jpg: box[2] differs by 0.0002")
    assert "FAIL" in arm_check.format_table(result)


def test_missing_face_fails_naming_the_photo() -> None:
    x86, arm = _photos(), _photos()
    del arm[0]["detections"][1]
    result = arm_check.compare(x86, arm)
    assert result.problems == ["/data/a.jpg: 2 face(s) on x86, 1 on aarch64"]


def test_extra_face_and_missing_photo_fail() -> None:
    x86, arm = _photos(), _photos()
    arm[2]["detections"].append(_face(0.6, 0.4))
    del arm[1]
    problems = arm_check.compare(x86, arm).problems
    assert "/data/b.jpg: missing from the aarch64 output" in problems
    assert "/data/none.jpg: 0 face(s) on x86, 1 on aarch64" in problems


def test_faces_pair_by_closeness_not_order() -> None:
    """Two faces of near-equal score may leave NMS in either order on another platform: still a match."""
    x86 = _photos()
    arm = copy.deepcopy(x86)
    arm[0]["detections"].reverse()
    assert arm_check.compare(x86, arm).ok


def test_report_is_strict_json(tmp_path: Path) -> None:
    """A missing face makes an infinite difference; the report writes it as null, not Infinity."""
    x86, arm = _photos(), _photos()
    del arm[0]["detections"][0]
    result = arm_check.compare(x86, arm)
    out = tmp_path / "report.json"
    arm_check._write_report(out, {"worst": result.worst, "rows": [r.__dict__ for r in result.rows]})
    assert json.loads(out.read_text())["worst"] is None


def test_wheel_problems() -> None:
    requires = ["torch==2.13.0", "numpy>=1.26"]
    names = ["blazeport/__init__.py"]
    default = arm_check.wheel_problems("short_range", "default", requires, names)
    assert len(default) == 2
    assert "torch==2.13.0" in default[0] and "no .tflite model" in default[1]
    # the runtime list does not install torch; a model file needs nothing from the wheel
    assert arm_check.wheel_problems("/w/face_detection_short_range.tflite", "runtime-list", requires, names) == []
    # the wheel the packaging work aims at: no torch, models inside
    assert arm_check.wheel_problems("short_range", "default", ["numpy>=1.26"],
                                    ["blazeport/models/face_detection_short_range.tflite"]) == []


def test_runtime_requirements_take_the_wheels_constraints() -> None:
    requires = ["numpy>=1.26", "ai-edge-litert>=2.0; python_version >= '3.11'", "tqdm>=4.66"]
    assert arm_wheel.runtime_requirements(["numpy", "ai_edge_litert", "flatbuffers"], requires) == [
        "numpy>=1.26", "ai-edge-litert>=2.0", "flatbuffers"]


def test_resolve_packages_follows_depends(monkeypatch: pytest.MonkeyPatch) -> None:
    """First choice of an alternative, virtual packages and SKIP_PACKAGES left out, recursion by level."""
    answers = {
        ("python3.11",): "python3.11\n  Depends: python3.11-minimal\n |Depends: media-types\n  Depends: mime-support\n"
                         "  Depends: <debconf-2.0>\n    debconf\n  Depends: ca-certificates\n",
        ("media-types", "python3.11-minimal"): "python3.11-minimal\n  PreDepends: libc6\nmedia-types\n",
        ("libc6",): "libc6\n  Depends: libgcc-s1\n",
        ("libgcc-s1",): "libgcc-s1\n",
    }

    def fake_run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        names = tuple(cmd[cmd.index("--no-enhances") + 1:])
        return subprocess.CompletedProcess(cmd, 0, answers[names], "")

    monkeypatch.setattr(arm_sysroot, "_run", fake_run)
    assert arm_sysroot.resolve_packages([], roots=["python3.11"]) == [
        "libc6", "libgcc-s1", "media-types", "python3.11", "python3.11-minimal"]


def test_cpuinfo_is_arm() -> None:
    text = arm_sysroot.cpuinfo_text(3)
    assert text.count("processor\t:") == 3
    assert "CPU implementer\t: 0x41" in text and "CPU part\t: 0xd08" in text and "asimd" in text


def test_help() -> None:
    with pytest.raises(SystemExit) as exc:
        arm_check.main(["--help"])
    assert exc.value.code == 0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(arm_check.QEMU) is None or not os.environ.get("BLAZEPORT_ARM_CHECK"),
                    reason="end-to-end aarch64 check under emulation (minutes: an emulated pip install) runs only "
                    f"with {arm_check.QEMU} on PATH and BLAZEPORT_ARM_CHECK=1 (the default install) or "
                    "BLAZEPORT_ARM_CHECK=runtime-list (the wheel --no-deps + the runtime list, the checkout's model)")
def test_arm_check_end_to_end(boxed_photos: list[Path], tmp_path: Path) -> None:
    """The built wheel on aarch64 under qemu gives the x86 detections on real photos. With
    BLAZEPORT_ARM_CHECK=1 this is the issue's criterion (`pip install WHEEL`, the model from the wheel),
    which fails with a setup message while the wheel still depends on torch and carries no models."""
    mode = os.environ["BLAZEPORT_ARM_CHECK"]
    argv = ["--json", str(tmp_path / "arm.json"), "--photos", *map(str, boxed_photos[:4])]
    if mode == "runtime-list":
        argv += ["--deps", "runtime-list", "--model", str(SHORT_RANGE_TFLITE)]
    rc = arm_check.main(argv)
    report = json.loads((tmp_path / "arm.json").read_text())
    assert rc == 0, report["message"]
    assert report["comparison"]["faces"] > 0
    assert report["comparison"]["worst_difference"] <= 1e-4
