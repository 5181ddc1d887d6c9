"""Read a ``.tflite`` flatbuffer into plain tensors and an op graph.

The converter needs three things from a TFLite file: every tensor's name, shape and constant
data (with float16 and int8 weights dequantized and block-sparse weights densified), the ops in
graph order with their inputs, outputs and options (stride, padding, fused activation...), and
the graph's input and output tensors. This module gives exactly that and nothing else, using the
``tflite`` package (generated flatbuffer bindings of the TFLite schema) and numpy.

Constant folding: Google's face models keep weights as float16 behind ``DEQUANTIZE`` ops (and the
sparse full-range model behind ``DENSIFY`` ops first). Both are folded here, so a consumer such
as ``CONV_2D`` sees its kernel as a float32 array, and ``TFLiteModel.ops`` lists only the ops
that compute on activations.

Any failure to parse (empty, truncated, foreign file, other schema) raises ``TFLiteError`` with
one message naming the file and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from blazeport.errors import BlazeportError

__all__ = ["Op", "TFLiteError", "TFLiteModel", "Tensor", "read_tflite"]

_FILE_IDENTIFIER = b"TFL3"

# tflite.TensorType values -> numpy dtypes (schema.fbs, enum TensorType)
_DTYPES: dict[int, Any] = {
    0: np.float32,
    1: np.float16,
    2: np.int32,
    3: np.uint8,
    4: np.int64,
    6: np.bool_,
    7: np.int16,
    9: np.int8,
    10: np.float64,
}

_ACTIVATIONS = {0: None, 1: "relu", 2: "relu_n1_to_1", 3: "relu6", 4: "tanh", 5: "sign_bit", 6: "sigmoid"}
_PADDINGS = {0: "SAME", 1: "VALID"}


class TFLiteError(BlazeportError):
    """A file that cannot be read as a TFLite model, or that blazeport cannot handle."""


@dataclass
class Tensor:
    """One tensor of the graph. ``data`` is set for constants (weights, paddings, shapes)."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: Any
    data: np.ndarray | None = None
    quantization: dict[str, np.ndarray] | None = None
    sparse: bool = False


@dataclass
class Op:
    """One operator: its builtin name, tensor indices and parsed options."""

    index: int
    type: str
    inputs: list[int]
    outputs: list[int]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TFLiteModel:
    path: Path
    description: str
    tensors: list[Tensor]
    ops: list[Op]  # compute ops only; DEQUANTIZE/DENSIFY of constants are folded away
    inputs: list[int]
    outputs: list[int]
    folded: dict[str, int] = field(default_factory=dict)  # op type -> how many were folded

    def tensor(self, index: int) -> Tensor:
        return self.tensors[index]

    def by_name(self, name: str) -> Tensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def producers(self) -> dict[int, Op]:
        """Map tensor index -> the op that writes it."""
        return {o: op for op in self.ops for o in op.outputs}

    def consumers(self) -> dict[int, list[Op]]:
        """Map tensor index -> ops that read it, in graph order."""
        out: dict[int, list[Op]] = {}
        for op in self.ops:
            for i in op.inputs:
                if i >= 0:
                    out.setdefault(i, []).append(op)
        return out

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = dict(self.folded)
        for op in self.ops:
            counts[op.type] = counts.get(op.type, 0) + 1
        return dict(sorted(counts.items()))


def _builtin_code(code: Any) -> int:
    """The op code as LiteRT reads it: ``max(deprecated_builtin_code, builtin_code)``.

    The ``tflite`` package's ``BuiltinCode()`` returns the deprecated int8 field whenever the
    int32 one is below 127, so a writer that leaves the deprecated field at 0 (ai-edge-quantizer's
    float16 output, used by ``blazeport export --fp16``) reads as ADD. Read the raw field instead.
    """
    import flatbuffers

    o = code._tab.Offset(10)  # OperatorCode.builtin_code (schema.fbs field 3)
    raw = code._tab.Get(flatbuffers.number_types.Int32Flags, o + code._tab.Pos) if o else 0
    return max(int(raw), int(code.DeprecatedBuiltinCode()))


def _op_names() -> dict[int, str]:
    import tflite

    return {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}


