"""Write small TFLite flatbuffers for error-path tests (a graph no real model file has), and read a
file's ops with the ``tflite`` package alone (no blazeport code) to check what blazeport reads."""

from __future__ import annotations

from pathlib import Path

import flatbuffers
import tflite


def raw_ops(path: Path, op: int) -> tuple[tflite.Model, tflite.SubGraph, list[tflite.Operator]]:
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


def finish_model(b: flatbuffers.Builder, codes: int, subgraphs: int, buffers: int, description: str) -> bytes:
    """The Model table (schema version 3) around built vectors, with the ``TFL3`` identifier."""
    desc = b.CreateString(description)
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, codes)
    tflite.ModelAddSubgraphs(b, subgraphs)
    tflite.ModelAddBuffers(b, buffers)
    tflite.ModelAddDescription(b, desc)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _int_vector(b: flatbuffers.Builder, start, values: list[int]) -> int:
    start(b, len(values))
    for v in reversed(values):
        b.PrependInt32(v)
    return b.EndVector()


def write_single_op_model(path: Path, op: str = "TANH", shape: tuple[int, ...] = (1, 128, 128, 3)) -> Path:
    """A valid one-op model: input -> OP -> output, float32, no weights."""
    b = flatbuffers.Builder(1024)
    names = [b.CreateString("input"), b.CreateString("output")]
    tensors = []
    for name in names:
        shp = _int_vector(b, tflite.TensorStartShapeVector, list(shape))
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shp)
        tflite.TensorAddType(b, tflite.TensorType.FLOAT32)
        tflite.TensorAddBuffer(b, 0)
        tflite.TensorAddName(b, name)
        tensors.append(tflite.TensorEnd(b))
    op_inputs = _int_vector(b, tflite.OperatorStartInputsVector, [0])
    op_outputs = _int_vector(b, tflite.OperatorStartOutputsVector, [1])
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, 0)
    tflite.OperatorAddInputs(b, op_inputs)
    tflite.OperatorAddOutputs(b, op_outputs)
    operator = tflite.OperatorEnd(b)

    tflite.SubGraphStartTensorsVector(b, len(tensors))
    for t in reversed(tensors):
        b.PrependUOffsetTRelative(t)
    tensor_vec = b.EndVector()
    tflite.SubGraphStartOperatorsVector(b, 1)
    b.PrependUOffsetTRelative(operator)
    op_vec = b.EndVector()
    sg_in = _int_vector(b, tflite.SubGraphStartInputsVector, [0])
    sg_out = _int_vector(b, tflite.SubGraphStartOutputsVector, [1])
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensor_vec)
    tflite.SubGraphAddOperators(b, op_vec)
    tflite.SubGraphAddInputs(b, sg_in)
    tflite.SubGraphAddOutputs(b, sg_out)
    subgraph = tflite.SubGraphEnd(b)

    code = getattr(tflite.BuiltinOperator, op)
    tflite.OperatorCodeStart(b)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
    tflite.OperatorCodeAddBuiltinCode(b, code)
    tflite.OperatorCodeAddVersion(b, 1)
    opcode = tflite.OperatorCodeEnd(b)

    tflite.BufferStart(b)
    empty = tflite.BufferEnd(b)

    tflite.ModelStartOperatorCodesVector(b, 1)
    b.PrependUOffsetTRelative(opcode)
    codes = b.EndVector()
    tflite.ModelStartSubgraphsVector(b, 1)
    b.PrependUOffsetTRelative(subgraph)
    subgraphs = b.EndVector()
    tflite.ModelStartBuffersVector(b, 1)
    b.PrependUOffsetTRelative(empty)
    buffers = b.EndVector()
    path.write_bytes(finish_model(b, codes, subgraphs, buffers, "blazeport test model"))
    return path
