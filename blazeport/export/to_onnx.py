"""ONNX exporter.

ONNX: ``torch.onnx.export(dynamo=True, external_data=False)`` (one file, opset 18), then
``onnxslim``. TF ``SAME`` padding is computed from ``x.shape`` in Python, which torch.export
specialises to constants, so the graph has no Shape/Gather chains; ``F.pad`` before a conv is
merged into the conv's pads. ``--fp16`` stores float16 initializers behind ``Cast`` nodes
(float32 compute), the way Google's files keep float16 weights behind ``DEQUANTIZE``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from blazeport.errors import BlazeportError
from blazeport.export.common import nhwc, quiet, sample_input
from blazeport.export.common import output_names as landmark_output_names
from blazeport.files import write_atomic
from blazeport.specs import LandmarkSpec, ModelSpec

ONNX_OPSET = 18


def _onnx_fp16_weights(model: Any) -> None:
    """Store float initializers as float16 behind ``Cast`` to float32 (compute stays float32)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    casts, keep = [], []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < 16:
            keep.append(init)
            continue
        arr = numpy_helper.to_array(init).astype(np.float16)
        half = numpy_helper.from_array(arr, init.name + "_fp16")
        keep.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT, name=init.name + "_cast"))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)


def export_onnx(module: Any, spec: ModelSpec | LandmarkSpec, out: Path, *, fp16: bool, dynamic_batch: bool,
                metadata: dict[str, str]) -> None:
    """``torch.onnx.export`` (dynamo, one file, opset 18) -> onnxslim -> metadata -> ``out``."""
    try:
        import onnx
        import onnxslim
        import torch
    except ImportError as exc:  # pragma: no cover - base dependencies
        raise BlazeportError(f"ONNX export needs {exc.name}: pip install -e .") from None

    wrapper = nhwc(module, named_outputs=False)
    # torch.export specialises a sample batch of 1, so a dynamic batch is traced with 2.
    sample = sample_input(spec, 2 if dynamic_batch else 1)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    if isinstance(spec, LandmarkSpec):  # a landmark model's outputs, named by the spec (matched by size)
        with torch.inference_mode():
            names = landmark_output_names([o[0].numel() for o in wrapper(sample)], spec)
        output_names = names
    else:
        output_names = ["regressors", "classificators"]
    with quiet():
        program = torch.onnx.export(wrapper, (sample,), None, dynamo=True, external_data=False,
                                    input_names=["input"], output_names=output_names,
                                    opset_version=ONNX_OPSET, dynamic_shapes=dynamic, optimize=True, verbose=False)
        model = onnxslim.slim(program.model_proto)
    if fp16:
        _onnx_fp16_weights(model)
    model.producer_name = "blazeport"
    model.doc_string = f"{spec.description} (blazeport export; NHWC float32 input in {list(spec.normalization)})"
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    write_atomic(out, model.SerializeToString())


def onnx_op_counts(path: Path) -> dict[str, int]:
    import onnx

    return dict(sorted(Counter(n.op_type for n in onnx.load(str(path)).graph.node).items()))