def _parse_options(op_type: str, raw_op: Any) -> dict[str, Any]:
    """Parse the builtin options the converter needs; other ops keep an empty dict."""
    import tflite

    table = raw_op.BuiltinOptions()
    if table is None:
        return {}

    def load(cls: Any) -> Any:
        opt = cls()
        opt.Init(table.Bytes, table.Pos)
        return opt

    if op_type in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        cls = tflite.Conv2DOptions if op_type == "CONV_2D" else tflite.DepthwiseConv2DOptions
        o = load(cls)
        out = {
            "padding": _PADDINGS[o.Padding()],
            "stride": (o.StrideH(), o.StrideW()),
            "dilation": (o.DilationHFactor(), o.DilationWFactor()),
            "activation": _ACTIVATIONS.get(o.FusedActivationFunction(), "unknown"),
        }
        if op_type == "DEPTHWISE_CONV_2D":
            out["depth_multiplier"] = o.DepthMultiplier()
        return out
    if op_type in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        o = load(tflite.Pool2DOptions)
        return {
            "padding": _PADDINGS[o.Padding()],
            "stride": (o.StrideH(), o.StrideW()),
            "filter": (o.FilterHeight(), o.FilterWidth()),
            "activation": _ACTIVATIONS.get(o.FusedActivationFunction(), "unknown"),
        }
    if op_type in ("ADD", "MUL", "SUB"):
        cls = {"ADD": tflite.AddOptions, "MUL": tflite.MulOptions, "SUB": tflite.SubOptions}[op_type]
        o = load(cls)
        return {"activation": _ACTIVATIONS.get(o.FusedActivationFunction(), "unknown")}
    if op_type == "CONCATENATION":
        o = load(tflite.ConcatenationOptions)
        return {"axis": o.Axis(), "activation": _ACTIVATIONS.get(o.FusedActivationFunction(), "unknown")}
    if op_type == "RESIZE_BILINEAR":
        o = load(tflite.ResizeBilinearOptions)
        return {"align_corners": bool(o.AlignCorners()), "half_pixel_centers": bool(o.HalfPixelCenters())}
    if op_type == "DEPTH_TO_SPACE":
        return {"block_size": load(tflite.DepthToSpaceOptions).BlockSize()}
    if op_type == "RESHAPE":
        o = load(tflite.ReshapeOptions)
        return {"new_shape": tuple(int(x) for x in o.NewShapeAsNumpy())} if o.NewShapeLength() else {}
    return {}


def _sparse_index_vector(dim: Any, which: str) -> np.ndarray:
    """Read a DimensionMetadata segments/indices union (int32, uint16 or uint8 vector)."""
    import tflite

    kind = dim.ArraySegmentsType() if which == "segments" else dim.ArrayIndicesType()
    table = dim.ArraySegments() if which == "segments" else dim.ArrayIndices()
    cls = {
        tflite.SparseIndexVector.Int32Vector: tflite.Int32Vector,
        tflite.SparseIndexVector.Uint16Vector: tflite.Uint16Vector,
        tflite.SparseIndexVector.Uint8Vector: tflite.Uint8Vector,
    }[kind]
    vec = cls()
    vec.Init(table.Bytes, table.Pos)
    return np.asarray(vec.ValuesAsNumpy(), dtype=np.int64)


def densify(values: np.ndarray, dense_shape: tuple[int, ...], sparsity: Any) -> np.ndarray:
    """Expand a TFLite sparse tensor (DENSE / SPARSE_CSR levels, optional blocks) to dense.

    Mirrors ``FormatConverter::Populate`` in TFLite's
    ``kernels/internal/utils/sparsity_format_converter.cc``, but vectorised: each level expands
    the list of visited positions (a DENSE level multiplies it, a CSR level follows the segment
    array), and the leaves come out in the order the values are stored.
    """
    import tflite

    order = [int(x) for x in sparsity.TraversalOrderAsNumpy()]
    block_map = [int(x) for x in sparsity.BlockMapAsNumpy()] if sparsity.BlockMapLength() else []
    rank = len(dense_shape)
    n_levels = sparsity.DimMetadataLength()
    pos = np.zeros(1, dtype=np.int64)  # index into the current level's storage
    coords: list[np.ndarray] = []
    block_sizes: list[int] = []
    for level in range(n_levels):
        dim = sparsity.DimMetadata(level)
        if dim.Format() == tflite.DimensionType.DENSE:
            size = dim.DenseSize()
            if level >= rank:
                block_sizes.append(size)
            pos = np.repeat(pos * size, size) + np.tile(np.arange(size), len(pos))
            coords = [np.repeat(c, size) for c in coords]
            coords.append(pos % size)
        else:
            segments = _sparse_index_vector(dim, "segments")
            indices = _sparse_index_vector(dim, "indices")
            counts = segments[pos + 1] - segments[pos]
            starts = np.repeat(segments[pos], counts)
            offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            pos = starts + offsets
            coords = [np.repeat(c, counts) for c in coords]
            coords.append(indices[pos])
            if level >= rank:
                raise TFLiteError("sparse block dimensions stored as CSR are not supported")
    # coords[i] is the index along traversal dimension i; map back to the dense layout
    orig = [np.zeros_like(pos) for _ in range(rank)]
    for i in range(rank):
        orig[order[i]] = coords[i]
    for i in range(rank, n_levels):
        d = block_map[i - rank]
        orig[d] = orig[d] * block_sizes[i - rank] + coords[i]
    dense = np.zeros(dense_shape, dtype=values.dtype)
    if len(values) != len(pos):
        raise TFLiteError(f"sparse tensor holds {len(values)} values but its index lists {len(pos)}")
    dense[tuple(orig)] = values
    return dense


def _dequantize(t: Tensor, data: np.ndarray) -> np.ndarray:
    if data.dtype == np.float16:
        return data.astype(np.float32)
    q = t.quantization
    if q is None or "scale" not in q:
        raise TFLiteError(f"tensor {t.name!r} ({data.dtype}) has no quantization scale to dequantize with")
    axis = int(q.get("axis", 0))
    scale, zero = q["scale"], q.get("zero_point", np.zeros_like(q["scale"]))
    if scale.size > 1:  # per-channel
        shape = [1] * data.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((data.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32)).astype(np.float32)


