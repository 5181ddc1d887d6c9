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

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from blazeport.errors import BlazeportError
from blazeport.specs import SPECS, WEIGHTS_DIR, ModelSpec
from blazeport.tflite import Op, TFLiteModel, read_tflite

# Float32 noise sets the raw tolerance. Raw outputs reach |x| ~ 100-1500 (background logits,
# offsets in input pixels) where one float32 ULP is 8e-6 to 1.2e-4, and LiteRT's XNNPACK output
# itself differs from a float64 evaluation of the same graph by up to 2e-4 relative (measured
# on short range and back). So raw outputs must satisfy |a - b| <= 1e-4 + 1e-3 * |b| (a mapping
# error shows as O(1)), and decoded scores and coordinates agree to 1e-4.
ABS_TOL = 1e-4
REL_TOL = 1e-3
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


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def spec_for_file(path: str | Path) -> ModelSpec | None:
    """The spec whose original file has this sha256, if any."""
    digest = sha256_of(path)
    for spec in SPECS.values():
        if spec.sha256 == digest:
            return spec
    return None


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


def save_safetensors(module: Any, spec: ModelSpec, out: str | Path, source: str | Path | None = None,
                     extra: dict[str, str] | None = None) -> Path:
    """Write weights plus the metadata needed to rebuild the module (family, config, spec).

    ``source`` is the .tflite a conversion came from (name and sha256 recorded); ``extra`` adds
    string metadata (a student records its teacher and training summary). Written atomically and
    byte for byte reproducibly: the same module and metadata give the same file (and sha256).
    """
    from safetensors.torch import save

    out = Path(out)
    meta = {
        "format": "blazeport",
        "spec": json.dumps(spec.to_dict()),
        "family": module.family,
        "config": module.config.to_json(),
        **({"source": Path(source).name, "source_sha256": sha256_of(source)} if source else {}),
        **(extra or {}),
    }
    data = save({k: v.detach().contiguous() for k, v in module.state_dict().items()}, metadata=meta)
    write_atomic(out, _canonical_header(data))
    return out


def write_atomic(out: Path, data: bytes) -> None:
    """Write ``data`` next to ``out``, then rename: an interrupted write never leaves a half file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)


def _canonical_header(data: bytes) -> bytes:
    """The safetensors file with its JSON header's keys sorted.

    safetensors 0.8 writes ``__metadata__`` in Rust hash-map order, which changes from run to run,
    so two conversions of one file differed in bytes. The header is a JSON map whose tensor
    entries carry their own offsets, so reordering its keys leaves the data as it is; it is
    padded with spaces to a multiple of 8 bytes, as safetensors pads it.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-(8 + len(header)) % 8)
    return len(header).to_bytes(8, "little") + header + data[8 + n :]


