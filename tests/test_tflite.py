"""blazeport.tflite: reading the bundled models, folding fp16 constants, and clear errors.
Sparse weights (DENSIFY) are tested in ``test_tflite_sparse.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tflite

from blazeport.tflite import TFLiteError, TFLiteModel, read_tflite
from tests.conftest import SHORT_RANGE_TFLITE, WEIGHTS
from tests.tiny_tflite import raw_ops


@pytest.fixture(scope="module")
def short_range() -> TFLiteModel:
    return read_tflite(SHORT_RANGE_TFLITE)


# --------------------------------------------------------------------------- the short-range file


def test_short_range_op_counts(short_range: TFLiteModel) -> None:
    assert short_range.folded == {"DEQUANTIZE": 74}
    assert short_range.op_counts() == {
        "ADD": 16, "CONCATENATION": 2, "CONV_2D": 21, "DEPTHWISE_CONV_2D": 16, "DEQUANTIZE": 74,
        "MAX_POOL_2D": 3, "PAD": 11, "RELU": 17, "RESHAPE": 4,
    }
    # folded ops are gone from the compute graph
    assert not any(op.type in ("DEQUANTIZE", "DENSIFY") for op in short_range.ops)


def test_short_range_inputs_outputs(short_range: TFLiteModel) -> None:
    (inp,) = short_range.inputs
    assert short_range.tensor(inp).shape == (1, 128, 128, 3)
    assert short_range.tensor(inp).dtype == np.float32
    assert short_range.tensor(inp).data is None
    outs = {short_range.tensor(i).name: short_range.tensor(i).shape for i in short_range.outputs}
    assert outs == {"regressors": (1, 896, 16), "classificators": (1, 896, 1)}
    assert short_range.by_name("regressors").index == short_range.outputs[0]
    with pytest.raises(KeyError):
        short_range.by_name("no such tensor")


def test_short_range_op_options(short_range: TFLiteModel) -> None:
    stem = short_range.ops[0]
    assert stem.type == "CONV_2D"
    assert stem.options == {"padding": "SAME", "stride": (2, 2), "dilation": (1, 1), "activation": None}
    assert short_range.tensor(stem.inputs[1]).shape == (24, 5, 5, 3)
    dw = next(op for op in short_range.ops if op.type == "DEPTHWISE_CONV_2D")
    assert dw.options["depth_multiplier"] == 1
    assert dw.options["stride"] == (1, 1)
    strides = sorted(op.options["stride"] for op in short_range.ops if op.type == "DEPTHWISE_CONV_2D")
    assert strides.count((2, 2)) == 3  # 64 -> 32 -> 16 -> 8, each beside a 2x2 max-pool shortcut
    pools = [op for op in short_range.ops if op.type == "MAX_POOL_2D"]
    assert all(p.options["filter"] == (2, 2) and p.options["stride"] == (2, 2) for p in pools)
    assert [op.options["axis"] for op in short_range.ops if op.type == "CONCATENATION"] == [1, 1]


def test_every_conv_weight_is_a_float32_constant(short_range: TFLiteModel) -> None:
    for op in short_range.ops:
        if op.type in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            kernel, bias = (short_range.tensor(i) for i in op.inputs[1:3])
            assert kernel.data is not None and bias.data is not None, op
            assert kernel.data.dtype == np.float32 and bias.data.dtype == np.float32
            assert kernel.data.shape == kernel.shape
            assert np.abs(kernel.data).max() > 0


def test_dequantized_fp16_equals_raw_buffer(short_range: TFLiteModel) -> None:
    model, sg, dequantize = raw_ops(SHORT_RANGE_TFLITE, tflite.BuiltinOperator.DEQUANTIZE)
    assert len(dequantize) == 74
    for op in dequantize:
        src = sg.Tensors(op.Inputs(0))
        assert src.Type() == tflite.TensorType.FLOAT16
        raw = model.Buffers(src.Buffer()).DataAsNumpy().tobytes()
        expected = np.frombuffer(raw, np.float16).astype(np.float32).reshape(tuple(src.ShapeAsNumpy()))
        got = short_range.tensor(op.Outputs(0)).data
        assert got is not None and got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)


# --------------------------------------------------------------------------- errors


def _bad_files() -> dict[str, bytes]:
    good = SHORT_RANGE_TFLITE.read_bytes()
    png = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489") + b"\0" * 64
    return {
        "empty": b"",
        "first-1000-bytes": good[:1000],
        "first-half": good[: len(good) // 2],
        "header-only": good[:8],
        "last-16-bytes-cut": good[:-16],
        "png": png,
        "random-bytes": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "text": b"this is not a model\n" * 50,
        "wrong-identifier": good[:4] + b"TFL2" + good[8:],
        "garbage-with-identifier": b"\xf0\xff\x00\x00TFL3" + bytes(range(256)) * 8,
    }


@pytest.mark.parametrize("kind", list(_bad_files()))
def test_bad_file_raises_tfliteerror_naming_it(kind: str, tmp_path: Path) -> None:
    path = tmp_path / f"{kind}.tflite"
    path.write_bytes(_bad_files()[kind])
    with pytest.raises(TFLiteError) as err:
        read_tflite(path)
    assert str(path) in str(err.value)
    # one clear message, not a chained flatbuffers traceback
    assert err.value.__cause__ is None
    assert err.value.__context__ is None or err.value.__suppress_context__


def test_missing_file_raises_tfliteerror_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "model.tflite"
    with pytest.raises(TFLiteError, match="no such file") as err:
        read_tflite(path)
    assert str(path) in str(err.value)


def test_unreadable_file_says_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A .tflite without read permission: one line naming the file and the reason, from the reader and the CLI."""
    import os

    from blazeport.cli import main
    from blazeport.pipeline.photos import sample_image_path

    path = tmp_path / "locked.tflite"
    path.write_bytes(SHORT_RANGE_TFLITE.read_bytes())
    if os.geteuid() == 0:  # root reads through chmod 000 (as CI does): refuse the read itself
        real = Path.read_bytes

        def denied(self: Path) -> bytes:
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self)

        monkeypatch.setattr(Path, "read_bytes", denied)
    else:
        path.chmod(0)
    try:
        with pytest.raises(TFLiteError) as err:
            read_tflite(path)
        assert str(err.value).startswith(f"{path}: cannot read the file (Permission denied).")
        assert err.value.__cause__ is None and err.value.__suppress_context__
        for argv in (["convert", str(path), "-o", str(tmp_path / "out.safetensors")],
                     ["detect", str(sample_image_path()), "--backend", "tflite", "--model", str(path), "--spec", "short_range"]):
            assert main(argv) == 2
            lines = capsys.readouterr().err.strip().splitlines()
            assert len(lines) == 1 and f"{path}: cannot read the file (Permission denied)" in lines[0], lines
    finally:
        path.chmod(0o644)


