"""Full-integer (int8) and dynamic-range quantization of an exported float file, one function per format.

:func:`blazeport.export.export` writes the float file first (the format's own exporter, into a
temporary folder), then the format row's ``quantizer`` turns it into the int8 file; verification is
:mod:`blazeport.export.fidelity`. Both quantizers keep the same recipe, chosen by measurement
(short range, 300 calibration photos from ``shared/data/unlabeled``, 100 held-out photos, AP
against the float model's detections):

- **Weights int8 per output channel, activations int8 per tensor, calibrated on letterboxed photos.**
- **The SSD heads stay float** (the last convolutions, their reshapes and the concatenation).
  BlazeFace's outputs span a huge range, classificator logits about -1100..5 on background anchors
  and regressors -200..700 input pixels, so one int8 scale for them is ~4.5 logits and ~3.5 pixels
  a step: every score near the threshold rounds to 0 or 1. With the heads quantized, ONNX gave
  AP50 0.000 vs float; with them float, 0.999 (ONNX) and 1.000 (TFLite). The heads are a few small
  1x1 convolutions, so this costs little latency; their *inputs* are int8 tensors dequantized once.
  Consequently the outputs are float32 in every file, with or without ``--int8-io``.
- **ONNX** (``onnxruntime.quantization.quantize_static``): QDQ format, signed int8 activations
  (S8S8, onnxruntime's recommended x86 setting; U8 activations lost AP50 0.12 to AVX2's saturating
  u8s8 kernels), ``Percentile`` calibration at 99.999 %. ``MinMax`` failed outright (AP50 0.0: a few
  outlier photos widen early ranges, and onnxruntime's fused int8 kernels then diverge from the
  simulated QDQ graph), and ``Entropy`` did the same.
- **TFLite** (ai-edge-quantizer's ``static_wi8_ai8`` recipe, min/max with a moving average over the
  calibration batches, the TF Lite converter's own rule): AP50 1.000, AP 0.963 vs float on short
  range. litert-torch's PT2E path was not needed (and would re-trace the PyTorch module).
  The quantizer makes the graph input int8; unless ``--int8-io`` a ``QUANTIZE`` op is put in front
  (:func:`_tflite_float_input`) so the file takes float32 like every other export.
- ``--dynamic``: weights int8, activations float (onnxruntime ``quantize_dynamic``; ai-edge-quantizer
  ``dynamic_wi8_afp32``); no calibration.

``--int8-io``: the input tensor is int8; its scale and zero point are in the tensor (TFLite) and in the
``blazeport.input_quantization`` metadata (both formats), and the backends quantize the letterboxed
batch with them (:func:`blazeport.modelfiles.backends.quantize_input`).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from blazeport.errors import BlazeportError
from blazeport.export.calibration import Calibration
from blazeport.export.common import quiet
from blazeport.export.to_tflite import _tflite_with_metadata, inline_buffers
from blazeport.files import write_atomic
from blazeport.tflite import parse_tflite

INPUT_QUANTIZATION_KEY = "blazeport.input_quantization"
ONNX_PERCENTILE = 99.999

__all__ = ["INPUT_QUANTIZATION_KEY", "quantize_onnx", "quantize_tflite"]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ----------------------------------------------------------------------------------------------- ONNX


def onnx_head_nodes(model: Any) -> list[str]:
    """Names of the nodes from the graph outputs back to (and including) the last Conv on each path."""
    producer = {o: n for n in model.graph.node for o in n.output}
    names: list[str] = []
    stack = [o.name for o in model.graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in names:
            continue
        names.append(node.name)
        if node.op_type != "Conv":
            stack.extend(node.input if node.op_type == "Concat" else node.input[:1])
    return names


# Photos per calibration pass. onnxruntime's histogram calibrators keep every intermediate tensor of every
# photo until the pass ends (about 75 MB a photo for back: 300 photos were killed for memory at 23 GB);
# with CalibStridedMinMax each pass is folded into the histograms and freed.
ONNX_CALIBRATION_STRIDE = 20


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over the letterboxed batch, one photo a call, in
    ranges of :data:`ONNX_CALIBRATION_STRIDE` (``set_range``, what ``CalibStridedMinMax`` drives)."""

    def __init__(self, inputs: np.ndarray, name: str):
        self.inputs, self.name = inputs, name
        self.i, self.end = 0, len(inputs)

    def __len__(self) -> int:
        return len(self.inputs)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.i, self.end = start_index, min(end_index, len(self.inputs))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= self.end:
            return None
        self.i += 1
        return {self.name: self.inputs[self.i - 1:self.i]}