def load_safetensors(path: str | Path) -> tuple[Any, ModelSpec]:
    """Rebuild a module and its spec from a blazeport safetensors file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from blazeport.models import from_config

    path = Path(path)
    if not path.is_file():
        raise BlazeportError(f"{path}: no such weights file. Run `blazeport convert` on the original .tflite first.")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except Exception as exc:
        raise BlazeportError(f"{path}: not a readable safetensors file ({exc}). Re-run `blazeport convert`.") from None
    if meta.get("format") != "blazeport" or "config" not in meta:
        raise BlazeportError(f"{path}: safetensors without blazeport metadata; convert it with `blazeport convert`.")
    module = from_config(meta.get("family", "blazeface"), meta["config"])
    module.load_state_dict(state, strict=True)
    return module.eval(), ModelSpec.from_dict(json.loads(meta["spec"]))


def compare_outputs(ours: tuple[np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray],
                    spec: ModelSpec, anchors: np.ndarray) -> dict[str, dict[str, float]]:
    """Differences between two backends' raw outputs, raw and as the pipeline uses them.

    Returns ``max_abs_diff`` (raw, per output), ``max_scaled_diff`` (``|a - b| / max(1, |b|)``:
    absolute within [-1, 1], relative beyond) and ``decoded_diff`` (sigmoid scores and normalized
    box/keypoint coordinates, what a user of the detections sees).
    """
    from blazeport.postprocess import decode_boxes, decode_scores

    out: dict[str, dict[str, float]] = {"max_abs_diff": {}, "max_scaled_diff": {}, "tolerance_used": {}}
    for name, a, b in (("regressors", ours[0], ref[0]), ("classificators", ours[1], ref[1])):
        d = np.abs(a.astype(np.float64) - b)
        out["max_abs_diff"][name] = float(d.max())
        out["max_scaled_diff"][name] = float((d / np.maximum(1.0, np.abs(b))).max())
        # fraction of the allowed difference used by the worst element (<= 1 passes)
        out["tolerance_used"][name] = float((d / (ABS_TOL + REL_TOL * np.abs(b))).max())
    bx, kx = decode_boxes(ours[0], anchors, spec.input_size, spec.num_keypoints)
    b0, k0 = decode_boxes(ref[0], anchors, spec.input_size, spec.num_keypoints)
    s, s0 = decode_scores(ours[1], spec.score_clip), decode_scores(ref[1], spec.score_clip)
    out["decoded_diff"] = {
        "scores": float(np.abs(s - s0).max()),
        "coordinates": float(max(np.abs(bx - b0).max(), np.abs(kx - k0).max())),
    }
    return out


def passes(diffs: dict[str, dict[str, float]]) -> bool:
    """The conversion gate: every raw output within ``ABS_TOL + REL_TOL * |ref|`` (numpy's
    ``allclose`` rule), and decoded scores and coordinates within ``ABS_TOL``."""
    raw_ok = all(v <= 1.0 for v in diffs["tolerance_used"].values())
    return raw_ok and all(v <= ABS_TOL for v in diffs["decoded_diff"].values())


def verify(module: Any, tflite_path: str | Path, inputs: np.ndarray, spec: ModelSpec) -> dict[str, dict[str, float]]:
    """Worst differences between the module and LiteRT (XNNPACK, as MediaPipe runs it) over NHWC inputs."""
    from blazeport.anchors import anchors_for
    from blazeport.backends import TFLiteBackend, TorchBackend

    ours = TorchBackend(module)(inputs)
    ref = TFLiteBackend(tflite_path)(inputs)
    return compare_outputs(ours, ref, spec, anchors_for(spec))


def verification_inputs(spec: ModelSpec, images: list[np.ndarray], seed: int = 0) -> np.ndarray:
    """Letterboxed real photos plus one random input, NHWC float32 in the model's range."""
    from blazeport.preprocess import letterbox

    batch = [letterbox(img, spec.input_size, spec.normalization)[0] for img in images]
    rng = np.random.default_rng(seed)
    batch.append(rng.uniform(-1, 1, (spec.input_size, spec.input_size, 3)).astype(np.float32))
    return np.stack(batch)


def convert(
    src: str | Path,
    out: str | Path | None = None,
    spec: ModelSpec | None = None,
    images: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Convert, save and verify one file; return the report (the CLI's ``--json``)."""
    from blazeport.data import sample_images

    t0 = time.perf_counter()
    src = Path(src)
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
    save_safetensors(module, spec, out, src)
    images = images if images is not None else sample_images()
    diffs = verify(module, src, verification_inputs(spec, images), spec)
    report: dict[str, Any] = {
        "spec": spec.name,
        "source": str(src),
        "sha256": sha256_of(src),
        "output": str(out),
        "params": int(sum(p.numel() for p in module.parameters())),
        "tflite_ops": model.op_counts(),
        **diffs,
        "images": len(images),
        "random_inputs": 1,
        "tolerance": {"abs": ABS_TOL, "rel": REL_TOL},
        "ok": passes(diffs),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return report
