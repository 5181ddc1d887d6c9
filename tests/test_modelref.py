"""One resolver (blazeport.modelfiles.ref): what a user typed becomes one ModelRef, and every entry point
(load, open_module, convert, bench) takes the spec, family and runtime it gives."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import tflite

import blazeport
from blazeport.errors import BlazeportError
from blazeport.files import _DIGESTS
from blazeport.modelfiles.ref import ModelRef, resolve
from blazeport.modelfiles.runtimes import default_runtime
from blazeport.specs import WEIGHTS_DIR, spec_named

SHORT = WEIGHTS_DIR / "face_detection_short_range.tflite"
STUDENT_TFLITE = WEIGHTS_DIR / "short_range_resnet.tflite"


def test_a_spec_name_or_alias_names_its_spec_and_no_file() -> None:
    ref = resolve("front")  # an alias of short_range
    assert ref.path is None and ref.named is spec_named("short_range") and ref.spec is ref.named
    assert ref.original is None and ref.family == "blazeface" and ref.runtime == default_runtime("front")
    assert ref.file_for("tflite") == SHORT
    assert ref.file_for("torch") == WEIGHTS_DIR / "short_range.safetensors"
    with pytest.raises(BlazeportError, match="blazeport export front --format onnx"):
        ref.file_for("onnx")


def test_an_original_is_known_by_its_bytes_under_any_name(tmp_path: Path) -> None:
    copy = shutil.copy(SHORT, tmp_path / "renamed.tflite")
    ref = resolve(copy)
    assert ref.path == Path(copy) and ref.original is spec_named("short_range") and ref.spec is ref.original
    assert ref.runtime == "tflite" and ref.family == "blazeface" and ref.label == "renamed"
    with pytest.raises(BlazeportError, match="runs on the tflite backend"):
        ref.file_for("onnx")


def test_the_callers_spec_wins_and_an_exported_file_has_none_until_opened() -> None:
    ref = resolve(STUDENT_TFLITE)
    assert ref.original is None and ref.spec is None and ref.given is None  # its spec is in its metadata
    assert resolve(ref, "short_range").spec is spec_named("short_range")
    spec, _, path = blazeport.modelfiles.loader.open_backend(ref, "tflite")
    assert spec.name == "short_range_resnet" and path == STUDENT_TFLITE


def test_names_and_files_it_cannot_take_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BlazeportError, match="no such model file"):
        resolve(tmp_path / "missing.onnx")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(BlazeportError, match=r"notes.txt: not a model file blazeport reads \(.onnx, .pte, .safetensors"):
        resolve(notes)
    with pytest.raises(BlazeportError, match="unknown model spec 'nope'"):
        resolve("nope")
    with pytest.raises(BlazeportError, match="holds no PyTorch weights"):
        ModelRef("m.onnx", Path("m.onnx"), None, None, None, "onnx").file_for("torch")


def test_a_file_is_hashed_once_however_many_entry_points_resolve_it(tmp_path: Path, monkeypatch) -> None:
    copy = Path(shutil.copy(SHORT, tmp_path / "once.tflite"))
    reads = []
    real = Path.read_bytes

    def counting(self: Path) -> bytes:
        if self == copy:
            reads.append(self)
        return real(self)

    _DIGESTS.clear()
    monkeypatch.setattr(Path, "read_bytes", counting)
    resolve(copy)
    resolve(copy)
    blazeport.load(copy, backend="tflite")
    assert len(reads) == 1 + 1  # one hash; LiteRT's backend reads the bytes it runs


def _changed_weights(src: Path, out: Path) -> Path:
    """Google's file with one weight's lowest mantissa byte changed: the same graph, no longer the original."""
    data = bytearray(src.read_bytes())
    model = tflite.Model.GetRootAsModel(bytes(data), 0)
    biggest = max((model.Buffers(i) for i in range(model.BuffersLength())), key=lambda b: b.DataLength())
    weights = biggest.DataAsNumpy().tobytes()
    at = bytes(data).find(weights)
    assert at > 0
    data[at] ^= 1  # little-endian float32: the lowest bit of the first weight
    out.write_bytes(bytes(data))
    return out


def test_convert_takes_the_resolvers_spec_and_refuses_to_guess_one(tmp_path: Path) -> None:
    """An unknown .tflite without stored spec is refused (the input size alone no longer picks one); with
    --spec it converts and verifies."""
    pytest.importorskip("torch")
    from blazeport.convert import ConversionError, convert

    changed = _changed_weights(SHORT, tmp_path / "changed.tflite")
    assert resolve(changed).original is None
    with pytest.raises(ConversionError, match=r"pass --spec NAME .*128px input: .*short_range"):
        convert(changed, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    report = convert(changed, tmp_path / "out.safetensors", spec_named("short_range"))
    assert report["ok"] and report["spec"] == "short_range"