def _onnx_int8_input(model: Any) -> dict[str, Any]:
    """Drop the first QuantizeLinear after the graph input and make the input int8; returns its scale and
    zero point. onnxruntime leaves the NHWC->NCHW ``Transpose`` at the input in float; it moves int8 as well."""
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    name = graph.input[0].name
    tensor = name
    while True:  # through layout-only ops to the QuantizeLinear
        users = [n for n in graph.node if tensor in n.input]
        if len(users) != 1 or users[0].op_type not in ("Transpose", "QuantizeLinear"):
            raise BlazeportError(f"--int8-io: the input {name!r} does not reach one QuantizeLinear through layout ops only")
        if users[0].op_type == "QuantizeLinear":
            break
        tensor = users[0].output[0]
    q = users[0]
    inits = {i.name: i for i in graph.initializer}
    scale = float(numpy_helper.to_array(inits[q.input[1]]))
    zero = numpy_helper.to_array(inits[q.input[2]])
    for node in graph.node:
        for k, inp in enumerate(node.input):
            if inp == q.output[0]:
                node.input[k] = tensor
    graph.node.remove(q)
    stale = {n.output[0] for n in graph.node if n.op_type == "Transpose" and tensor != name} | {tensor}
    kept = [v for v in graph.value_info if v.name not in stale]  # shapes inference typed them float
    del graph.value_info[:]
    graph.value_info.extend(kept)
    graph.input[0].type.tensor_type.elem_type = TensorProto.INT8 if zero.dtype == np.int8 else TensorProto.UINT8
    return {"scale": scale, "zero_point": int(zero), "dtype": zero.dtype.name}


def quantize_onnx(float_path: Path, out: Path, calibration: Calibration | None, *, dynamic: bool, int8_io: bool,
                  metadata: dict[str, str], module: Any = None) -> dict[str, Any]:
    """Quantize ``float_path`` (static QDQ, or dynamic) into ``out``; returns the quantization facts.

    ``module`` (the torch module the file came from) is part of the quantizer contract for ExecuTorch's
    graph-level quantizer; onnxruntime quantizes the file and ignores it."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    facts: dict[str, Any] = {"tool": "onnxruntime.quantization"}
    with tempfile.TemporaryDirectory(prefix="blazeport-int8-") as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        try:
            with quiet():
                quant_pre_process(str(float_path), str(pre), skip_symbolic_shape=True)
                if dynamic:
                    quantize_dynamic(pre, q, weight_type=QuantType.QInt8, per_channel=True)
                    facts.update(method="dynamic", weights="int8 per channel", activations="float32 (int8 at run time)")
                else:
                    model = onnx.load(str(pre))
                    heads = onnx_head_nodes(model)
                    n = len(calibration.inputs)  # passes must divide the photos evenly: every photo counts
                    stride = max(d for d in range(1, ONNX_CALIBRATION_STRIDE + 1) if n % d == 0)
                    quantize_static(pre, q, _Reader(calibration.inputs, model.graph.input[0].name),
                                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.Percentile,
                                    nodes_to_exclude=heads,
                                    extra_options={"CalibPercentile": ONNX_PERCENTILE, "ActivationSymmetric": False,
                                                   "WeightSymmetric": True, "CalibStridedMinMax": stride})
                    facts.update(method="static QDQ", weights="int8 per channel", activations="int8 per tensor",
                                 calibration=f"percentile {ONNX_PERCENTILE}", photos_per_pass=stride, float_nodes=heads)
        except BlazeportError:
            raise
        except Exception as exc:  # onnxruntime raises bare Exceptions naming the op it cannot handle
            raise BlazeportError(f"{float_path.name}: onnxruntime cannot quantize this model ({_first_line(exc)}).") from None
        model = onnx.load(str(q))
    meta = dict(metadata)
    if int8_io:
        facts["input"] = _onnx_int8_input(model)
        meta[INPUT_QUANTIZATION_KEY] = json.dumps(facts["input"])
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "blazeport"
    onnx.checker.check_model(model)
    write_atomic(out, model.SerializeToString())
    return facts


# ----------------------------------------------------------------------------------------------- TFLite


def tflite_head_tensors(data: bytes) -> list[str]:
    """Output tensor names of the ops from the graph outputs back to the last CONV_2D on each path."""

    model = parse_tflite(data)
    producer = model.producers()
    names: list[str] = []
    stack = list(model.outputs)
    while stack:
        op = producer.get(stack.pop())
        if op is None or model.tensor(op.outputs[0]).name in names:
            continue
        names.append(model.tensor(op.outputs[0]).name)
        if op.type != "CONV_2D":
            stack.extend(op.inputs if op.type == "CONCATENATION" else op.inputs[:1])
    return names


def _tflite_float_input(data: bytes) -> bytes:
    """Put a ``QUANTIZE`` op (float32 -> int8) in front of the int8 graph input, so the file takes float32."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    inline_buffers(model, data)
    sg = model.subgraphs[0]
    old = int(sg.inputs[0])
    qt = sg.tensors[old]
    new = schema.TensorT()
    new.shape, new.shapeSignature, new.type, new.name = qt.shape.copy(), None, schema.TensorType.FLOAT32, qt.name
    qt.name = f"{qt.name}_int8"
    model.buffers.append(schema.BufferT())
    new.buffer = len(model.buffers) - 1
    sg.tensors.append(new)
    index = len(sg.tensors) - 1
    code = schema.BuiltinOperator.QUANTIZE
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    if code not in codes:
        oc = schema.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, code, 1
        model.operatorCodes.append(oc)
        codes.append(code)
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = codes.index(code), np.array([index], np.int32), np.array([old], np.int32)
    sg.operators.insert(0, op)
    sg.inputs = np.array([index], np.int32)
    for sig in model.signatureDefs or []:
        for t in sig.inputs:
            if t.tensorIndex == old:
                t.tensorIndex = index
    builder = flatbuffers.Builder(len(data) + 65536)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _tflite_input_quantization(data: bytes) -> dict[str, Any]:
    from ai_edge_litert.interpreter import Interpreter

    detail = Interpreter(model_content=data).get_input_details()[0]
    scale, zero = detail["quantization"]
    return {"scale": float(scale), "zero_point": int(zero), "dtype": np.dtype(detail["dtype"]).name}


