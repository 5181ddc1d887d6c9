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

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from blazeport.errors import BlazeportError
from blazeport.tflite.check import (
    DTYPES,
    ITEMSIZE,
    DamagedModel,
    check_constant_size,
    check_graph,
    check_options_type,
    check_quantization,
    check_tensor,
)
from blazeport.tflite.sparse import densify

__all__ = ["MEDIAPIPE_CUSTOM_OPS", "Op", "TFLiteError", "TFLiteModel", "Tensor", "custom_ops", "parse_tflite",
           "read_tflite"]

_FILE_IDENTIFIER = b"TFL3"

# MediaPipe's custom ops that blazeport translates (blazeport.convert.custom; maths in
# blazeport.models.custom_ops): LiteRT has no kernel for them, MediaPipe links its own.
MEDIAPIPE_CUSTOM_OPS = ("Landmarks2TransformMatrix", "TransformTensorBilinear", "TransformLandmarks")

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
    type_code: int = 0  # TFLite TensorType


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
    # the checked bytes: give LiteRT these (model_content), not the path, which may have changed since
    content: bytes = field(default=b"", repr=False)

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

    def custom_ops(self) -> dict[str, int]:
        """The custom ops the graph uses: name -> version (``CUSTOM:Name`` ops)."""
        return custom_ops(self)

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = dict(self.folded)
        for op in self.ops:
            counts[op.type] = counts.get(op.type, 0) + 1
        return dict(sorted(counts.items()))


def custom_ops(model: TFLiteModel) -> dict[str, int]:
    """``{name: version}`` of the custom ops in ``model`` (sorted by name)."""
    found = {op.type.partition(":")[2]: int(op.options.get("version", 1)) for op in model.ops if op.type.startswith("CUSTOM:")}
    return dict(sorted(found.items()))


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


def _parse_options(index: int, op_type: str, raw_op: Any) -> dict[str, Any]:
    """Parse the builtin options the converter needs; other ops keep an empty dict.

    An unknown padding or activation code reads as ``None`` / ``"unknown"`` for
    :func:`blazeport.tflite.check.check_graph` to refuse. Ops whose options TFLite may omit
    (ADD, CONCATENATION, RESIZE_BILINEAR...) get TFLite's defaults.
    """
    import tflite

    table = raw_op.BuiltinOptions()
    if not check_options_type(index, op_type, raw_op.BuiltinOptionsType(), table is not None):
        table = None

    def load(cls: Any) -> Any:
        opt = cls()
        if table is not None:
            opt.Init(table.Bytes, table.Pos)
        else:  # an empty table: every field reads as its schema default
            opt.Init(b"\x04\x00\x04\x00\x04\x00\x00\x00", 4)
        return opt

    def act(o: Any) -> str | None:
        return _ACTIVATIONS.get(o.FusedActivationFunction(), "unknown")

    if op_type in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        cls = tflite.Conv2DOptions if op_type == "CONV_2D" else tflite.DepthwiseConv2DOptions
        o = load(cls)
        out = {
            "padding": _PADDINGS.get(o.Padding()),
            "stride": (o.StrideH(), o.StrideW()),
            "dilation": (o.DilationHFactor(), o.DilationWFactor()),
            "activation": act(o),
        }
        if op_type == "DEPTHWISE_CONV_2D":
            out["depth_multiplier"] = o.DepthMultiplier()
        return out
    if op_type in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        o = load(tflite.Pool2DOptions)
        return {
            "padding": _PADDINGS.get(o.Padding()),
            "stride": (o.StrideH(), o.StrideW()),
            "filter": (o.FilterHeight(), o.FilterWidth()),
            "activation": act(o),
        }
    if op_type in ("ADD", "MUL", "SUB"):
        cls = {"ADD": tflite.AddOptions, "MUL": tflite.MulOptions, "SUB": tflite.SubOptions}[op_type]
        return {"activation": act(load(cls))}
    if op_type == "CONCATENATION":
        o = load(tflite.ConcatenationOptions)
        return {"axis": o.Axis(), "activation": act(o)}
    if op_type == "RESIZE_BILINEAR":
        o = load(tflite.ResizeBilinearOptions)
        return {"align_corners": bool(o.AlignCorners()), "half_pixel_centers": bool(o.HalfPixelCenters())}
    if op_type == "DEPTH_TO_SPACE":
        return {"block_size": load(tflite.DepthToSpaceOptions).BlockSize()}
    if op_type == "RESHAPE":
        o = load(tflite.ReshapeOptions)
        return {"new_shape": tuple(int(x) for x in o.NewShapeAsNumpy())} if o.NewShapeLength() else {}
    if op_type == "STRIDED_SLICE":
        o = load(tflite.StridedSliceOptions)
        return {"begin_mask": o.BeginMask(), "end_mask": o.EndMask(), "ellipsis_mask": o.EllipsisMask(),
                "new_axis_mask": o.NewAxisMask(), "shrink_axis_mask": o.ShrinkAxisMask(), "offset": bool(o.Offset())}
    return {}


