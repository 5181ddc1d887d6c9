"""blazeport.tflite: reading the bundled models, folding fp16/sparse constants, and clear errors.

The sparse cases are built by hand as tiny ``.tflite`` flatbuffers (with the ``tflite`` package's
generated builders) so each densification path (plain CSR, a non-identity traversal order, 2x2
blocks) is checked against a dense matrix written out by hand, and against LiteRT's own DENSIFY.
"""

from __future__ import annotations

from pathlib import Path

import flatbuffers
import numpy as np
import pytest
import tflite

from blazeport.tflite import TFLiteError, TFLiteModel, read_tflite
from tests.conftest import SHORT_RANGE_TFLITE, WEIGHTS

SPARSE_TFLITE = WEIGHTS / "face_detection_full_range_sparse.tflite"


@pytest.fixture(scope="module")
def short_range() -> TFLiteModel:
    return read_tflite(SHORT_RANGE_TFLITE)


@pytest.fixture(scope="module")
def sparse() -> TFLiteModel:
    return read_tflite(SPARSE_TFLITE)


def _raw_ops(path: Path, op: int) -> tuple[tflite.Model, tflite.SubGraph, list[tflite.Operator]]:
    """The flatbuffer itself (no blazeport code) and its ops of builtin type ``op``."""
    model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    sg = model.Subgraphs(0)
    ops = []
    for i in range(sg.OperatorsLength()):
        raw = sg.Operators(i)
        code = model.OperatorCodes(raw.OpcodeIndex())
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) == op:
            ops.append(raw)
    return model, sg, ops


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
    model, sg, dequantize = _raw_ops(SHORT_RANGE_TFLITE, tflite.BuiltinOperator.DEQUANTIZE)
    assert len(dequantize) == 74
    for op in dequantize:
        src = sg.Tensors(op.Inputs(0))
        assert src.Type() == tflite.TensorType.FLOAT16
        raw = model.Buffers(src.Buffer()).DataAsNumpy().tobytes()
        expected = np.frombuffer(raw, np.float16).astype(np.float32).reshape(tuple(src.ShapeAsNumpy()))
        got = short_range.tensor(op.Outputs(0)).data
        assert got is not None and got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)


# --------------------------------------------------------------------------- the sparse full-range file


def test_sparse_file_reads_with_46_densify_folded(sparse: TFLiteModel) -> None:
    assert sparse.folded["DENSIFY"] == 46
    assert sparse.folded["DEQUANTIZE"] == 182
    counts = sparse.op_counts()
    assert counts["DEPTH_TO_SPACE"] == 2 and counts["RESIZE_BILINEAR"] == 3
    assert not any(op.type in ("DEQUANTIZE", "DENSIFY") for op in sparse.ops)
    (inp,) = sparse.inputs
    assert sparse.tensor(inp).shape == (1, 192, 192, 3)
    assert sorted(sparse.tensor(i).shape for i in sparse.outputs) == [(1, 2304, 1), (1, 2304, 16)]


def test_sparse_file_densified_shapes_and_sparsity(sparse: TFLiteModel) -> None:
    model, sg, densify = _raw_ops(SPARSE_TFLITE, tflite.BuiltinOperator.DENSIFY)
    assert len(densify) == 46
    for op in densify:
        src = sg.Tensors(op.Inputs(0))
        stored = model.Buffers(src.Buffer()).DataLength() // 2  # fp16 values actually stored
        t = sparse.tensor(op.Inputs(0))
        assert t.sparse
        assert t.data.shape == t.shape == tuple(src.ShapeAsNumpy())
        assert t.data.size > stored  # it was really expanded
        assert np.count_nonzero(t.data) == stored  # every stored value landed somewhere distinct
        assert 0.5 < 1 - stored / t.data.size < 0.9  # the file is ~70% sparse
        np.testing.assert_array_equal(sparse.tensor(op.Outputs(0)).data, t.data)
    # the 1x1 convs then see float32 dense kernels through the DEQUANTIZE that follows
    convs = [op for op in sparse.ops if op.type == "CONV_2D"]
    assert all(sparse.tensor(op.inputs[1]).data.dtype == np.float32 for op in convs)


def test_sparse_file_densify_matches_litert(sparse: TFLiteModel) -> None:
    interp = pytest.importorskip("ai_edge_litert.interpreter")
    it = interp.Interpreter(
        model_path=str(SPARSE_TFLITE),
        experimental_op_resolver_type=interp.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        experimental_preserve_all_tensors=True,
    )
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], np.zeros((1, 192, 192, 3), np.float32))
    it.invoke()
    _, _, densify = _raw_ops(SPARSE_TFLITE, tflite.BuiltinOperator.DENSIFY)
    for op in densify:
        np.testing.assert_array_equal(sparse.tensor(op.Outputs(0)).data, it.get_tensor(op.Outputs(0)))


