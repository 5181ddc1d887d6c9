"""A faster way to *run* a converted network: the same weights, planned once as fused calls.

Why: run as written, the converted modules spend most of their time around the arithmetic. A
profile of short range at 1 thread: 37 convs, 16 residual adds, 17 ReLUs, 15 pads (TF "SAME" on
the stride-2 layers, zero channels on every widening shortcut) and 3 max-pools per call, each its
own PyTorch op with its own freshly allocated output (the 64x64 maps page-faulted ~500 times per
call), and PyTorch's conv heuristics sending 20 of the convs (1x1 at 1 thread) to
``aten::_slow_conv2d_forward`` and the rest to oneDNN with the weights reordered on every call.
On this 2-core host each oneDNN call through PyTorch costs ~40 us before any arithmetic, so the
number of calls matters more than what each one computes.

:func:`prepare` turns a module into a :class:`FastModule`: the network as a list of nodes (a
:class:`~blazeport.models.graph.GraphNet`'s own nodes, or the equivalent list for a
:class:`~blazeport.models.blazeface.BlazeFace`), fused into fewer, cheaper steps:

- depthwise and large convs run through oneDNN with their weights reordered once, for the input
  size they will see (``mkldnn._convolution_pointwise``, the op ``torch.compile`` emits for frozen
  CPU convs); every tensor stays channels-last from input to heads, so no call converts layouts;
- a following ReLU, ``+ shortcut``, or ``+ shortcut`` then ReLU are oneDNN post-ops of the conv;
- symmetric padding is folded into the conv (stride-1 "SAME", and the sparse model's explicit
  ``PAD`` before each ``VALID`` depthwise conv); TF's (0, 1) padding of a stride-2 depthwise conv
  becomes a kernel one larger with a zero first row and column (no pad op); only the dense stem
  still pads, once;
- 1x1 convs on maps up to 64x64 are one MKL GEMM on the NHWC memory (then ``+= shortcut`` and
  ReLU in place): cheaper per call than oneDNN there; a head's classifier and regressor share one;
- a shortcut widened by zero channels is added into the first channels of the conv's output
  instead of being padded first; 2x2 max-pools on large maps are two ``torch.maximum`` on views;
- each tensor is dropped after its last use, so the allocator reuses memory (no page faults).

What was measured and not kept (1 thread, same process, interleaved with LiteRT; short range /
sparse full range, times LiteRT's latency): the module 4.2x / 5.6x, this plan 2.4x / 2.0x;
``torch.jit.trace`` + ``freeze`` 3.0x / 2.5x (and deprecated in this torch); ``+
optimize_for_inference`` 4.9x / 4.1x; ``torch.compile`` (inductor) 46 s / 60 s to compile on
first use, then 3.2x on short range and 1.4x slower than the plan on sparse. Per op, also slower
than what is kept: oneDNN's fused 1x1 conv + add + ReLU on maps up to 64x64, an im2col,
space-to-depth or NCHW stem, depthwise convs as 9 shifted multiply-adds, oneDNN-layout tensors.

The module itself is not changed: export traces it, the trainer trains it, ``blazeport convert``
writes it. A plan is a snapshot of the weights when it is built (a new backend sees new weights).
A plan that cannot be built, or whose outputs on a probe input differ from the module's beyond
the conversion gate, is not used: the module runs as it is. Used by
:class:`blazeport.backends.TorchBackend` (``optimize=True``, the default).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blazeport.models.blazeface import BlazeFace
from blazeport.models.blocks import same_padding
from blazeport.models.graph import PARAM_OPS, GraphNet, Node, param_name, run_node
from blazeport.verify import ABS_TOL, REL_TOL

__all__ = ["FastModule", "available", "prepare"]

CHANNELS_LAST = torch.channels_last
Shape = tuple[int, int, int]  # (C, H, W) of a feature map; batch is free


def available() -> bool:
    """Whether this torch has the oneDNN ops a plan is made of (CPU builds with MKLDNN do)."""
    ops = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(ops, "_convolution_pointwise")
            and hasattr(ops, "_reorder_convolution_weight"))


# ---------------------------------------------------------------------------------------------
# The network as nodes: GraphNet has them; BlazeFace is written out as the same ops.


@dataclass
class Graph:
    """Nodes in execution order, the input and output names, and each conv node's layer."""

    input: str
    outputs: tuple[str, str]
    nodes: list[Node]
    layers: dict[str, nn.Conv2d]
    input_size: int
    # other nodes' parameters (prelu's slopes: GraphNet's PARAM_OPS beyond the convs), by node output;
    # such nodes run as NodeOps through run_node with this layer
    params: dict[str, nn.Module] = field(default_factory=dict)


