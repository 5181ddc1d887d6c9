"""A weights file is data: a student file naming a module imports nothing without the user's word.

The attack this guards against (found by a probe): a student ``.safetensors`` records its backbone as
``module:factory``; loading it used to import ``module`` (with the current folder on ``sys.path``)
before checking anything, so ``blazeport detect photo.jpg --model crafted.safetensors`` run from a
folder holding ``evil.py`` ran ``evil.py``. Every case here writes a marker if the module's code ran.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import blazeport
from blazeport.cli import main
from blazeport.errors import BlazeportError
from blazeport.modelfiles.weights import load_safetensors, save_safetensors
from blazeport.models import build_student
from blazeport.specs import spec_named, student_spec

TINYNET = '''
from torch import nn


class TinyNet(nn.Module):
    """Maps at strides 8 and 16 for short range's head."""

    def __init__(self, width=24):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, width, 3, 8, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(width, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU())

    def forward(self, x):
        a = self.a(x)
        return [a, self.b(a)]


def build(width=24):
    return TinyNet(width)
'''

EVIL = '''
from pathlib import Path

Path({marker!r}).write_text("ran")


def Backbone():
    raise SystemExit("called")
'''


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The current folder holds the user's ``tinynet.py`` and an attacker's ``evil.py``; a directory on
    ``sys.path`` holds an installed-looking package whose ``__main__`` has unguarded top-level code."""
    marker = tmp_path / "MARKER"
    (tmp_path / "tinynet.py").write_text(textwrap.dedent(TINYNET))
    (tmp_path / "evil.py").write_text(EVIL.format(marker=str(marker)))
    site = tmp_path / "site"
    (site / "somepkg").mkdir(parents=True)
    (site / "somepkg" / "__init__.py").write_text("")
    (site / "somepkg" / "__main__.py").write_text(EVIL.format(marker=str(marker)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(site))
    yield tmp_path
    for name in ("tinynet", "evil", "somepkg", "somepkg.__main__", "this"):
        sys.modules.pop(name, None)


def _student_file(folder: Path) -> Path:
    spec = spec_named("short_range")
    torch.manual_seed(0)
    student = build_student("tinynet:build", spec)  # a user's factory with no return annotation
    out = folder / "student.safetensors"
    save_safetensors(student, student_spec(spec, "tinynet:build", student.family, name="sr_tiny"), out)
    sys.modules.pop("tinynet", None)  # as in a fresh process: loading the file is what would import it
    return out


def _naming(good: Path, target: str, out: Path) -> Path:
    """``good`` with its backbone rewritten to name ``target`` (the header edited, the tensors kept)."""
    raw = good.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    config = json.loads(header["__metadata__"]["config"])
    config["backbone"].update(kind="import", name=target, kwargs={})
    header["__metadata__"]["config"] = json.dumps(config)
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 8)
    out.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])
    return out


CRAFTED = [
    ("evil:Backbone", "evil"),  # a module in the current folder
    ("somepkg.__main__:Backbone", "somepkg.__main__"),  # an installed package's unguarded __main__
    ("this:x", "this"),  # a standard-library module whose import prints (the Zen of Python)
    ("os:system", "os"),
]


@pytest.mark.parametrize(("target", "module"), CRAFTED)
def test_a_crafted_file_imports_nothing_without_trust(folder: Path, target: str, module: str, capsys) -> None:
    bad = _naming(_student_file(folder), target, folder / "crafted.safetensors")
    already = set(sys.modules)
    with pytest.raises(BlazeportError) as err:
        load_safetensors(bad)
    message = str(err.value)
    assert message.startswith(f"{bad}: its student backbone is code, {target}")
    assert f"import the module {module!r}" in message and "--trust-code" in message and "trust_code=True" in message
    assert not (folder / "MARKER").exists()
    assert set(sys.modules) - already == set()  # nothing at all was imported
    assert "Beautiful is better than ugly" not in capsys.readouterr().out
    for opener in (lambda: blazeport.load(bad), lambda: blazeport.load_landmarks(detector=bad)):
        with pytest.raises(BlazeportError, match="--trust-code"):
            opener()
    assert not (folder / "MARKER").exists()


def test_the_cli_refuses_a_crafted_file_in_one_line_and_runs_nothing(folder: Path, capsys) -> None:
    bad = _naming(_student_file(folder), "evil:Backbone", folder / "crafted.safetensors")
    photo = folder / "photo.png"
    shutil.copy(blazeport.pipeline.photos.sample_image_path("astronaut"), photo)
    for argv in (["detect", str(photo), "--model", str(bad)],
                 ["landmarks", str(photo), "--detector", str(bad)],
                 ["eval", "--model", str(bad), "--teacher", "short_range", "--images", str(photo)],
                 ["export", str(bad), "--format", "onnx", "-o", str(folder / "x.onnx")]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "import the module 'evil'" in err[0] and "--trust-code" in err[0], (argv, err)
        assert not (folder / "MARKER").exists(), argv
    assert not (folder / "x.onnx").exists()


def test_trust_code_is_needed_for_a_stdlib_module_too_and_still_refuses_it(folder: Path) -> None:
    bad = _naming(_student_file(folder), "os:system", folder / "crafted.safetensors")
    with pytest.raises(BlazeportError, match="os is a standard-library module, not a backbone"):
        load_safetensors(bad, trust_code=True)


def test_with_trust_a_user_module_student_loads_and_detects(folder: Path, astronaut, capsys) -> None:
    good = _student_file(folder)
    with pytest.raises(BlazeportError, match="tinynet"):
        blazeport.load(good)
    assert "tinynet" not in sys.modules
    detector = blazeport.load(good, trust_code=True)
    assert "tinynet" in sys.modules
    assert isinstance(detector.detect(astronaut), list)
    module, spec = load_safetensors(good, trust_code=True)
    assert spec.name == "sr_tiny" and type(module.backbone).__name__ == "TinyNet"
    sys.modules.pop("tinynet", None)
    photo = folder / "photo.png"
    shutil.copy(blazeport.pipeline.photos.sample_image_path("astronaut"), photo)
    capsys.readouterr()
    assert main(["detect", str(photo), "--model", str(good), "--trust-code", "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["image"] == str(photo)


def test_trust_is_per_use_not_remembered(folder: Path) -> None:
    """Trusting one load does not trust the next: the check runs on every open."""
    bad = _naming(_student_file(folder), "evil:Backbone", folder / "crafted.safetensors")
    good = folder / "student.safetensors"
    blazeport.load(good, trust_code=True)
    with pytest.raises(BlazeportError, match="--trust-code"):
        blazeport.load(bad)
    assert not (folder / "MARKER").exists()


def test_a_files_timm_backbone_may_not_name_weights_to_load(folder: Path) -> None:
    good = _student_file(folder)
    raw = good.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    config = json.loads(header["__metadata__"]["config"])
    config["backbone"].update(kind="timm", name="mobilenetv3_small_100", kwargs={"checkpoint": "/tmp/evil.pth"})
    header["__metadata__"]["config"] = json.dumps(config)
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 8)
    bad = folder / "timm.safetensors"
    bad.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])
    with pytest.raises(BlazeportError, match=r"timm\.safetensors: its timm backbone .* names weights to load \(checkpoint\)"):
        load_safetensors(bad)


def test_init_reads_a_files_tensors_without_importing_its_module(folder: Path) -> None:
    """``distill --init`` takes weights from a file: the student is built from the command line's
    --student (trusted), the file is only read, so a module it names is never imported from it."""
    from blazeport.distill.config import init_weights

    good = _student_file(folder)
    bad = _naming(good, "evil:Backbone", folder / "crafted.safetensors")
    spec = spec_named("short_range")
    student = build_student("tinynet:build", spec)
    init_weights(student, str(bad), spec)
    assert not (folder / "MARKER").exists()
    again, _ = load_safetensors(good, trust_code=True)
    for k, v in again.state_dict().items():
        torch.testing.assert_close(student.state_dict()[k], v)


@pytest.mark.slow
def test_distill_takes_an_unannotated_user_factory(folder: Path, shared_data: Path) -> None:
    """``distill --student tinynet:build`` where ``def build(width=24)`` has no annotation: the user typed
    the name, so it is trusted for the run, and the check is that the result is an nn.Module."""
    images = folder / "photos"
    images.mkdir()
    for p in sorted((shared_data / "unlabeled" / "caltech1999_half").glob("*.jpg"))[:8]:
        shutil.copy(p, images / p.name)
    out = folder / "run"
    argv = ["distill", "--images", str(images), "--out", str(out), "--student", "tinynet:build,width=16",
            "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25", "--test-fraction", "0", "--threads", "1",
            "--json"]
    assert main(argv) == 0
    sys.modules.pop("tinynet", None)
    with pytest.raises(BlazeportError, match="--trust-code"):
        blazeport.load(out / "student.safetensors")
    assert isinstance(blazeport.load(out / "student.safetensors", trust_code=True).detect(
        blazeport.pipeline.photos.sample_images(("astronaut",))[0]), list)
