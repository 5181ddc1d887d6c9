"""Params and MACs of a benchmarked model.

A PyTorch module is counted by :mod:`blazeport.modelfiles.counting` (the one module counter). Where no module
is loaded -- a board without torch, or a target that only runs a file -- the file's graph is
counted instead, the same way: weights and biases of the convolution and fully connected layers
(and PReLU slopes), and the MACs of those layers. Neither graph counter needs torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from blazeport.modelfiles.counting import count_macs, count_params
from blazeport.specs import ModelSpec
from blazeport.tflite import read_tflite

Counts = tuple[int | None, int | None]


def module_counts(module: Any, spec: ModelSpec) -> Counts:
    return count_params(module), count_macs(module, spec.input_size)


def tflite_counts(path: str | Path) -> tuple[int, int]:
    """(params, MACs) from a ``.tflite`` graph, counted like :mod:`blazeport.modelfiles.counting` counts a module:
    weights and biases of CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED (and PRELU slopes); MACs of
    those three ops. Needs no torch (a board with LiteRT only)."""
    model = read_tflite(path)
    params = macs = 0
    for op in model.ops:
        if op.type not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "PRELU"):
            continue
        consts = [model.tensor(i) for i in op.inputs[1:] if i >= 0 and model.tensor(i).data is not None]
        params += sum(int(np.prod(t.shape)) for t in consts)
        if op.type == "PRELU" or not consts:
            continue
        w, out = model.tensor(op.inputs[1]), model.tensor(op.outputs[0])
        out_elems = int(np.prod(out.shape[1:]))
        if op.type == "CONV_2D":  # (O, kh, kw, I)
            macs += out_elems * int(np.prod(w.shape[1:]))
        elif op.type == "DEPTHWISE_CONV_2D":  # (1, kh, kw, C * M)
            macs += out_elems * int(w.shape[1] * w.shape[2])
        else:  # (O, I)
            macs += out_elems * int(w.shape[-1])
    return params, macs


def onnx_counts(path: str | Path) -> Counts:
    """(params, MACs) of an ``.onnx`` file: initializer sizes, and Conv/Gemm MACs from inferred shapes
    (through the Cast of a float16 file and the DequantizeLinear of an int8 one)."""
    try:
        import onnx
        from onnx import shape_inference
    except ImportError:
        return None, None
    model = shape_inference.infer_shapes(onnx.load(str(path)))
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    # a weight reaches its Conv through a Cast (fp16 files) or a DequantizeLinear (int8 QDQ files)
    casts = {n.output[0]: n.input[0] for n in model.graph.node
             if n.op_type in ("Cast", "DequantizeLinear") and n.input[0] in inits}
    # QDQ scales and zero points are not parameters of the network
    qparams = {i for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for i in n.input[1:]}
    shapes = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
              for v in [*model.graph.value_info, *model.graph.output]}
    params = sum(int(np.prod(d)) for name, d in inits.items() if name not in qparams)
    macs = 0
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2:
            continue
        w = inits.get(casts.get(n.input[1], n.input[1]))
        out = shapes.get(n.output[0])
        if w is None or not out:
            continue
        out_elems = int(np.prod(out[1:]))
        macs += out_elems * (int(np.prod(w[1:])) if n.op_type == "Conv" else int(w[0] if n.op_type == "MatMul" else w[-1]))
    return params, macs


GRAPH_COUNTERS = {".tflite": tflite_counts, ".onnx": onnx_counts}


def graph_counts(files: Iterable[Path]) -> Counts:
    """Counts of the first ``.tflite`` or ``.onnx`` among ``files`` (``(None, None)`` if there is none)."""
    for path in files:
        if path.suffix in GRAPH_COUNTERS:
            return GRAPH_COUNTERS[path.suffix](path)
    return None, None