def graph_of(module: nn.Module) -> Graph | None:
    """The module as a :class:`Graph`, or None for a family this planner does not know."""
    if isinstance(module, GraphNet):
        cfg = module.config
        layers = {n.output: module.layers[param_name(n)] for n in cfg.nodes if n.op in ("conv", "dwconv")}
        params = {n.output: module.layers[param_name(n)] for n in cfg.nodes
                  if n.op in PARAM_OPS and n.op not in ("conv", "dwconv")}
        return Graph(cfg.input, cfg.outputs, list(cfg.nodes), layers, cfg.input_size, params)
    if isinstance(module, BlazeFace):
        return _blazeface_graph(module)
    return None


def _blazeface_graph(module: BlazeFace) -> Graph:
    """BlazeFace's forward as GraphNet nodes (same ops, same order of operands)."""
    cfg = module.config
    nodes: list[Node] = []
    layers: dict[str, nn.Conv2d] = {}

    def conv(name: str, layer: nn.Conv2d, x: str, activation: str | None = None) -> str:
        op = "dwconv" if layer.groups > 1 else "conv"
        attrs = {"in_ch": layer.in_channels, "out_ch": layer.out_channels, "kernel": layer.kernel_size[0],
                 "stride": layer.stride[0], "padding": "SAME", "activation": activation}
        nodes.append(Node(op, (x,), name, attrs))
        layers[name] = layer
        return name

    x = conv("stem", module.stem, "input", "relu")
    taps: dict[int, str] = {}
    for i, block in enumerate(module.blocks[: max(cfg.head_sources) + 1]):
        y = conv(f"b{i}.pw", block.pw, conv(f"b{i}.dw", block.dw, x), None if block.residual else "relu")
        if block.residual:
            if block.stride > 1:
                nodes.append(Node("maxpool", (x,), f"b{i}.pool", {"kernel": block.stride, "stride": block.stride,
                                                                 "padding": "VALID"}))
                x = f"b{i}.pool"
            if block.out_ch > block.in_ch:
                nodes.append(Node("pad", (x,), f"b{i}.widen", {"hwc": [[0, 0], [0, 0], [0, block.out_ch - block.in_ch]]}))
                x = f"b{i}.widen"
            nodes.append(Node("add", (x, y), f"b{i}.out", {"activation": "relu"}))
            y = f"b{i}.out"
        x = taps[i] = y
    head = module.head
    outs: dict[str, list[str]] = {"reg": [], "cls": []}
    for level, src in enumerate(cfg.head_sources):
        for kind, layer, last_dim in (("reg", head.reg[level], head.num_coords), ("cls", head.cls[level], 1)):
            name = conv(f"{kind}{level}", layer, taps[src])
            nodes.append(Node("flatten", (name,), f"{name}.flat", {"last_dim": last_dim}))
            outs[kind].append(f"{name}.flat")
    nodes.append(Node("concat", tuple(outs["reg"]), "regressors", {"axis": 1}))
    nodes.append(Node("concat", tuple(outs["cls"]), "classificators", {"axis": 1}))
    return Graph("input", ("regressors", "classificators"), nodes, layers, cfg.input_size)


# ---------------------------------------------------------------------------------------------
# Shapes (C, H, W) of every node, computed from the attributes: SAME pads depend on them.


