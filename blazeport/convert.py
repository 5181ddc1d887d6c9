"""Convert a BlazeFace ``.tflite`` into the PyTorch module, by walking its graph, and verify it.

Weights are not taken in file order. The walk starts at the graph's input and follows tensors:
the stem ``CONV_2D``, then each BlazeBlock as the op pattern ``DEPTHWISE_CONV_2D -> CONV_2D ->
ADD(shortcut) -> RELU`` whose shortcut is the block input, possibly through ``MAX_POOL_2D`` and a
channel ``PAD``; then the heads, found backwards from the output ``CONCATENATION``s through their
``RESHAPE``s. That walk yields both the architecture (a :class:`BlazeFaceConfig`) and, for every
parameter of the module, the TFLite tensor that fills it. Each shape is checked before loading.

Verification runs the original file in LiteRT and the converted module on real photos and a
random input, and reports the worst absolute difference per output.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from blazeport.backends import TFLiteBackend, TorchBackend
from blazeport.errors import BlazeportError
from blazeport.files import check_output, sha256_of, staged
from blazeport.photos import sample_images
from blazeport.specs import SPECS, WEIGHTS_DIR, ModelSpec, spec_for_file
from blazeport.tflite import Op, TFLiteModel, read_tflite
from blazeport.verify import verify
from blazeport.weights import load_safetensors, save_safetensors

SUPPORTED_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "RELU", "MAX_POOL_2D", "PAD", "RESHAPE", "CONCATENATION"}


class ConversionError(BlazeportError):
    """The file is a TFLite model, but not one blazeport can map onto a known architecture."""


@dataclass
class Mapping:
    """The result of walking a graph: architecture plus parameter -> TFLite tensor."""

    config: Any
    family: str = "blazeface"
    params: dict[str, np.ndarray] = field(default_factory=dict)  # torch name -> array in torch layout
    sources: dict[str, str] = field(default_factory=dict)  # torch name -> TFLite tensor name


class _Walker:
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


def check_ops(model: TFLiteModel) -> None:
    unknown = sorted({op.type for op in model.ops} - SUPPORTED_OPS)
    if unknown:
        raise ConversionError(
            f"{model.path}: unsupported TFLite op(s) {', '.join(unknown)}. blazeport converts "
            f"{', '.join(sorted(SUPPORTED_OPS))} (plus folded DEQUANTIZE/DENSIFY); this file needs a newer blazeport."
        )


def extract(model: TFLiteModel) -> Mapping:
    """Walk a BlazeFace graph: return its :class:`BlazeFaceConfig` and its weights by parameter."""
    from blazeport.models.blazeface import BlazeFaceConfig, BlockConfig

    check_ops(model)
    w = _Walker(model)
    size = w.image_input()
    kinds = w.outputs()
    params: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}

    def put(prefix: str, op: Op, depthwise: bool = False) -> tuple[int, ...]:
        k, b, name = w.weights(op, depthwise)
        # Conv2dSame and the 1x1 convs reproduce TF SAME padding; VALID equals it only for 1x1, stride 1
        if op.options["padding"] != "SAME" and (w.square(op) > 1 or k.shape[-1] > 1):
            raise w.fail(f"{op.type} op {op.index} uses {op.options['padding']} padding")
        if prefix.startswith("head.") and w.square(op) != 1:  # SSDHead's convs have stride 1
            raise w.fail(f"head conv op {op.index} has stride {op.options['stride']}")
        params[f"{prefix}.weight"], params[f"{prefix}.bias"] = k, b
        sources[f"{prefix}.weight"], sources[f"{prefix}.bias"] = name, model.tensor(op.inputs[2]).name
        return k.shape

    stem = w.only_reader(model.inputs[0], "CONV_2D")
    stem_shape = put("stem", stem)
    w.square(stem)
    x = w.activation_after(stem)
    blocks: list[BlockConfig] = []
    block_out: dict[int, int] = {}  # tensor index -> block index
    while True:
        dws = w.readers(x, "DEPTHWISE_CONV_2D")
        if not dws:
            break
        if len(dws) != 1:
            raise w.fail(f"block input {model.tensor(x).name!r} feeds {len(dws)} depthwise convs")
        dw = dws[0]
        pw = w.only_reader(dw.outputs[0], "CONV_2D")
        i = len(blocks)
        dw_shape = put(f"blocks.{i}.dw", dw, depthwise=True)
        pw_shape = put(f"blocks.{i}.pw", pw)
        stride = w.square(dw)
        if w.square(pw) != 1:
            raise w.fail(f"block {i}: pointwise conv op {pw.index} has stride {pw.options['stride']}")
        adds = w.readers(pw.outputs[0], "ADD")
        residual = bool(adds)
        if residual:
            add = adds[0]
            others = [t for t in add.inputs if t != pw.outputs[0]]
            if len(others) != 1 or dw_shape[0] > pw_shape[0] or model.tensor(x).shape[1] % stride:
                raise w.fail(f"block {i}: {add.type} op {add.index} is not a shortcut BlazeBlock the module can run")
            # The shortcut must lead back to the block input through pool/pad only.
            t = others[0]
            while t != x:
                prod = w.producers.get(t)
                if prod is None or prod.type not in ("MAX_POOL_2D", "PAD") or prod.inputs[0] < 0:
                    raise w.fail(f"block {i}: shortcut of {add.type} op {add.index} does not lead back to its input")
                t = prod.inputs[0]
            x = w.activation_after(add)
        else:
            x = w.activation_after(pw)
        blocks.append(BlockConfig(dw_shape[0], pw_shape[0], stride, dw_shape[-1], residual))
        block_out[x] = i

    # Heads: walk back from each output CONCATENATION through RESHAPEs to the 1x1 convs.
    levels: dict[str, list[tuple[Op, int]]] = {}
    for kind, out in kinds.items():
        t = model.tensor(out)
        concat = w.producers.get(out)
        parts = concat.inputs if concat is not None and concat.type == "CONCATENATION" else [out]
        for part in parts:
            op = w.producers.get(part)
            while op is not None and op.type == "RESHAPE" and op.inputs[0] >= 0:
                op = w.producers.get(op.inputs[0])
            if op is None or op.type != "CONV_2D" or op.inputs[0] not in block_out:
                raise w.fail(f"output {t.name!r} is not a concatenation of 1x1 convs on block outputs")
            levels.setdefault(kind, []).append((op, block_out[op.inputs[0]]))
    if set(levels) != {"cls", "reg"} or len(levels["cls"]) != len(levels["reg"]):
        raise w.fail("expected one classificators and one regressors output with matching levels")
    anchors: list[int] = []
    num_coords = model.tensor(kinds["reg"]).shape[-1]
    rows = 0
    for j, ((cls_op, src), (reg_op, reg_src)) in enumerate(zip(levels["cls"], levels["reg"], strict=True)):
        if src != reg_src:
            raise w.fail(f"head level {j}: classifier and regressor read different feature maps")
        a = put(f"head.cls.{j}", cls_op)[0]
        if put(f"head.reg.{j}", reg_op)[0] != a * num_coords:
            raise w.fail(f"head level {j}: {a} anchors but {model.tensor(reg_op.outputs[0]).shape[-1]} regressor channels")
        _, h, w_, _ = model.tensor(cls_op.outputs[0]).shape
        rows += h * w_ * a
        anchors.append(a)
    # SSDHead flattens each level to (1, H*W*A, k); the graph's outputs must have those rows
    if model.tensor(kinds["cls"]).shape[1] != rows:
        raise w.fail(f"the heads give {rows} anchors, the outputs have {model.tensor(kinds['cls']).shape[1]}")
    config = BlazeFaceConfig(
        input_size=size,
        stem_channels=stem_shape[0],
        stem_kernel=stem_shape[-1],
        stem_stride=stem.options["stride"][0],
        blocks=tuple(blocks),
        head_sources=tuple(src for _, src in levels["cls"]),
        head_anchors=tuple(anchors),
        num_coords=num_coords,
    )
    return Mapping(config, params=params, sources=sources)


GRAPH_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "PAD", "MAX_POOL_2D", "ADD", "RELU", "RESIZE_BILINEAR",
             "DEPTH_TO_SPACE", "RESHAPE", "CONCATENATION"}


def extract_graph(model: TFLiteModel) -> Mapping:
    """Translate a whole TFLite graph, op by op, into a :class:`GraphConfig` and its weights.

    Used for the networks that are not plain BlazeFace (full range dense and sparse). Each op
    becomes a :class:`Node` named by its kind and position; NHWC attributes are kept as TFLite
    states them and translated by :class:`GraphNet` where it runs them.
    """
    from blazeport.models.graph import GraphConfig, Node, _param_name

    w = _Walker(model)
    unknown = sorted({op.type for op in model.ops} - GRAPH_OPS)
    if unknown:
        raise ConversionError(
            f"{model.path}: unsupported TFLite op(s) {', '.join(unknown)}. blazeport converts "
            f"{', '.join(sorted(GRAPH_OPS))} (plus folded DEQUANTIZE/DENSIFY). Known specs: {', '.join(sorted(SPECS))}; "
            "this file needs a newer blazeport."
        )
    size = w.image_input()
    kinds = w.outputs()
    names = {model.inputs[0]: "input"}
    counts: dict[str, int] = {}
    nodes: list[Node] = []
    params: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}

    def const(i: int) -> np.ndarray:
        data = model.tensor(i).data
        if data is None:
            raise w.fail(f"tensor {model.tensor(i).name!r} was expected to be a constant")
        return data

    for op in model.ops:
        act = [names[i] for i in w.data_inputs(op, {"ADD": 2, "CONCATENATION": len(op.inputs)}.get(op.type, 1))]
        kind = op.type.lower()
        attrs: dict[str, Any] = {}
        if op.type in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            depthwise = op.type == "DEPTHWISE_CONV_2D"
            if depthwise and op.options.get("depth_multiplier", 1) != 1:
                raise w.fail(f"op {op.index}: depthwise conv with depth_multiplier {op.options['depth_multiplier']}")
            w.square(op)
            k, b, src = w.weights(op, depthwise)
            if (k.shape[1] if not depthwise else k.shape[0]) != model.tensor(op.inputs[0]).shape[-1]:
                raise w.fail(f"op {op.index}: grouped conv (kernel {model.tensor(op.inputs[1]).shape})")
            kind = "dwconv" if depthwise else "conv"
            attrs = {"in_ch": int(k.shape[0] if depthwise else k.shape[1]), "out_ch": int(k.shape[0]),
                     "kernel": int(k.shape[-1]), "stride": op.options["stride"][0],
                     "padding": op.options["padding"], "activation": op.options["activation"]}
        elif op.type == "PAD":
            pads = const(op.inputs[1]).astype(int).tolist()
            if len(pads) != 4 or pads[0] != [0, 0]:
                raise w.fail(f"op {op.index}: PAD of a rank-{len(pads)} tensor or on the batch axis")
            kind, attrs = "pad", {"hwc": pads[1:]}
        elif op.type == "MAX_POOL_2D":
            w.square(op)
            o = op.options
            kind, attrs = "maxpool", {"kernel": o["filter"][0], "stride": o["stride"][0], "padding": o["padding"],
                                      "activation": o["activation"]}
        elif op.type == "ADD":
            if op.options["activation"] not in (None, "relu", "relu6"):
                raise w.fail(f"op {op.index}: ADD with fused {op.options['activation']}")
            attrs = {"activation": op.options["activation"]}
        elif op.type == "RESIZE_BILINEAR":
            kind = "resize_bilinear"
            attrs = {"size": const(op.inputs[1]).astype(int).tolist(), "align_corners": op.options["align_corners"]}
            if not op.options["half_pixel_centers"] and not op.options["align_corners"]:
                raise w.fail(f"op {op.index}: legacy RESIZE_BILINEAR sampling (no half-pixel centres)")
        elif op.type == "DEPTH_TO_SPACE":
            attrs = {"block_size": op.options["block_size"]}
        elif op.type == "RESHAPE":
            shape = model.tensor(op.outputs[0]).shape
            if len(shape) != 3 or len(model.tensor(op.inputs[0]).shape) != 4 or shape[0] != 1:
                raise w.fail(f"op {op.index}: RESHAPE to {shape}; only (1, H, W, C) -> (1, N, k) is supported")
            kind, attrs = "flatten", {"last_dim": int(shape[-1])}
        elif op.type == "CONCATENATION":
            rank = len(model.tensor(op.outputs[0]).shape)
            axis = op.options["axis"] % rank
            if rank != 3 or axis != 1:
                raise w.fail(f"op {op.index}: CONCATENATION on axis {op.options['axis']} of a rank-{rank} tensor")
            kind, attrs = "concat", {"axis": 1}
        counts[kind] = counts.get(kind, 0) + 1
        name = f"{kind}{counts[kind] - 1}"
        names[op.outputs[0]] = name
        node = Node(kind, tuple(act), name, attrs)
        nodes.append(node)
        if kind in ("conv", "dwconv"):
            pname = f"layers.{_param_name(node)}"
            params[f"{pname}.weight"], params[f"{pname}.bias"] = k, b
            sources[f"{pname}.weight"], sources[f"{pname}.bias"] = src, model.tensor(op.inputs[2]).name
    if any(o not in names for o in kinds.values()):
        raise w.fail("an output is not computed from the input")
    config = GraphConfig(size, "input", (names[kinds["reg"]], names[kinds["cls"]]), tuple(nodes))
    return Mapping(config, params=params, sources=sources)


def build_module(family: str, config: Any) -> Any:
    from blazeport.models import FAMILIES

    return FAMILIES[family][1](config)


def load_tflite(path: str | Path, family: str | None = None) -> tuple[Any, Mapping]:
    """Build the module for a ``.tflite`` file and load its weights, checking every shape.

    ``family`` is ``blazeface`` (the readable BlazeFace module) or ``graph`` (:class:`GraphNet`);
    by default the spec of a known file decides, and an unknown file gets the BlazeFace walk
    first, then the generic graph.
    """
    import torch

    model = read_tflite(path)
    if family is None:
        spec = spec_for_file(path)
        family = spec.family if spec is not None else None
    if family is None:
        try:
            mapping, family = extract(model), "blazeface"
        except ConversionError:
            mapping, family = extract_graph(model), "graph"
    else:
        mapping = extract(model) if family == "blazeface" else extract_graph(model)
    mapping.family = family
    module = build_module(family, mapping.config).eval()
    state = module.state_dict()
    missing = sorted(set(state) - set(mapping.params))
    extra = sorted(set(mapping.params) - set(state))
    if missing or extra:
        raise ConversionError(f"{path}: graph and module disagree: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, arr in mapping.params.items():
        if tuple(state[name].shape) != arr.shape:
            raise ConversionError(
                f"{path}: {mapping.sources[name]} has shape {arr.shape}, module parameter {name} wants {tuple(state[name].shape)}"
            )
    module.load_state_dict({k: torch.from_numpy(v) for k, v in mapping.params.items()}, strict=True)
    return module, mapping


def convert(
    src: str | Path,
    out: str | Path | None = None,
    spec: ModelSpec | None = None,
    images: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Convert, verify and save one file; return the report (the CLI's ``--json``).

    The weights go to a temporary file that is read back and verified against LiteRT; only a
    file that passes the gate replaces ``out`` (``report["written"]``). A failed conversion
    leaves any previous ``out`` untouched and writes nothing.
    """
    t0 = time.perf_counter()
    src = Path(src)
    if out is not None:
        out = Path(out)
        if out.suffix != ".safetensors":
            raise ConversionError(f"{out}: converted weights are a .safetensors file; choose an -o name ending in .safetensors")
        check_output(out, [src], "converted weights")
    model = read_tflite(src)
    spec = spec or spec_for_file(src)
    module, mapping = load_tflite(src)
    if spec is None:
        spec = next((s for s in SPECS.values() if s.input_size == mapping.config.input_size), None)
        if spec is None:
            known = ", ".join(f"{s.name} ({s.input_size}px)" for s in SPECS.values())
            raise ConversionError(
                f"{src}: no known spec has input size {mapping.config.input_size}; known specs: {known}. Pass --spec."
            )
    if mapping.config.input_size != spec.input_size:
        raise ConversionError(f"{src}: input is {mapping.config.input_size}px but spec {spec.name} expects {spec.input_size}px")
    out = Path(out) if out else WEIGHTS_DIR / f"{spec.name}.safetensors"
    check_output(out, [src], "converted weights")
    images = images if images is not None else sample_images()
    with staged(out) as stage:
        # verify what was written, read back from disk, against LiteRT (XNNPACK, as MediaPipe runs
        # it), and only then replace the previous output
        save_safetensors(module, spec, stage.path, src)
        written, _ = load_safetensors(stage.path)
        check = verify(TorchBackend(written), TFLiteBackend(src), spec, images)
        ok = check["passes_gate"]
        if ok:
            stage.commit()
    report: dict[str, Any] = {
        "spec": spec.name,
        "source": str(src),
        "sha256": sha256_of(src),
        "output": str(out),
        "written": ok,
        "params": int(sum(p.numel() for p in module.parameters())),
        "tflite_ops": model.op_counts(),
        **check,
        "ok": ok,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return report