def _custom_options(index: int, op_type: str, raw_op: Any, version: int) -> dict[str, Any]:
    """A custom op's options: ``version`` (its ``OperatorCode``'s, which picks the kernel: MediaPipe's
    ``TransformTensorBilinear`` v1 and v2 sample differently) and ``custom``, the ``custom_options``
    flexbuffer map as a dict (MediaPipe's ops read theirs with ``flexbuffers::GetRoot(...).AsMap()``,
    ``tflite/delegates/gpu/common/mediapipe/*.cc``), or ``{}`` when the op has none."""
    raw = raw_op.CustomOptionsAsNumpy().tobytes() if raw_op.CustomOptionsLength() else b""
    if not raw:
        return {"version": version, "custom": {}}
    if raw_op.CustomOptionsFormat() != 0:  # CustomOptionsFormat.FLEXBUFFERS is the only one TFLite defines
        raise DamagedModel(f"op {index} ({op_type}) has custom options in format {raw_op.CustomOptionsFormat()}")
    from flatbuffers import flexbuffers

    try:
        custom = flexbuffers.Loads(raw)
    except Exception as exc:  # the reader does not verify: a damaged buffer raises anything from struct to Index
        raise DamagedModel(f"op {index} ({op_type}) has unreadable custom options ({type(exc).__name__})") from None
    if not isinstance(custom, dict):
        raise DamagedModel(f"op {index} ({op_type}) has custom options that are not a map ({type(custom).__name__})")
    return {"version": version, "custom": custom}


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


_FIX = "Re-download it; `python tools/fetch_weights.py` restores the bundled ones."


def read_tflite(path: str | Path) -> TFLiteModel:
    """Parse and check ``path`` into a :class:`TFLiteModel`, folding constant DEQUANTIZE/DENSIFY ops.

    Every structural problem (see :mod:`blazeport.tflite.check`) raises :class:`TFLiteError` with
    one message naming the file, so LiteRT never sees a file the checks refused.
    """
    path = Path(path)
    try:
        buf = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise TFLiteError(f"{path}: no such file. Give the path of a .tflite model or a model name.") from None
    except IsADirectoryError:
        raise TFLiteError(f"{path}: is a folder. Give the path of a .tflite model or a model name.") from None
    except OSError as exc:
        raise TFLiteError(f"{path}: cannot read the file ({exc.strerror or exc}). Check the file's permissions, or copy "
                          "it somewhere readable.") from None
    if len(buf) == 0:
        raise TFLiteError(f"{path}: the file is empty. {_FIX}")
    if len(buf) < 8 or buf[4:8] != _FILE_IDENTIFIER:
        raise TFLiteError(
            f"{path}: not a TFLite flatbuffer (no 'TFL3' identifier; starts with {buf[:8]!r}). "
            "Give a .tflite model file."
        )
    return parse_tflite(buf, path)


def parse_tflite(buf: bytes, path: str | Path = "<bytes>") -> TFLiteModel:
    """:func:`read_tflite` for bytes already in memory (``path`` only names them in messages)."""
    path = Path(path)
    try:
        return _parse(path, buf)
    except DamagedModel as exc:
        raise TFLiteError(f"{path}: damaged TFLite model: {exc}. {_FIX}") from None
    except TFLiteError as exc:
        raise TFLiteError(f"{path}: {exc}") from None
    except (struct.error, ValueError, TypeError, IndexError, OverflowError) as exc:
        # the flatbuffers bindings do not verify: an offset or length past the end raises one of these
        raise TFLiteError(
            f"{path}: the TFLite flatbuffer is damaged or truncated ({len(buf):,} bytes; "
            f"{type(exc).__name__}: {exc}). {_FIX}"
        ) from None