def _out_size(size: int, kernel: int, stride: int, padding: str) -> int:
    return -(-size // stride) if padding == "SAME" else (size - kernel) // stride + 1


def infer_shapes(graph: Graph, size: tuple[int, int], channels: int = 3) -> dict[str, Shape | None]:
    """Feature-map shape of every tensor (None for the flattened head outputs)."""
    shapes: dict[str, Shape | None] = {graph.input: (channels, *size)}
    for n in graph.nodes:
        a, s = n.attrs, shapes[n.inputs[0]]
        if n.op in ("flatten", "concat"):
            shapes[n.output] = None
            continue
        assert s is not None
        c, h, w = s
        if n.op in ("conv", "dwconv"):
            shapes[n.output] = (a["out_ch"], _out_size(h, a["kernel"], a["stride"], a["padding"]),
                                _out_size(w, a["kernel"], a["stride"], a["padding"]))
        elif n.op == "maxpool":
            shapes[n.output] = (c, _out_size(h, a["kernel"], a["stride"], a["padding"]),
                                _out_size(w, a["kernel"], a["stride"], a["padding"]))
        elif n.op == "pad":
            (t, b), (left, r), (c0, c1) = a["hwc"]
            shapes[n.output] = (c + c0 + c1, h + t + b, w + left + r)
        elif n.op == "resize_bilinear":
            shapes[n.output] = (c, *a["size"])
        elif n.op == "depth_to_space":
            bs = a["block_size"]
            shapes[n.output] = (c // (bs * bs), h * bs, w * bs)
        else:  # add, relu
            shapes[n.output] = s
    return shapes


# ---------------------------------------------------------------------------------------------
# Fusion: which nodes become one call.


@dataclass
class ConvOp:
    """A conv with everything fused into it: pads, then ``act(conv(x) [+ other])``."""

    node: Node  # the conv node
    input: str
    output: str  # the name this op defines (the add's or relu's output when fused)
    pads: tuple[int, int, int, int]  # (top, bottom, left, right) zero padding of the input
    in_shape: Shape  # the unpadded input
    other: str | None = None  # added to the conv output (same shape), or into its first channels
    widen: bool = False  # ``other`` has fewer channels: the shortcut's zero channels are skipped
    relu: bool = False


@dataclass
class NodeOp:
    """A node run with GraphNet's reference semantics (:func:`run_node`), optionally then ReLU."""

    node: Node
    inputs: tuple[str, ...]
    output: str
    relu: bool = False


@dataclass
class GemmGroup:
    """1x1 convs that read the same map (a head's classifier and regressor): one GEMM with their
    weights side by side, each output a column slice of the result."""

    members: list[ConvOp]


Op = ConvOp | NodeOp | GemmGroup


def fuse(graph: Graph, shapes: dict[str, Shape | None]) -> list[Op]:
    """The graph as fused ops, in an order where every op's inputs exist when it runs."""
    consumers: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for i in n.inputs:
            consumers.setdefault(i, []).append(n)
    outputs = set(graph.outputs)

    def only_use(name: str, node: Node) -> bool:
        """``node`` is the single consumer of ``name`` (and the graph does not return it)."""
        return name not in outputs and [c.output for c in consumers.get(name, [])] == [node.output]

    producer = {n.output: n for n in graph.nodes}
    absorbed: set[str] = set()  # nodes folded into another op
    renamed: dict[str, str] = {}  # a fused relu's output -> the op output that replaces it
    deferred: dict[str, ConvOp] = {}  # conv output -> its op, emitted later at the add that uses it

    def absorb_relu(out: str) -> bool:
        """Fold the one ReLU that alone reads ``out`` into the op writing ``out`` (unless a model
        output needs the value before the ReLU); True when it was folded."""
        users = consumers.get(out, [])
        if len(users) != 1 or users[0].op != "relu" or out in outputs | {users[0].output}:
            return False
        absorbed.add(users[0].output)
        renamed[users[0].output] = out
        return True

    def conv_op(n: Node) -> ConvOp:
        """The conv with its input pads folded: SAME pads, plus a spatial-only PAD feeding it alone."""
        src, (c, h, w) = n.inputs[0], shapes[n.inputs[0]]  # type: ignore[misc]
        t = b = left = r = 0
        p = producer.get(src)
        if p is not None and p.op == "pad" and p.attrs["hwc"][2] == [0, 0] and only_use(src, n):
            (t, b), (left, r), _ = p.attrs["hwc"]
            absorbed.add(p.output)
            src, (c, h, w) = p.inputs[0], shapes[p.inputs[0]]  # type: ignore[misc]
        a = n.attrs
        if a["padding"] == "SAME":
            ph = same_padding(h + t + b, a["kernel"], a["stride"])
            pw = same_padding(w + left + r, a["kernel"], a["stride"])
            t, b, left, r = t + ph[0], b + ph[1], left + pw[0], r + pw[1]
        relu = a.get("activation") == "relu"
        if a.get("activation") not in (None, "relu"):
            raise ValueError(f"fused activation {a.get('activation')!r}")
        out = n.output
        relu = relu or absorb_relu(out)
        return ConvOp(n, src, out, (t, b, left, r), (c, h, w), relu=relu)

    # first: every conv with its pads (a PAD folded into a conv is not run), and which adds take
    # a conv in (that conv then runs at the add's place, when the add's other operand exists)
    convs = {n.output: conv_op(n) for n in graph.nodes if n.op in ("conv", "dwconv")}
    add_of_conv: dict[str, tuple[str, str, bool]] = {}  # add output -> (conv output, other, widen)
    for n in graph.nodes:
        if n.op != "add" or n.attrs.get("activation") not in (None, "relu"):
            continue
        for mine, other in ((n.inputs[1], n.inputs[0]), (n.inputs[0], n.inputs[1])):
            if mine not in convs or convs[mine].relu or convs[mine].output != mine or not only_use(mine, n):
                continue
            q, widen = producer.get(other), False
            if q is not None and q.op == "pad" and only_use(other, n):
                (t, b), (left, r), (c0, c1) = q.attrs["hwc"]
                if t == b == left == r == c0 == 0 and c1 > 0:  # the shortcut widened by zero channels
                    absorbed.add(other)
                    other, widen = q.inputs[0], True
            if not widen and shapes[other] != shapes[mine]:
                continue
            add_of_conv[n.output] = (mine, other, widen)
            break

    ops: list[ConvOp | NodeOp] = []
    for n in graph.nodes:
        if n.output in absorbed:
            continue
        if n.op in ("conv", "dwconv"):
            op = convs[n.output]
            if any(n.output == v[0] for v in add_of_conv.values()):
                deferred[n.output] = op
            else:
                ops.append(op)
            continue
        if n.op == "add" and n.output in add_of_conv:
            mine, other, widen = add_of_conv[n.output]
            op = deferred.pop(mine)
            out = n.output
            relu = n.attrs.get("activation") == "relu" or absorb_relu(out)
            ops.append(replace(op, output=out, other=renamed.get(other, other), widen=widen, relu=relu))
            continue
        relu = n.op in ("add", "maxpool") and n.attrs.get("activation") == "relu"
        ins = tuple(renamed.get(i, i) for i in n.inputs)
        ops.append(NodeOp(n, ins, n.output, relu))
    # names defined by a fused relu are read under the op's name
    for op in ops:
        if isinstance(op, ConvOp):
            op.input = renamed.get(op.input, op.input)
    return _group_gemms(ops, graph.layers)


def _group_gemms(ops: list[ConvOp | NodeOp], layers: dict[str, nn.Conv2d]) -> list[Op]:
    """Plain 1x1 convs on the same input, all GEMMs (:func:`_is_gemm`), become one :class:`GemmGroup`
    at the first one's place (saves a call per head level: the classifier's 1-6 outputs are too
    narrow for a GEMM of their own, and oneDNN's call costs ~40 us)."""
    siblings: dict[str, list[ConvOp]] = {}
    for op in ops:
        if isinstance(op, ConvOp) and op.other is None and not op.relu and _is_gemm(op, layers[op.node.output], 1):
            siblings.setdefault(op.input, []).append(op)
    grouped = {id(m): members for members in siblings.values() if len(members) > 1 for m in members}
    out: list[Op] = []
    for op in ops:
        members = grouped.get(id(op))
        if members is None:
            out.append(op)
        elif op is members[0]:
            out.append(GemmGroup(members))
    return out


# ---------------------------------------------------------------------------------------------
# The plan: fused ops as closures over slot numbers, each tensor freed after its last reader.

Step = Callable[[list[Any]], None]


class Plan:
    """The fused ops for one input size, as closures over a list of tensors (slots)."""

    def __init__(self, graph: Graph, size: tuple[int, int]):
        shapes = infer_shapes(graph, size)
        ops = fuse(graph, shapes)
        slot: dict[str, int] = {graph.input: 0}
        for op in ops:
            for name in _defines(op):
                slot.setdefault(name, len(slot))
        reads = [_reads(op) for op in ops]
        last: dict[str, int] = {}
        for k, names in enumerate(reads):
            for name in names:
                last[name] = k
        self.steps: list[Step] = []
        for k, (op, names) in enumerate(zip(ops, reads, strict=True)):
            free = [slot[n] for n in dict.fromkeys(names) if last[n] == k and n not in graph.outputs]
            if isinstance(op, ConvOp):
                step = _conv_step(op, graph.layers[op.node.output], slot, shapes)
            elif isinstance(op, GemmGroup):
                step = _group_step(op, graph.layers, slot)
            else:
                step = _node_step(op, slot, shapes, graph.params.get(op.node.output))
            self.steps.append(_freeing(step, free) if free else step)
        self.n_slots = len(slot)
        self.outputs = (slot[graph.outputs[0]], slot[graph.outputs[1]])

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        env: list[Any] = [None] * self.n_slots
        env[0] = x
        for step in self.steps:
            step(env)
        return env[self.outputs[0]], env[self.outputs[1]]


def _defines(op: Op) -> list[str]:
    return [m.output for m in op.members] if isinstance(op, GemmGroup) else [op.output]


def _reads(op: Op) -> list[str]:
    if isinstance(op, GemmGroup):
        return [op.members[0].input]
    if isinstance(op, ConvOp):
        return [op.input] + ([op.other] if op.other else [])
    return list(op.inputs)


def _freeing(step: Step, free: list[int]) -> Step:
    def run(env: list[Any]) -> None:
        step(env)
        for i in free:
            env[i] = None  # the last reader ran: let the allocator reuse the memory

    return run


# Which 1x1 convs run as an MKL GEMM (see _gemm_step) rather than oneDNN: measured per shape on
# these networks (1 thread, min of 300), GEMM + add + ReLU took 0.37-0.9x oneDNN's fused call up
# to 64x64 maps, but 1.4x on 96x96 and 128x128 maps (oneDNN's post-ops save two passes over a
# large output) and 3.1x with 8 output channels (a GEMM that narrow wastes MKL's kernel).
GEMM_MAX_PIXELS = 64 * 64
GEMM_MIN_CHANNELS = 16


def _is_gemm(op: ConvOp, layer: nn.Conv2d, min_channels: int = GEMM_MIN_CHANNELS) -> bool:
    _, h, w = op.in_shape
    return (layer.kernel_size == (1, 1) and layer.stride == (1, 1) and layer.groups == 1 and not any(op.pads)
            and h * w <= GEMM_MAX_PIXELS and layer.out_channels >= min_channels)


def _conv_step(op: ConvOp, layer: nn.Conv2d, slot: dict[str, int], shapes: dict[str, Shape | None]) -> Step:
    """One oneDNN call: ``relu?(conv(pad?(x)) + other?)``, weights reordered once, here."""
    if _is_gemm(op, layer):
        return _gemm_step(op, layer, slot, shapes)
    pointwise = torch.ops.mkldnn._convolution_pointwise
    t, b, left, r = op.pads
    c, h, w = op.in_shape
    weight = layer.weight.detach().float().contiguous()
    stride, groups = list(layer.stride), layer.groups
    pre: tuple[int, int, int, int] | None = None
    if t == b and left == r:  # symmetric: oneDNN pads inside the conv, no extra tensor
        padding = [t, left]
    elif groups > 1 and b - t in (0, 1) and r - left in (0, 1):
        # TF SAME on a stride-2 depthwise conv pads (0, 1): one zero row/column after, none
        # before, which oneDNN's symmetric padding cannot say. A kernel one larger whose first
        # row/column is zero, padded (1, 1), reads exactly the same pixels with the same weights
        # (the extra tap multiplies the extra padding row by 0) and saves the F.pad of the whole
        # map (measured: 28ch 64x64 stride 2, 69 vs 98 us; identical outputs). Not for the dense
        # stem, where the extra taps cost more than the pad (5x5 -> 6x6 on 3 channels).
        weight = F.pad(weight, (r - left, 0, b - t, 0))  # (O, 1, kh + 1?, kw + 1?): zeros first
        padding = [b, r]
    else:  # asymmetric on a dense conv (the 5x5 stem pads (1, 2)): pad once here, conv unpadded
        padding, pre = [0, 0], (left, r, t, b)
        h, w = h + t + b, w + left + r
    bias = layer.bias.detach().float().contiguous() if layer.bias is not None else None
    packed = torch.ops.mkldnn._reorder_convolution_weight(weight, padding, stride, [1, 1], groups, [1, c, h, w])
    i, o = slot[op.input], slot[op.output]
    unary = "relu" if op.relu else "none"
    dilation: list[int] = [1, 1]
    if op.other is None:
        conv = pointwise.default

        def run(env: list[Any]) -> None:
            x = env[i] if pre is None else F.pad(env[i], pre)
            env[o] = conv(x, packed, bias, padding, stride, dilation, groups, unary, [], None)

        return run
    j = slot[op.other]
    if op.widen:
        # the shortcut's zero channels add nothing: add it into the first channels of the output
        # (a strided view in channels-last memory) rather than padding it to full width first
        width = shapes[op.other][0]  # type: ignore[index]
        conv = pointwise.default

        def run_widen(env: list[Any]) -> None:
            x = env[i] if pre is None else F.pad(env[i], pre)
            y = conv(x, packed, bias, padding, stride, dilation, groups, "none", [], None)
            y[:, :width].add_(env[j])
            env[o] = y.relu_() if op.relu else y

        return run_widen
    binary = pointwise.binary
    post = "relu" if op.relu else None

    def run_add(env: list[Any]) -> None:
        x = env[i] if pre is None else F.pad(env[i], pre)
        env[o] = binary(x, env[j], packed, bias, padding, stride, dilation, groups, "add", None, post, [], None)

    return run_add


def _gemm_step(op: ConvOp, layer: nn.Conv2d, slot: dict[str, int], shapes: dict[str, Shape | None]) -> Step:
    """A 1x1 conv as ``addmm(bias, x (BHW, Cin), W^T)`` on the channels-last memory viewed as NHWC,
    then ``+= other`` and ``relu_`` in place on that fresh result.

    Why not oneDNN here: on these maps (8x8 to 64x64, 24-96 channels) the arithmetic is a few
    microseconds and each oneDNN call through PyTorch costs ~40 us of set-up (memory descriptors,
    attributes, primitive-cache lookup, scratchpad), three times MKL's GEMM call; the fused
    post-ops do not win that back (measured per shape: 88->96 on 8x8 with add and ReLU, 61 us
    fused in oneDNN vs 24 us GEMM + add + ReLU).
    """
    c_in, c_out = layer.in_channels, layer.out_channels
    weight_t = layer.weight.detach().float().reshape(c_out, c_in).t().contiguous()  # (Cin, Cout)
    bias = (layer.bias.detach().float().contiguous() if layer.bias is not None else torch.zeros(c_out))
    i, o = slot[op.input], slot[op.output]
    j = slot[op.other] if op.other is not None else None
    width = shapes[op.other][0] if op.other is not None else 0  # type: ignore[index]
    widen, relu = op.widen, op.relu

    def run(env: list[Any]) -> None:
        x = env[i]
        n, _, h, w = x.shape
        y = torch.addmm(bias, x.permute(0, 2, 3, 1).reshape(-1, c_in), weight_t)  # (B*H*W, Cout): NHWC memory
        if j is not None:
            shortcut = env[j].permute(0, 2, 3, 1).reshape(-1, width)
            (y[:, :width] if widen else y).add_(shortcut)
        if relu:
            y.relu_()
        env[o] = y.view(n, h, w, c_out).permute(0, 3, 1, 2)  # (B, Cout, H, W) channels-last

    return run


def _group_step(group: GemmGroup, layers: dict[str, nn.Conv2d], slot: dict[str, int]) -> Step:
    """:class:`GemmGroup`: one ``addmm`` with the members' weights side by side; each member's
    output is its column slice, viewed as a channels-last (B, C, H, W) map (no copy)."""
    convs = [layers[m.node.output] for m in group.members]
    c_in = convs[0].in_channels
    weight_t = torch.cat([c.weight.detach().float().reshape(c.out_channels, c_in) for c in convs]).t().contiguous()
    bias = torch.cat([c.bias.detach().float() if c.bias is not None else torch.zeros(c.out_channels) for c in convs])
    cuts = [(slot[m.output], a, a + c.out_channels) for m, c, a in
            zip(group.members, convs, itertools.accumulate([0] + [c.out_channels for c in convs]), strict=False)]
    i = slot[group.members[0].input]

    def run(env: list[Any]) -> None:
        x = env[i]
        n, _, h, w = x.shape
        y = torch.addmm(bias, x.permute(0, 2, 3, 1).reshape(-1, c_in), weight_t)  # (B*H*W, sum Cout)
        for o, a, b in cuts:
            env[o] = y[:, a:b].view(n, h, w, b - a).permute(0, 3, 1, 2)

    return run


def _node_step(op: NodeOp, slot: dict[str, int], shapes: dict[str, Shape | None], layer: nn.Module | None = None) -> Step:
    ins, o, node = [slot[n] for n in op.inputs], slot[op.output], op.node  # layer: a prelu's slopes (Graph.params)
    if node.op == "depth_to_space":
        return _depth_to_space_step(node.attrs["block_size"], ins[0], o)
    if node.op == "maxpool" and node.attrs["kernel"] == node.attrs["stride"] == 2:
        c, h, w = shapes[op.inputs[0]]  # type: ignore[misc]
        if h % 2 == 0 and w % 2 == 0 and h * w >= POOL_MAX_MIN_PIXELS:  # no SAME padding on even sizes
            return _pool_step(ins[0], o, (c, h, w), op.relu)
    if op.relu:  # a fused activation of add / maxpool: in place on the fresh result
        plain = replace(node, attrs={**node.attrs, "activation": None})

        def run_relu(env: list[Any]) -> None:
            env[o] = run_node(plain, [env[k] for k in ins], layer).relu_()

        return run_relu

    def run(env: list[Any]) -> None:
        env[o] = run_node(node, [env[k] for k in ins], layer)

    return run


# 2x2/2 max-pools from this input size up run as two torch.maximum (see _pool_step)
POOL_MAX_MIN_PIXELS = 32 * 32


def _pool_step(i: int, o: int, shape: Shape, relu: bool) -> Step:
    """2x2 stride-2 max-pool as the max of the even and odd rows, then of the even and odd columns,
    on views of the NHWC memory: same values (max is exact), channels-last out, and 2-4x faster
    than ``max_pool2d`` here (which also writes the argmax indices it is never asked for): 24ch
    128x128, 88 vs 195 us; 28ch 64x64, 31 vs 64 us. Below 32x32 ``max_pool2d`` is faster."""
    c, h, w = shape

    def run(env: list[Any]) -> None:
        x = env[i]
        v = x.permute(0, 2, 3, 1).view(x.shape[0], h // 2, 2, w // 2, 2 * c)  # (B, H/2, 2, W/2, 2C)
        rows = torch.maximum(v[:, :, 0], v[:, :, 1])  # (B, H/2, W/2, 2C): even/odd columns side by side
        y = torch.maximum(rows[..., :c], rows[..., c:]).permute(0, 3, 1, 2)
        env[o] = y.relu_() if relu else y

    return run


def _depth_to_space_step(bs: int, i: int, o: int) -> Step:
    """TF's DEPTH_TO_SPACE (DCR order, as :func:`run_node`) done on the NHWC view, so the result is
    channels-last like every other tensor of the plan (the NCHW reshape of the reference leaves a
    contiguous NCHW tensor, which oneDNN would reorder at the next conv)."""

    def run(env: list[Any]) -> None:
        x = env[i]
        b, c, h, w = x.shape
        y = x.permute(0, 2, 3, 1).reshape(b, h, w, bs, bs, c // (bs * bs)).permute(0, 1, 3, 2, 4, 5)
        env[o] = y.reshape(b, h * bs, w * bs, c // (bs * bs)).permute(0, 3, 1, 2)

    return run


# ---------------------------------------------------------------------------------------------


class FastModule:
    """Runs ``module``'s forward through :class:`Plan` s, one per input size (built on first use).

    Call it inside ``torch.inference_mode()`` with a float32 NCHW batch in channels-last memory,
    as :class:`blazeport.backends.TorchBackend` does. Any other input (another dtype, layout or
    device) runs the module itself.
    """

    def __init__(self, module: nn.Module, graph: Graph):
        self.module, self.graph = module, graph
        self.plans: dict[tuple[int, int], Plan | None] = {}
        self.plan_for((graph.input_size, graph.input_size))

    def plan_for(self, size: tuple[int, int]) -> Plan | None:
        """The checked plan for this input size, or None (then the module runs)."""
        if size not in self.plans:
            self.plans[size] = _checked_plan(self.module, self.graph, size)
        return self.plans[size]

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        plan = None
        if x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 4 and x.shape[1] == 3:
            plan = self.plan_for((x.shape[2], x.shape[3]))
        if plan is None:
            return self.module(x)
        x = x.contiguous(memory_format=CHANNELS_LAST)
        threads = torch.get_num_threads()
        if threads == 1:
            return plan(x)
        # One intra-op thread for the plan, whatever the caller set (restored after; the setting
        # is per calling thread for OpenMP, MKL and oneDNN, and costs ~0.1 us). Measured on the
        # 2-core host: with the second core idle, 2 threads would save at most ~15-25% (each step
        # replayed alone: 1.2-1.8x from 32x32 maps up, 0.75-1.2x below); with it busy, every
        # OpenMP fork/join waits for a worker that is not running, and spinning workers take the
        # caller's core between regions: short range at 2 threads took 6.8x its 1-thread p50, and
        # running only the large steps on 2 threads did not help (3.5x p50, 1-thread steps
        # stalled too). Single-threaded, 2 threads are never slower than 1.
        torch.set_num_threads(1)
        try:
            return plan(x)
        finally:
            torch.set_num_threads(threads)


def _checked_plan(module: nn.Module, graph: Graph, size: tuple[int, int]) -> Plan | None:
    """A plan whose outputs on a probe input are within the conversion gate of the module's."""
    try:
        plan = Plan(graph, size)
        # one image: the batch the pipeline runs, so this also creates the oneDNN primitives
        # (JIT-compiled kernels) that the first real call would otherwise wait for
        probe = torch.rand((1, 3, *size), generator=torch.Generator().manual_seed(0)) * 2 - 1
        with torch.inference_mode():
            got = plan(probe.contiguous(memory_format=CHANNELS_LAST))
            want = module(probe)
        for a, b in zip(got, want, strict=True):
            # the conversion gate's rule (blazeport.verify.raw_tolerance: a detector's (B, N, k) outputs take
            # |b| as the largest of its anchor row; other outputs, landmarks, element by element)
            scale = b.abs().amax(-1, keepdim=True) if b.dim() == 3 else b.abs()
            if a.shape != b.shape or not torch.all((a - b).abs() <= ABS_TOL + REL_TOL * scale):
                raise ValueError(f"outputs differ from the module's by up to {float((a - b).abs().max()):.3g}")
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        warnings.warn(f"blazeport: the fast PyTorch runtime is not used for input {size} ({exc}); "
                      "running the module as it is", RuntimeWarning, stacklevel=3)
        return None
    return plan


def prepare(module: nn.Module) -> FastModule | None:
    """A :class:`FastModule` for ``module`` (eval mode, float32 weights), or None where there is
    no plan for it: an unknown family (the students), or a torch without oneDNN."""
    if not available() or module.training:
        return None
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in module.parameters()):
        return None
    graph = graph_of(module)
    return FastModule(module, graph) if graph is not None else None