# --------------------------------------------------------------------------- hand-made sparse models


def _index_vector(b: flatbuffers.Builder, values: list[int]) -> int:
    vec = b.CreateNumpyVector(np.asarray(values, np.uint8))
    tflite.Uint8VectorStart(b)
    tflite.Uint8VectorAddValues(b, vec)
    return tflite.Uint8VectorEnd(b)


def _table_vector(b: flatbuffers.Builder, start: object, offsets: list[int]) -> int:
    start(b, len(offsets))  # type: ignore[operator]
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _sparsity(b: flatbuffers.Builder, order: list[int], block_map: list[int], levels: list[tuple]) -> int:
    dims = []
    for level in levels:
        if level[0] == "dense":
            tflite.DimensionMetadataStart(b)
            tflite.DimensionMetadataAddFormat(b, tflite.DimensionType.DENSE)
            tflite.DimensionMetadataAddDenseSize(b, level[1])
        else:
            segments, indices = _index_vector(b, level[1]), _index_vector(b, level[2])
            tflite.DimensionMetadataStart(b)
            tflite.DimensionMetadataAddFormat(b, tflite.DimensionType.SPARSE_CSR)
            tflite.DimensionMetadataAddArraySegmentsType(b, tflite.SparseIndexVector.Uint8Vector)
            tflite.DimensionMetadataAddArraySegments(b, segments)
            tflite.DimensionMetadataAddArrayIndicesType(b, tflite.SparseIndexVector.Uint8Vector)
            tflite.DimensionMetadataAddArrayIndices(b, indices)
        dims.append(tflite.DimensionMetadataEnd(b))
    order_v = b.CreateNumpyVector(np.asarray(order, np.int32))
    block_v = b.CreateNumpyVector(np.asarray(block_map, np.int32)) if block_map else None
    dims_v = _table_vector(b, tflite.SparsityParametersStartDimMetadataVector, dims)
    tflite.SparsityParametersStart(b)
    tflite.SparsityParametersAddTraversalOrder(b, order_v)
    if block_v is not None:
        tflite.SparsityParametersAddBlockMap(b, block_v)
    tflite.SparsityParametersAddDimMetadata(b, dims_v)
    return tflite.SparsityParametersEnd(b)


def build_sparse_model(values: list[float], shape: tuple[int, ...], order: list[int], levels: list[tuple],
                       block_map: tuple[int, ...] = ()) -> bytes:
    """``y = x + DEQUANTIZE(DENSIFY(w))`` with ``w`` a sparse fp16 constant: the sparse file's pattern.

    Tensors: 0 x, 1 w (sparse fp16, buffer 1), 2 w dense fp16, 3 w float32, 4 y.
    """
    b = flatbuffers.Builder(1024)
    tt = tflite.TensorType
    tensors = []
    for name, ttype, buf, sparse in [("x", tt.FLOAT32, 0, False), ("w_sparse", tt.FLOAT16, 1, True),
                                     ("w_f16", tt.FLOAT16, 0, False), ("w", tt.FLOAT32, 0, False),
                                     ("y", tt.FLOAT32, 0, False)]:
        name_o = b.CreateString(name)
        shape_o = b.CreateNumpyVector(np.asarray(shape, np.int32))
        sparsity_o = _sparsity(b, order, list(block_map), levels) if sparse else None
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape_o)
        tflite.TensorAddType(b, ttype)
        tflite.TensorAddBuffer(b, buf)
        tflite.TensorAddName(b, name_o)
        if sparsity_o is not None:
            tflite.TensorAddSparsity(b, sparsity_o)
        tensors.append(tflite.TensorEnd(b))
    tensors_v = _table_vector(b, tflite.SubGraphStartTensorsVector, tensors)
    ops = []
    for code, ins, outs in [(0, [1], [2]), (1, [2], [3]), (2, [0, 3], [4])]:
        ins_v = b.CreateNumpyVector(np.asarray(ins, np.int32))
        outs_v = b.CreateNumpyVector(np.asarray(outs, np.int32))
        tflite.OperatorStart(b)
        tflite.OperatorAddOpcodeIndex(b, code)
        tflite.OperatorAddInputs(b, ins_v)
        tflite.OperatorAddOutputs(b, outs_v)
        ops.append(tflite.OperatorEnd(b))
    ops_v = _table_vector(b, tflite.SubGraphStartOperatorsVector, ops)
    in_v = b.CreateNumpyVector(np.asarray([0], np.int32))
    out_v = b.CreateNumpyVector(np.asarray([4], np.int32))
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensors_v)
    tflite.SubGraphAddInputs(b, in_v)
    tflite.SubGraphAddOutputs(b, out_v)
    tflite.SubGraphAddOperators(b, ops_v)
    subgraphs_v = _table_vector(b, tflite.ModelStartSubgraphsVector, [tflite.SubGraphEnd(b)])
    codes = []
    for builtin in (tflite.BuiltinOperator.DENSIFY, tflite.BuiltinOperator.DEQUANTIZE, tflite.BuiltinOperator.ADD):
        tflite.OperatorCodeStart(b)
        tflite.OperatorCodeAddBuiltinCode(b, builtin)
        tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(builtin, 127))
        tflite.OperatorCodeAddVersion(b, 1)
        codes.append(tflite.OperatorCodeEnd(b))
    codes_v = _table_vector(b, tflite.ModelStartOperatorCodesVector, codes)
    data_o = b.CreateNumpyVector(np.frombuffer(np.asarray(values, np.float16).tobytes(), np.uint8))
    buffers = []
    for data in (None, data_o):
        tflite.BufferStart(b)
        if data is not None:
            tflite.BufferAddData(b, data)
        buffers.append(tflite.BufferEnd(b))
    buffers_v = _table_vector(b, tflite.ModelStartBuffersVector, buffers)
    desc = b.CreateString("blazeport test: sparse constant")
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, codes_v)
    tflite.ModelAddSubgraphs(b, subgraphs_v)
    tflite.ModelAddBuffers(b, buffers_v)
    tflite.ModelAddDescription(b, desc)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


