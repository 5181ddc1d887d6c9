"""A network described as data: TFLite's op list, one torch layer per op, run in graph order.

The BlazeFace family (:mod:`blazeport.models.blazeface`) is a hand-readable module. The
full-range detectors are other networks (double BlazeBlocks, a feature pyramid with bilinear
upsampling; the sparse file is an MLIR-lowered graph with explicit PADs, fused activations and a
DEPTH_TO_SPACE head), and MediaPipe ships more (BlazePalm, the pose detector). Rather than a
hand-written module per file, :class:`GraphNet` takes the graph itself as its configuration: a
list of :class:`Node` (op, input names, output name, attributes) read from the file by
:func:`blazeport.convert.extract_graph`, stored as JSON beside the weights. Adding a detector
whose ops are in :data:`OPS` needs a spec, not code.

Layout: NCHW inside; each op's NHWC attributes (paddings, concat axes, DEPTH_TO_SPACE order)
are translated where the op runs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blazeport.models.blocks import same_padding
from blazeport.models.custom_ops import landmarks_to_transform_matrix, transform_landmarks, transform_tensor_bilinear

# MediaPipe's custom ops (blazeport.models.custom_ops), as nodes
CUSTOM_NODES = ("landmarks_to_matrix", "transform_tensor", "transform_landmarks")

OPS = ("conv", "dwconv", "pad", "maxpool", "add", "relu", "prelu", "resize_bilinear", "depth_to_space", "flatten",
       "concat", "reshape", "mul", "slice", *CUSTOM_NODES)
# ops with parameters: each node of these owns ``layers[param_name(node)]``
PARAM_OPS = ("conv", "dwconv", "prelu")


@dataclass(frozen=True)
class Node:
    op: str
    inputs: tuple[str, ...]
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GraphConfig:
    input_size: int
    input: str
    outputs: tuple[str, ...]  # (regressors, classificators), or a landmark model's outputs in file order
    nodes: tuple[Node, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> GraphConfig:
        d = json.loads(text)
        nodes = tuple(Node(n["op"], tuple(n["inputs"]), n["output"], n["attrs"]) for n in d["nodes"])
        return cls(d["input_size"], d["input"], tuple(d["outputs"]), nodes)


def _activate(x: torch.Tensor, name: str | None) -> torch.Tensor:
    if name is None:
        return x
    if name == "relu":
        return F.relu(x)
    if name == "relu6":
        return F.relu6(x)
    raise ValueError(f"fused activation {name!r} is not supported")


def param_name(node: Node) -> str:
    return "l_" + "".join(c if c.isalnum() else "_" for c in node.output)


class GraphNet(nn.Module):
    """Runs a :class:`GraphConfig`; convs are ``nn.Conv2d`` with names derived from TFLite's."""

    family = "graph"

    def __init__(self, config: GraphConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleDict()
        for node in config.nodes:
            if node.op not in OPS:
                raise ValueError(f"op {node.op!r} is not supported by GraphNet")
            if node.op in ("conv", "dwconv"):
                a = node.attrs
                groups = a["in_ch"] if node.op == "dwconv" else 1
                self.layers[param_name(node)] = nn.Conv2d(a["in_ch"], a["out_ch"], a["kernel"], a["stride"], groups=groups)
            elif node.op == "prelu":  # the per-channel slopes (weight, shape (C,))
                self.layers[param_name(node)] = nn.PReLU(node.attrs["channels"])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env: dict[str, torch.Tensor] = {self.config.input: x}
        for node in self.config.nodes:
            layer = self.layers[param_name(node)] if node.op in PARAM_OPS else None
            env[node.output] = run_node(node, [env[i] for i in node.inputs], layer)
        return tuple(env[name] for name in self.config.outputs)


def run_node(node: Node, ins: list[torch.Tensor], layer: nn.Module | None = None) -> torch.Tensor:
    """One node's output from its inputs (``layer``: the node's ``nn.Conv2d`` for conv/dwconv, its
    ``nn.PReLU`` for prelu).

    The reference semantics of every op in :data:`OPS`: :class:`GraphNet` runs this, and the
    runtime plans of :mod:`blazeport.models.fused` fall back to it for ops they do not fuse.
    """
    a = node.attrs
    if node.op in ("conv", "dwconv"):
        x = ins[0]
        if a["padding"] == "SAME":
            ph = same_padding(x.shape[-2], a["kernel"], a["stride"])
            pw = same_padding(x.shape[-1], a["kernel"], a["stride"])
            if any(ph + pw):
                x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]))
        if layer is None:
            raise ValueError(f"{node.op} {node.output!r} needs its nn.Conv2d")
        return _activate(layer(x), a.get("activation"))
    if node.op == "pad":
        (t, b), (left, r), (c0, c1) = a["hwc"]  # NHWC paddings without the batch axis
        return F.pad(ins[0], (left, r, t, b, c0, c1))
    if node.op == "maxpool":
        k, s = a["kernel"], a["stride"]
        z = ins[0]
        if a["padding"] == "SAME":
            ph, pw = same_padding(z.shape[-2], k, s), same_padding(z.shape[-1], k, s)
            if any(ph + pw):
                z = F.pad(z, (pw[0], pw[1], ph[0], ph[1]), value=float("-inf"))
        return _activate(F.max_pool2d(z, k, s), a.get("activation"))
    if node.op == "add":
        return _activate(ins[0] + ins[1], a.get("activation"))
    if node.op == "relu":
        return F.relu(ins[0])
    if node.op == "prelu":
        # TFLite PRELU: x >= 0 ? x : alpha[c] * x, one slope per channel (NCHW: dim 1)
        if layer is None:
            raise ValueError(f"prelu {node.output!r} needs its nn.PReLU (the slopes)")
        return F.prelu(ins[0], layer.weight)
    if node.op == "resize_bilinear":
        # TFLite half_pixel_centers=True, align_corners=False is PyTorch's default sampling
        return F.interpolate(ins[0], size=tuple(a["size"]), mode="bilinear", align_corners=a["align_corners"])
    if node.op == "depth_to_space":
        # TF's DCR order: input channel (i * bs + j) * C + c goes to pixel (h*bs+i, w*bs+j), channel c.
        # torch.pixel_shuffle uses CRD order (c * bs * bs + i * bs + j), so reorder explicitly.
        bs = a["block_size"]
        b, c, h, w = ins[0].shape
        y = ins[0].reshape(b, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
        return y.reshape(b, c // (bs * bs), h * bs, w * bs)
    if node.op == "flatten":
        # TFLite RESHAPE (1, H, W, A*k) -> (1, H*W*A, k) in NHWC order; rank 2: (1, H, W, C) -> (1, H*W*C)
        if a.get("rank", 3) == 2:
            return ins[0].permute(0, 2, 3, 1).reshape(ins[0].shape[0], -1)
        return ins[0].permute(0, 2, 3, 1).reshape(ins[0].shape[0], -1, a["last_dim"])
    if node.op == "concat":  # along the anchor axis of (B, N, k) tensors
        return torch.cat(ins, dim=a["axis"])
    return _run_other(node, ins)


def _run_other(node: Node, ins: list[torch.Tensor]) -> torch.Tensor:
    """The ops of tensors that are not only feature maps (the attention mesh's landmarks and
    matrices, kept in TFLite's layout; a rank-4 tensor is a feature map, NCHW here, NHWC in TFLite)."""
    a, x = node.attrs, ins[0]
    if node.op == "reshape":  # TFLite RESHAPE of a non-feature-map tensor, batch kept: shape excludes it
        y = x.reshape(x.shape[0], *a["shape"])
        return y.permute(0, 3, 1, 2) if len(a["shape"]) == 3 else y  # (B, H, W, C) -> a feature map
    if node.op == "mul":  # TFLite MUL by a constant, broadcast as TFLite does (per channel on a feature map)
        value = torch.tensor(a["value"], dtype=x.dtype, device=x.device).reshape(a["shape"])
        if a["feature_map"]:
            value = value.reshape(-1, 1, 1) if value.numel() > 1 else value.reshape(())
        return x * value
    if node.op == "slice":  # TFLite STRIDED_SLICE, spans (begin, end, stride) of the axes after the batch
        y = x.permute(0, 2, 3, 1) if a["feature_map"] else x
        y = y[(slice(None), *(slice(b, e, s) for b, e, s in a["spans"]))]
        return y.permute(0, 3, 1, 2) if a["feature_map"] else y
    if node.op == "landmarks_to_matrix":
        return landmarks_to_transform_matrix(x, a["subset"], a["left"], a["right"], a["target_rotation"],
                                             a["output_height"], a["output_width"], a["scale_x"], a["scale_y"])
    if node.op == "transform_tensor":
        return transform_tensor_bilinear(x, ins[1], a["output_height"], a["output_width"])
    if node.op == "transform_landmarks":
        return transform_landmarks(x, ins[1])
    raise ValueError(f"op {node.op!r} is not supported by GraphNet")
