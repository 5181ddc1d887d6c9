"""blazeport.tflite on sparse weights: the full-range sparse file's 46 DENSIFY ops folded, and
hand-made sparse tensors.

The hand-made cases are tiny ``.tflite`` flatbuffers built with the ``tflite`` package's generated
builders, so each densification path (plain CSR, a non-identity traversal order, 2x2 blocks) is
checked against a dense matrix written out by hand, and against LiteRT's own DENSIFY.
"""

from __future__ import annotations

from pathlib import Path

import flatbuffers
import numpy as np
import pytest
import tflite

from blazeport.tflite import TFLiteError, TFLiteModel, read_tflite
from tests.conftest import WEIGHTS
from tests.tiny_tflite import finish_model, raw_ops

SPARSE_TFLITE = WEIGHTS / "face_detection_full_range_sparse.tflite"


@pytest.fixture(scope="module")
def sparse() -> TFLiteModel:
    return read_tflite(SPARSE_TFLITE)


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
    model, sg, densify = raw_ops(SPARSE_TFLITE, tflite.BuiltinOperator.DENSIFY)
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
    _, _, densify = raw_ops(SPARSE_TFLITE, tflite.BuiltinOperator.DENSIFY)
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
    return finish_model(b, codes_v, subgraphs_v, buffers_v, "blazeport test: sparse constant")


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
