"""The package carries its models: every model a spec names is inside the wheel with its sha256, a
core install runs them without torch from any folder, and nothing writes into an installed package."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import blazeport
from blazeport.cli import main
from blazeport.errors import BlazeportError
from blazeport.modelfiles import bundle
from blazeport.modelfiles.bundle import BUNDLE_DIR, bundled_files, check_bundled, read_manifest
from blazeport.modelfiles.runtimes import default_runtime
from blazeport.specs import LANDMARK_SPECS, SPECS, WEIGHTS_DIR

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import bundle_manifest  # noqa: E402


def _named_files() -> dict[str, str | None]:
    """Every bundled file a spec names -> the sha256 the spec records (None: the manifest's word)."""
    named: dict[str, str | None] = {}
    for spec in (*SPECS.values(), *LANDMARK_SPECS.values()):
        named[f"weights/{spec.name}.safetensors"] = None
        if spec.tflite:
            named[f"weights/{spec.tflite}"] = spec.sha256
        else:  # a student: the verified export a core install runs
            named[f"weights/{spec.name}.tflite"] = None
        if isinstance(spec, type(SPECS["short_range"])):
            named[f"anchors/{spec.name}.npy"] = None
    return named


def test_the_manifest_lists_every_bundled_file_with_its_sha256() -> None:
    assert bundle_manifest.main(["--check"]) == 0  # after re-shipping a model: python tools/bundle_manifest.py
    listed = read_manifest()
    assert set(listed) == {p.relative_to(BUNDLE_DIR).as_posix() for p in bundled_files()}
    for name, sha in _named_files().items():
        assert name in listed, name
        if sha is not None:
            assert listed[name] == sha, name  # Google's bytes, as the spec records them


def test_a_changed_bundled_file_is_refused(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "bundled"
    (root / "weights").mkdir(parents=True)
    shutil.copy(WEIGHTS_DIR / "face_detection_short_range.tflite", root / "weights" / "face_detection_short_range.tflite")
    digest = hashlib.sha256((root / "weights" / "face_detection_short_range.tflite").read_bytes()).hexdigest()
    (root / "SHA256SUMS").write_text(f"{digest}  weights/face_detection_short_range.tflite\n")
    monkeypatch.setattr(bundle, "BUNDLE_DIR", root)
    monkeypatch.setattr(bundle, "MANIFEST", root / "SHA256SUMS")
    good = root / "weights" / "face_detection_short_range.tflite"
    assert check_bundled(good) == good
    data = bytearray(good.read_bytes())
    data[5000] ^= 1
    good.write_bytes(bytes(data))
    with pytest.raises(BlazeportError, match=r"is not the shipped .* Reinstall blazeport"):
        check_bundled(good)
    extra = root / "weights" / "added.tflite"
    extra.write_bytes(b"x")
    with pytest.raises(BlazeportError, match="not in the list of bundled models"):
        check_bundled(extra)


@pytest.mark.slow
def test_without_torch_every_bundled_detector_runs_by_name_on_litert(monkeypatch, astronaut) -> None:
    """The core install: a spec name runs Google's original, a student its bundled export, with the
    same faces as the PyTorch weights (within 1e-4)."""
    with_torch = {name: blazeport.load(name, backend="torch").detect(astronaut) for name in SPECS}
    monkeypatch.setitem(sys.modules, "torch", None)
    for name in SPECS:
        assert default_runtime(name) == "tflite"
        detector = blazeport.load(name)
        assert detector.backend.name == "tflite"
        got, want = detector.detect(astronaut), with_torch[name]
        assert len(got) == len(want), name
        for a, b in zip(got, want, strict=True):
            assert abs(a.score - b.score) < 1e-4 and np.abs(np.subtract(a.box, b.box)).max() < 1e-4, name
    with pytest.raises(BlazeportError, match=r"pip install 'blazeport\[torch\]'"):
        blazeport.load(WEIGHTS_DIR / "short_range.safetensors")


def test_a_command_that_needs_a_missing_extra_says_which_in_one_line(monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    for argv in (["convert", str(WEIGHTS_DIR / "face_detection_short_range.tflite"), "-o", str(tmp_path / "x.safetensors")],
                 ["distill", "--images", str(tmp_path), "--out", str(tmp_path / "run")],
                 ["export", "short_range", "--format", "onnx", "-o", str(tmp_path / "x.onnx")],
                 ["prune", "short_range_resnet", "--ratio", "0.3", "-o", str(tmp_path / "p.safetensors")]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "pip install 'blazeport[torch]'" in err[0], (argv, err)
    assert list(tmp_path.iterdir()) == []
    assert main(["models", "--json"]) == 0  # runs on the bundled graphs
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == {*SPECS, *LANDMARK_SPECS} and all(r["params"] > 0 for r in rows)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of this checkout (the build writes build/ and egg-info: not here)."""
    src = tmp_path_factory.mktemp("src") / "blazeport"
    shutil.copytree(ROOT, src, symlinks=True,
                    ignore=shutil.ignore_patterns(".venv", ".git", "runs", "build", "dist", "*.egg-info", "__pycache__",
                                                  ".pytest_cache", ".ruff_cache", "tests", "tools", "docs"))
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src),
           *(["--no-build-isolation"] if _has_setuptools() else [])]  # offline when the env can build
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    return next(out.glob("blazeport-*.whl"))


def _has_setuptools() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return tuple(int(x) for x in setuptools.__version__.split(".")[:2]) >= (77, 0)


@pytest.mark.slow
def test_the_wheel_carries_every_bundled_file_with_its_sha256(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        listed = read_manifest()
        for name, digest in listed.items():
            member = f"blazeport/bundled/{name}"
            assert member in names, member
            assert hashlib.sha256(z.read(member)).hexdigest() == digest, member
        assert "blazeport/py.typed" in names and "blazeport/bundled/SHA256SUMS" in names
        assert not any(n.startswith(("tests/", "tools/", "weights/")) for n in names)
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert requires and not any("torch" in line for line in requires), requires  # the core install has no torch
    assert f"Version: {blazeport.__version__}" in meta  # one version, from blazeport/version.py


@pytest.mark.slow
def test_the_installed_wheel_detects_from_any_folder_without_torch(wheel: Path, tmp_path: Path) -> None:
    """``pip install blazeport-*.whl``, ``cd`` elsewhere, ``import torch`` failing: ``blazeport detect``
    and ``blazeport.load('short_range').detect`` work, with the clone's detections."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None  # as if torch were not installed\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    photo = elsewhere / "photo.png"
    shutil.copy(BUNDLE_DIR / "photos" / "astronaut.png", photo)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(block)])}
    run = {"cwd": elsewhere, "env": env, "capture_output": True, "text": True, "timeout": 600}
    probe = subprocess.run([sys.executable, "-c", "import blazeport, sys; print(blazeport.__file__); import torch"], **run)
    assert probe.stdout.startswith(str(target)) and "ModuleNotFoundError" in probe.stderr
    cli = subprocess.run([sys.executable, "-m", "blazeport.cli", "detect", "photo.png", "--json", "-q"], **run)
    assert cli.returncode == 0, cli.stderr
    api = subprocess.run([sys.executable, "-c", "import blazeport, json; print(json.dumps([d.to_dict() for d in "
                          "blazeport.load('short_range').detect('photo.png')]))"], **run)
    assert api.returncode == 0, api.stderr
    from_wheel = json.loads(cli.stdout)[0]["detections"]
    assert json.loads(api.stdout) == from_wheel and len(from_wheel) == 1
    clone = [d.to_dict() for d in blazeport.load("short_range", backend="tflite").detect(str(photo))]
    assert from_wheel == clone
    writes = subprocess.run([sys.executable, "-c", "from blazeport.files import check_output, PACKAGE_DIR\n"
                             "check_output(PACKAGE_DIR / 'bundled' / 'weights' / 'x.safetensors')"], **run)
    assert "inside the installed blazeport package" in writes.stderr
    assert not list(target.rglob("x.safetensors"))


def test_convert_takes_a_model_name_for_its_bundled_original(tmp_path: Path, monkeypatch, capsys) -> None:
    """An installed blazeport has no weights/ folder to point at: ``blazeport convert short_range``."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sr.safetensors"
    assert main(["convert", "short_range", "-o", str(out), "--images", str(BUNDLE_DIR / "photos" / "astronaut.png")]) == 0
    assert out.read_bytes() == (WEIGHTS_DIR / "short_range.safetensors").read_bytes()
    assert main(["convert", "short_range_resnet"]) == 2
    assert "distilled, not converted" in capsys.readouterr().err


def test_without_torch_the_refined_mesh_runs_its_bundled_builtin_export(monkeypatch, astronaut) -> None:
    """Google's attention mesh holds custom ops LiteRT has no kernel for; the core install runs the
    verified re-export bundled as face_landmark_with_attention_builtin.tflite, with the torch mesh's
    478 landmarks within 1e-4 (normalized)."""
    want = blazeport.load_landmarks(refine=True, backend="torch").process(astronaut)
    monkeypatch.setitem(sys.modules, "torch", None)
    mesh = blazeport.load_landmarks(refine=True)
    got = mesh.process(astronaut)
    assert mesh.runtime == "tflite" and len(got) == len(want) == 1
    assert got[0].landmarks.shape == (478, 3)
    assert np.abs(got[0].landmarks[:, :2] - want[0].landmarks[:, :2]).max() < 1e-4