def _buffer_data(model: Any, index: int, buf: bytes) -> bytes | None:
    """The bytes of buffer ``index`` (None when empty): inside the flatbuffer or, for large models, after it."""
    b = model.Buffers(index)
    if b.Offset() > 1:
        end = b.Offset() + b.Size()
        if end > len(buf):
            raise DamagedModel(f"buffer {index} ends at byte {end:,}, past the end of the file")
        return buf[b.Offset() : end]
    if b.DataLength() == 0:
        return None
    return b.DataAsNumpy().tobytes()


def _read_tensor(i: int, raw: Any, model: Any, buf: bytes) -> Tensor:
    """One tensor, checked (type, shape, buffer) and with its constant data decoded."""
    name = raw.Name().decode(errors="replace") if raw.Name() is not None else ""
    shape = tuple(int(x) for x in raw.ShapeAsNumpy()) if raw.ShapeLength() else ()
    check_tensor(i, name, raw.Type(), shape, raw.Buffer(), model.BuffersLength())
    t = Tensor(i, name, shape, DTYPES[raw.Type()], sparse=raw.Sparsity() is not None, type_code=raw.Type())
    q = raw.Quantization()
    if q is not None and q.ScaleLength():
        t.quantization = {
            "scale": q.ScaleAsNumpy().astype(np.float32),
            "zero_point": (q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength()
                           else np.zeros(q.ScaleLength(), np.int64)),
            "axis": np.asarray(q.QuantizedDimension()),
        }
        check_quantization(i, name, shape, t.quantization["scale"], q.ZeroPointAsNumpy() if q.ZeroPointLength() else
                           np.zeros(0), int(q.QuantizedDimension()))
    data = _buffer_data(model, raw.Buffer(), buf)
    if data is not None:
        if t.sparse:
            if len(data) % ITEMSIZE[t.type_code]:
                raise DamagedModel(f"sparse tensor {i} ({name!r}) has {len(data)} bytes of values")
            t.data = densify(np.frombuffer(data, dtype=t.dtype).copy(), shape, raw.Sparsity())
        else:
            check_constant_size(i, name, t.type_code, shape, len(data))
            t.data = np.frombuffer(data, dtype=t.dtype).copy().reshape(shape)
    return t


def _parse(path: Path, buf: bytes) -> TFLiteModel:
    import tflite

    model = tflite.Model.GetRootAsModel(buf, 0)
    if model.Version() != 3:
        raise TFLiteError(f"TFLite schema version {model.Version()}, blazeport reads version 3.")
    if model.SubgraphsLength() < 1:
        raise DamagedModel("the model has no subgraph")
    sg = model.Subgraphs(0)
    names = _op_names()
    tensors = [_read_tensor(i, sg.Tensors(i), model, buf) for i in range(sg.TensorsLength())]

    graph: list[Op] = []
    for i in range(sg.OperatorsLength()):
        raw = sg.Operators(i)
        if not 0 <= raw.OpcodeIndex() < model.OperatorCodesLength():
            raise DamagedModel(f"op {i} uses operator code {raw.OpcodeIndex()}; the file has {model.OperatorCodesLength()}")
        code = model.OperatorCodes(raw.OpcodeIndex())
        builtin = _builtin_code(code)
        op_type = names.get(builtin, f"BUILTIN_{builtin}")
        ins = [int(x) for x in raw.InputsAsNumpy()] if raw.InputsLength() else []
        outs = [int(x) for x in raw.OutputsAsNumpy()] if raw.OutputsLength() else []
        if op_type == "CUSTOM":
            op_type = f"CUSTOM:{(code.CustomCode() or b'').decode(errors='replace')}"
            graph.append(Op(i, op_type, ins, outs, _custom_options(i, op_type, raw, int(code.Version()))))
            continue
        graph.append(Op(i, op_type, ins, outs, _parse_options(i, op_type, raw)))
    inputs = [int(x) for x in sg.InputsAsNumpy()] if sg.InputsLength() else []
    outputs = [int(x) for x in sg.OutputsAsNumpy()] if sg.OutputsLength() else []
    check_graph(tensors, graph, inputs, outputs)

    ops: list[Op] = []
    folded: dict[str, int] = {}
    for op in graph:
        if op.type in ("DEQUANTIZE", "DENSIFY") and tensors[op.inputs[0]].data is not None:
            src, dst = tensors[op.inputs[0]], tensors[op.outputs[0]]
            dst.data = src.data if op.type == "DENSIFY" else _dequantize(src, src.data)
            folded[op.type] = folded.get(op.type, 0) + 1
        else:
            ops.append(op)
    description = model.Description().decode(errors="replace") if model.Description() else ""
    return TFLiteModel(path, description, tensors, ops, inputs, outputs, folded, bytes(buf))
