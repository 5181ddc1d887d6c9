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
:class:`blazeport.modelfiles.backends.TorchBackend` (``optimize=True``, the default).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blazeport.modelfiles.verify import ABS_TOL, REL_TOL
from blazeport.models.fusion import ConvOp, GemmGroup, Graph, NodeOp, Op, Shape, fuse, graph_of, infer_shapes, is_gemm
from blazeport.models.graph import run_node

__all__ = ["FastModule", "available", "graph_of", "prepare"]

CHANNELS_LAST = torch.channels_last


def available() -> bool:
    """Whether this torch has the oneDNN ops a plan is made of (CPU builds with MKLDNN do)."""
    ops = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(ops, "_convolution_pointwise")
            and hasattr(ops, "_reorder_convolution_weight"))


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
        self.outputs = tuple(slot[name] for name in graph.outputs)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env: list[Any] = [None] * self.n_slots
        env[0] = x
        for step in self.steps:
            step(env)
        return tuple(env[i] for i in self.outputs)


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


def _conv_step(op: ConvOp, layer: nn.Conv2d, slot: dict[str, int], shapes: dict[str, Shape | None]) -> Step:
    """One oneDNN call: ``relu?(conv(pad?(x)) + other?)``, weights reordered once, here."""
    if is_gemm(op, layer):
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
    # oneDNN's eltwise post-op: relu, or RELU6 as hardtanh clamped to [0, 6] (what inductor emits for it)
    unary, scalars = ("hardtanh", [0.0, 6.0]) if op.relu6 else ("relu" if op.relu else "none", [])
    dilation: list[int] = [1, 1]
    if op.other is None:
        conv = pointwise.default

        def run(env: list[Any]) -> None:
            x = env[i] if pre is None else F.pad(env[i], pre)
            env[o] = conv(x, packed, bias, padding, stride, dilation, groups, unary, scalars, None)

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
    widen, relu, relu6 = op.widen, op.relu, op.relu6

    def run(env: list[Any]) -> None:
        x = env[i]
        n, _, h, w = x.shape
        y = torch.addmm(bias, x.permute(0, 2, 3, 1).reshape(-1, c_in), weight_t)  # (B*H*W, Cout): NHWC memory
        if j is not None:
            shortcut = env[j].permute(0, 2, 3, 1).reshape(-1, width)
            (y[:, :width] if widen else y).add_(shortcut)
        if relu:
            y.relu_()
        elif relu6:
            y.clamp_(0.0, 6.0)
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
    as :class:`blazeport.modelfiles.backends.TorchBackend` does. Any other input (another dtype, layout or
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

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
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
            # the conversion gate's rule (blazeport.modelfiles.verify.raw_tolerance: a detector's (B, N, k) outputs take
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