SPARSE_CASES = {
    # row-major CSR with an empty row
    "csr": ([1, 2, 3], (3, 4), [0, 1], [("dense", 3), ("csr", [0, 2, 2, 3], [1, 3, 0])], (),
            [[0, 1, 0, 2], [0, 0, 0, 0], [3, 0, 0, 0]]),
    # traversal order [1, 0]: columns outer, rows compressed
    "column-major": ([1, 2, 3], (2, 3), [1, 0], [("dense", 3), ("csr", [0, 1, 1, 3], [1, 0, 1])], (),
                     [[0, 0, 2], [1, 0, 3]]),
    # 2x2 blocks: a dense row of blocks, CSR block columns, then the dense block itself
    "blocks": ([1, 2, 3, 4, 7, 0, 5, 6], (4, 4), [0, 1, 2, 3],
               [("dense", 2), ("csr", [0, 1, 2], [0, 1]), ("dense", 2), ("dense", 2)], (0, 1),
               [[1, 2, 0, 0], [3, 4, 0, 0], [0, 0, 7, 0], [0, 0, 5, 6]]),
}


@pytest.mark.parametrize("case", list(SPARSE_CASES))
def test_densify_hand_made(case: str, tmp_path: Path) -> None:
    values, shape, order, levels, block_map, dense = SPARSE_CASES[case]
    path = tmp_path / f"{case}.tflite"
    path.write_bytes(build_sparse_model(values, shape, order, levels, block_map))
    model = read_tflite(path)
    assert model.folded == {"DENSIFY": 1, "DEQUANTIZE": 1}
    assert [op.type for op in model.ops] == ["ADD"]
    w = model.by_name("w").data
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, np.asarray(dense, np.float32))
    assert model.by_name("w_sparse").sparse

    # and LiteRT's DENSIFY agrees that this is what the file means
    interp = pytest.importorskip("ai_edge_litert.interpreter")
    it = interp.Interpreter(model_path=str(path),
                            experimental_op_resolver_type=interp.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], np.zeros(shape, np.float32))
    it.invoke()
    np.testing.assert_array_equal(it.get_tensor(it.get_output_details()[0]["index"]), w)


def test_sparse_value_count_mismatch_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad_sparse.tflite"
    # the index lists 3 positions but only 2 values are stored
    path.write_bytes(build_sparse_model([1, 2], (3, 4), [0, 1], [("dense", 3), ("csr", [0, 2, 2, 3], [1, 3, 0])]))
    with pytest.raises(TFLiteError) as err:
        read_tflite(path)
    assert str(path) in str(err.value)


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