def quantize_tflite(float_path: Path, out: Path, calibration: Calibration | None, *, dynamic: bool, int8_io: bool,
                    metadata: dict[str, str], module: Any = None) -> dict[str, Any]:
    """Quantize ``float_path`` with ai-edge-quantizer (static int8, or dynamic range) into ``out`` (``module``: unused,
    see :func:`quantize_onnx`)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe
    except ImportError as exc:
        raise BlazeportError(f"TFLite int8 export needs {exc.name}: pip install ai-edge-quantizer") from None
    data = float_path.read_bytes()
    qt = quantizer.Quantizer(data)
    facts: dict[str, Any] = {"tool": "ai-edge-quantizer"}
    if dynamic:
        qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        facts.update(method="dynamic", weights="int8 per channel", activations="float32 (int8 at run time)")
    else:
        qt.load_quantization_recipe(recipe.static_wi8_ai8())
        heads = tflite_head_tensors(data)
        for name in heads:
            qt.update_quantization_recipe(regex=re.escape(name) + ";", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                          algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
        facts.update(method="static", weights="int8 per channel", activations="int8 per tensor",
                     calibration="min/max, moving average", float_ops=len(heads))
    try:
        with quiet():
            result = None
            if qt.need_calibration:
                signatures = Interpreter(model_content=data).get_signature_list()
                key = next(iter(signatures))
                name = signatures[key]["inputs"][0]
                result = qt.calibrate({key: [{name: x[None]} for x in calibration.inputs]}, num_threads=1)
            quantized = bytes(qt.quantize(result, enable_progress_report=False).quantized_model)
    except (ValueError, RuntimeError, KeyError, NotImplementedError) as exc:
        raise BlazeportError(f"{float_path.name}: ai-edge-quantizer cannot quantize this model ({_first_line(exc)}).") from None
    meta = dict(metadata)
    if not dynamic:
        if int8_io:
            facts["input"] = _tflite_input_quantization(quantized)
            meta[INPUT_QUANTIZATION_KEY] = json.dumps(facts["input"])
        else:
            quantized = _tflite_float_input(quantized)
    write_atomic(out, _tflite_with_metadata(quantized, meta))
    return facts