def test_specific_messages(tmp_path: Path) -> None:
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    with pytest.raises(TFLiteError, match="empty"):
        read_tflite(empty)
    text = tmp_path / "notes.tflite"
    text.write_text("hello")
    with pytest.raises(TFLiteError, match="not a TFLite flatbuffer"):
        read_tflite(text)
    half = tmp_path / "half.tflite"
    half.write_bytes(SHORT_RANGE_TFLITE.read_bytes()[:1000])
    with pytest.raises(TFLiteError, match="damaged or truncated"):
        read_tflite(half)


# --------------------------------------------------------------------------- the bundled files themselves


def test_bundled_models_match_provenance() -> None:
    """weights/*.tflite are byte-identical to the recorded originals, and the specs agree on the sha256."""
    import tools.fetch_weights as fetch_weights
    from blazeport.specs import SPECS

    assert fetch_weights.check() == []
    for spec in SPECS.values():
        if spec.tflite is not None and spec.sha256 is not None:
            assert fetch_weights.EXPECTED[spec.tflite][1] == spec.sha256, spec.name


def test_fetch_weights_check_catches_a_changed_or_missing_file(tmp_path: Path) -> None:
    import shutil

    import tools.fetch_weights as fetch_weights

    for name in fetch_weights.EXPECTED:
        shutil.copy(WEIGHTS / name, tmp_path / name)
    assert fetch_weights.check(tmp_path) == []
    damaged = tmp_path / "face_detection_back.tflite"
    data = bytearray(damaged.read_bytes())
    data[5000] ^= 1
    damaged.write_bytes(bytes(data))
    (tmp_path / "face_detection_front.tflite").unlink()
    problems = fetch_weights.check(tmp_path)
    assert len(problems) == 2
    assert any("face_detection_back.tflite" in p and "sha256" in p for p in problems)
    assert any("face_detection_front.tflite: missing" in p for p in problems)
    assert fetch_weights.main(["--check", "--dest", str(tmp_path)]) == 1


def test_model_keeps_the_checked_bytes() -> None:
    """``content`` is what the checks passed, for LiteRT's ``model_content`` (no second read of the path)."""
    assert read_tflite(SHORT_RANGE_TFLITE).content == SHORT_RANGE_TFLITE.read_bytes()