def read_tflite(path: str | Path) -> TFLiteModel:
    """Parse ``path`` into a :class:`TFLiteModel`, folding constant DEQUANTIZE/DENSIFY ops."""
    path = Path(path)
    if not path.is_file():
        raise TFLiteError(f"{path}: no such file. Give the path of a .tflite model (see weights/).")
    buf = path.read_bytes()
    if len(buf) == 0:
        raise TFLiteError(f"{path}: the file is empty. Re-download it (tools/fetch_weights.py restores the bundled ones).")
    if len(buf) < 8 or buf[4:8] != _FILE_IDENTIFIER:
        raise TFLiteError(
            f"{path}: not a TFLite flatbuffer (no 'TFL3' identifier; starts with {buf[:8]!r}). "
            "Give a .tflite model file."
        )
    try:
        return _parse(path, buf)
    except TFLiteError as exc:
        raise TFLiteError(f"{path}: {exc}") from None
    except Exception as exc:  # flatbuffers raises struct/index errors on damaged files
        raise TFLiteError(
            f"{path}: the TFLite flatbuffer is damaged or truncated ({len(buf):,} bytes; "
            f"{type(exc).__name__}: {exc}). Re-download the file."
        ) from None


def _parse(path: Path, buf: bytes) -> TFLiteModel:
    import tflite

    model = tflite.Model.GetRootAsModel(buf, 0)
    if model.Version() != 3:
        raise TFLiteError(f"{path}: TFLite schema version {model.Version()}, blazeport reads version 3.")
    if model.SubgraphsLength() < 1:
        raise TFLiteError(f"{path}: the model has no subgraph.")
    sg = model.Subgraphs(0)
    names = _op_names()

    def buffer_data(index: int) -> bytes | None:
        b = model.Buffers(index)
        if b is None:
            return None
        if b.Offset() > 1:  # large models keep buffers after the flatbuffer
            end = b.Offset() + b.Size()
            if end > len(buf):
                raise TFLiteError(f"buffer {index} ends at byte {end:,} past the end of the file")
            return buf[b.Offset() : end]
        if b.DataLength() == 0:
            return None
        return b.DataAsNumpy().tobytes()

    tensors: list[Tensor] = []
    for i in range(sg.TensorsLength()):
        raw = sg.Tensors(i)
        dtype = _DTYPES.get(raw.Type())
        shape = tuple(int(x) for x in raw.ShapeAsNumpy()) if raw.ShapeLength() else ()
        t = Tensor(i, raw.Name().decode(), shape, dtype, sparse=raw.Sparsity() is not None)
        q = raw.Quantization()
        if q is not None and q.ScaleLength():
            t.quantization = {
                "scale": q.ScaleAsNumpy().astype(np.float32),
                "zero_point": (q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength()
                               else np.zeros(q.ScaleLength(), np.int64)),
                "axis": np.asarray(q.QuantizedDimension()),
            }
        data = buffer_data(raw.Buffer())
        if data is not None:
            if dtype is None:
                raise TFLiteError(f"tensor {t.name!r} has TFLite type {raw.Type()}, which blazeport cannot read")
            arr = np.frombuffer(data, dtype=dtype).copy()
            if t.sparse:
                t.data = densify(arr, shape, raw.Sparsity())
            else:
                expected = int(np.prod(shape)) if shape else 1
                if arr.size != expected:
                    raise TFLiteError(f"tensor {t.name!r}: {arr.size} values for shape {shape}")
                t.data = arr.reshape(shape)
        tensors.append(t)

    ops: list[Op] = []
    folded: dict[str, int] = {}
    for i in range(sg.OperatorsLength()):
        raw = sg.Operators(i)
        code = model.OperatorCodes(raw.OpcodeIndex())
        builtin = _builtin_code(code)
        op_type = names.get(builtin, f"BUILTIN_{builtin}")
        if op_type == "CUSTOM":
            op_type = f"CUSTOM:{code.CustomCode().decode()}"
        ins = [int(x) for x in raw.InputsAsNumpy()] if raw.InputsLength() else []
        outs = [int(x) for x in raw.OutputsAsNumpy()] if raw.OutputsLength() else []
        if op_type in ("DEQUANTIZE", "DENSIFY") and tensors[ins[0]].data is not None:
            src, dst = tensors[ins[0]], tensors[outs[0]]
            dst.data = src.data if op_type == "DENSIFY" else _dequantize(src, src.data)
            folded[op_type] = folded.get(op_type, 0) + 1
            continue
        ops.append(Op(i, op_type, ins, outs, _parse_options(op_type, raw)))

    description = model.Description().decode(errors="replace") if model.Description() else ""
    inputs = [int(x) for x in sg.InputsAsNumpy()]
    outputs = [int(x) for x in sg.OutputsAsNumpy()]
    return TFLiteModel(path, description, tensors, ops, inputs, outputs, folded)
