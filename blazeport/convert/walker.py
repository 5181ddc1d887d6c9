"""Following tensors through a TFLite graph: what every extractor shares.

An extractor (:mod:`blazeport.convert.blazeface`, :mod:`blazeport.convert.graph`) reads a
:class:`~blazeport.tflite.TFLiteModel` and returns a :class:`Mapping`: the module's config and,
for every parameter, the array that fills it and the TFLite tensor it came from. Anything the
module could not run exactly is a :class:`ConversionError` naming the op, never a silent guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from blazeport.errors import BlazeportError
from blazeport.specs import LANDMARK_SPECS, SPECS
from blazeport.tflite import Op, TFLiteModel

__all__ = ["ConversionError", "Mapping", "Walker", "check_ops"]


class ConversionError(BlazeportError):
    """The file is a TFLite model, but not one blazeport can map onto a known architecture."""


@dataclass
class Mapping:
    """The result of walking a graph: architecture plus parameter -> TFLite tensor."""

    config: Any
    family: str = "blazeface"
    params: dict[str, np.ndarray] = field(default_factory=dict)  # torch name -> array in torch layout
    sources: dict[str, str] = field(default_factory=dict)  # torch name -> TFLite tensor name


class Walker:
    """Follows tensors through a TFLite graph, answering 'who reads / writes this tensor'."""

    def __init__(self, model: TFLiteModel):
        self.m = model
        self.producers = model.producers()
        self.consumers = model.consumers()

    def fail(self, what: str) -> ConversionError:
        known = ", ".join(sorted(SPECS))
        return ConversionError(
            f"{self.m.path}: {what}. blazeport maps BlazeFace-family graphs (known specs: {known}); "
            f"this graph has ops {self.m.op_counts()}. Pass --spec if it is a known model, or open an issue with the file."
        )

    def readers(self, tensor: int, op_type: str) -> list[Op]:
        return [op for op in self.consumers.get(tensor, []) if op.type == op_type]

    def only_reader(self, tensor: int, op_type: str) -> Op:
        ops = self.readers(tensor, op_type)
        if len(ops) != 1:
            name = self.m.tensor(tensor).name
            raise self.fail(f"expected one {op_type} reading {name!r}, found {len(ops)}")
        return ops[0]

    def activation_after(self, op: Op) -> int:
        """Output tensor after the op's ReLU, fused or as a separate RELU op."""
        if op.options.get("activation") == "relu":
            return op.outputs[0]
        return self.only_reader(op.outputs[0], "RELU").outputs[0]

    def weights(self, op: Op, depthwise: bool) -> tuple[np.ndarray, np.ndarray, str]:
        if len(op.inputs) < 3 or min(op.inputs[:3]) < 0:
            raise self.fail(f"{op.type} op {op.index} has no bias")
        kernel, bias = self.m.tensor(op.inputs[1]), self.m.tensor(op.inputs[2])
        if kernel.data is None or bias.data is None:
            raise self.fail(f"{op.type} op {op.index} has non-constant weights")
        if kernel.data.ndim != 4 or bias.data.ndim != 1:
            raise self.fail(f"{op.type} op {op.index} has a kernel of shape {kernel.shape} and a bias of shape {bias.shape}")
        k = kernel.data.astype(np.float32)
        # TFLite conv kernels are OHWI; depthwise are 1HWC. PyTorch wants OIHW / C1HW.
        k = k.transpose(3, 0, 1, 2) if depthwise else k.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(k), bias.data.astype(np.float32), kernel.name

    def square(self, op: Op, activations: tuple[str | None, ...] = (None, "relu", "relu6")) -> int:
        """The stride of a conv or pool that the torch layers can reproduce (square stride and
        window, no dilation, a fused activation they apply), else a :class:`ConversionError`."""
        o = op.options
        ok = (o["stride"][0] == o["stride"][1] and o.get("dilation", (1, 1)) == (1, 1)
              and len(set(o.get("filter", (1, 1)))) == 1 and o.get("activation") in activations)
        if not ok:
            raise self.fail(f"{op.type} op {op.index} has stride {o['stride']}, dilation {o.get('dilation')}, "
                            f"window {o.get('filter')}, activation {o.get('activation')!r}")
        return int(o["stride"][0])

    def data_inputs(self, op: Op, n: int) -> list[int]:
        """The op's first ``n`` inputs, which must be activations (not constants)."""
        ins = [i for i in op.inputs if i >= 0 and self.m.tensor(i).data is None]
        if len(ins) != n or op.inputs[:n] != ins:
            raise self.fail(f"{op.type} op {op.index} reads {len(ins)} activations, expected {n} first")
        return ins

    def image_input(self) -> int:
        """The input size of a graph with one (1, S, S, 3) image input."""
        if len(self.m.inputs) != 1:
            raise self.fail(f"expected one input, found {len(self.m.inputs)}")
        shape = self.m.tensor(self.m.inputs[0]).shape
        if len(shape) != 4 or shape[0] != 1 or shape[1] != shape[2] or shape[3] != 3:
            raise self.fail(f"expected a square (1, S, S, 3) RGB input, found shape {shape}")
        return int(shape[1])

    def outputs(self) -> dict[str, int]:
        """The graph's two outputs by kind: ``cls`` (1, N, 1) and ``reg`` (1, N, k)."""
        shapes = {o: self.m.tensor(o).shape for o in self.m.outputs}
        kinds = {("cls" if s[-1] == 1 else "reg"): o for o, s in shapes.items() if len(s) == 3 and s[0] == 1}
        if len(self.m.outputs) != 2 or set(kinds) != {"cls", "reg"} or len({s[1] for s in shapes.values()}) != 1:
            raise self.fail(f"expected outputs (1, N, 1) and (1, N, k), found {list(shapes.values())}")
        return kinds


def check_ops(model: TFLiteModel, supported: set[str] | frozenset[str]) -> None:
    """Refuse a graph with an op the extractor does not translate, naming it and what is known (a
    custom op, ``CUSTOM:Name`` in :mod:`blazeport.tflite`, by its own name and version)."""
    unknown = sorted({op.type for op in model.ops} - set(supported))
    customs = {name: v for name, v in model.custom_ops().items() if f"CUSTOM:{name}" in unknown}
    if customs:
        known = [s.partition(":")[2] for s in sorted(supported) if s.startswith("CUSTOM:")]
        named = ", ".join(f"{name} (v{version})" for name, version in customs.items())
        raise ConversionError(
            f"{model.path}: unsupported custom op(s) {named}: not TFLite builtins, and not among the custom ops "
            f"blazeport translates ({', '.join(known) or 'none here'}); this file needs the runtime it was made for."
        )
    if unknown:
        raise ConversionError(
            f"{model.path}: unsupported TFLite op(s) {', '.join(unknown)}. blazeport converts "
            f"{', '.join(sorted(supported))} (plus folded DEQUANTIZE/DENSIFY). "
            f"Known specs: {', '.join(sorted([*SPECS, *LANDMARK_SPECS]))}; "
            "this file needs a newer blazeport."
        )
