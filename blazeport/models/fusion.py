"""Planning a converted network's fast run: the network as nodes, their shapes, and which nodes
become one call (:mod:`blazeport.models.fused` turns the fused ops into steps and runs them).

:func:`graph_of` reads a :class:`~blazeport.models.graph.GraphNet`'s own nodes, or writes a
:class:`~blazeport.models.blazeface.BlazeFace`'s forward out as the same ops; :func:`infer_shapes`
gives every map's (C, H, W) (TF "SAME" pads depend on them); :func:`fuse` folds pads, ReLUs,
residual adds and zero-widened shortcuts into the convs and groups a head's 1x1 convs into one GEMM.
Why each fusion pays is in :mod:`blazeport.models.fused`'s docstring.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from torch import nn

from blazeport.models.blazeface import BlazeFace
from blazeport.models.blocks import same_padding
from blazeport.models.graph import PARAM_OPS, GraphNet, Node, param_name

__all__ = ["ConvOp", "GemmGroup", "Graph", "NodeOp", "Op", "Shape", "fuse", "graph_of", "infer_shapes", "is_gemm"]

Shape = tuple[int, int, int]  # (C, H, W) of a feature map; batch is free


# ---------------------------------------------------------------------------------------------
# The network as nodes: GraphNet has them; BlazeFace is written out as the same ops.


@dataclass
class Graph:
    """Nodes in execution order, the input and output names, and each conv node's layer."""

    input: str
    outputs: tuple[str, ...]
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
    """Feature-map shape of every tensor (None for the flattened head outputs, and the attention
    mesh's landmarks and matrices)."""
    shapes: dict[str, Shape | None] = {graph.input: (channels, *size)}
    for n in graph.nodes:
        a, s = n.attrs, shapes[n.inputs[0]]
        if n.op in ("flatten", "concat", "landmarks_to_matrix", "transform_landmarks"):
            shapes[n.output] = None
            continue
        if n.op == "reshape":  # to a feature map only when the target is (H, W, C)
            shapes[n.output] = (a["shape"][2], a["shape"][0], a["shape"][1]) if len(a["shape"]) == 3 else None
            continue
        if n.op == "transform_tensor":
            assert s is not None
            shapes[n.output] = (s[0], a["output_height"], a["output_width"])
            continue
        if n.op == "slice":
            h, w, c = (len(range(*span)) for span in a["spans"]) if s is not None else (0, 0, 0)  # NHWC spans
            shapes[n.output] = (c, h, w) if s is not None else None
            continue
        if n.op == "mul":
            shapes[n.output] = s
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
    relu6: bool = False  # a fused RELU6 (pose detection's convs): min(max(x, 0), 6), never with ``other``


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
        act = a.get("activation")
        if act not in (None, "relu", "relu6"):
            raise ValueError(f"fused activation {act!r}")
        out = n.output
        relu = act == "relu" or (act is None and absorb_relu(out))
        return ConvOp(n, src, out, (t, b, left, r), (c, h, w), relu=relu, relu6=act == "relu6")

    # first: every conv with its pads (a PAD folded into a conv is not run), and which adds take
    # a conv in (that conv then runs at the add's place, when the add's other operand exists)
    convs = {n.output: conv_op(n) for n in graph.nodes if n.op in ("conv", "dwconv")}
    add_of_conv: dict[str, tuple[str, str, bool]] = {}  # add output -> (conv output, other, widen)
    for n in graph.nodes:
        if n.op != "add" or n.attrs.get("activation") not in (None, "relu"):
            continue
        for mine, other in ((n.inputs[1], n.inputs[0]), (n.inputs[0], n.inputs[1])):
            if (mine not in convs or convs[mine].relu or convs[mine].relu6 or convs[mine].output != mine
                    or not only_use(mine, n)):
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
    """Plain 1x1 convs on the same input, all GEMMs (:func:`is_gemm`), become one :class:`GemmGroup`
    at the first one's place (saves a call per head level: the classifier's 1-6 outputs are too
    narrow for a GEMM of their own, and oneDNN's call costs ~40 us)."""
    siblings: dict[str, list[ConvOp]] = {}
    for op in ops:
        if (isinstance(op, ConvOp) and op.other is None and not op.relu and not op.relu6
                and is_gemm(op, layers[op.node.output], 1)):
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



# Which 1x1 convs run as an MKL GEMM (see _gemm_step) rather than oneDNN: measured per shape on
# these networks (1 thread, min of 300), GEMM + add + ReLU took 0.37-0.9x oneDNN's fused call up
# to 64x64 maps, but 1.4x on 96x96 and 128x128 maps (oneDNN's post-ops save two passes over a
# large output) and 3.1x with 8 output channels (a GEMM that narrow wastes MKL's kernel).
GEMM_MAX_PIXELS = 64 * 64
GEMM_MIN_CHANNELS = 16


def is_gemm(op: ConvOp, layer: nn.Conv2d, min_channels: int = GEMM_MIN_CHANNELS) -> bool:
    _, h, w = op.in_shape
    return (layer.kernel_size == (1, 1) and layer.stride == (1, 1) and layer.groups == 1 and not any(op.pads)
            and h * w <= GEMM_MAX_PIXELS and layer.out_channels >= min_channels)
