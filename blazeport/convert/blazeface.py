"""The BlazeFace walk: a graph read as stem, BlazeBlocks and SSD heads (short range, back).

Weights are not taken in file order. The walk starts at the graph's input and follows tensors:
the stem ``CONV_2D``, then each BlazeBlock as the op pattern ``DEPTHWISE_CONV_2D -> CONV_2D ->
ADD(shortcut) -> RELU`` whose shortcut is the block input, possibly through ``MAX_POOL_2D`` and a
channel ``PAD``; then the heads, found backwards from the output ``CONCATENATION``s through their
``RESHAPE``s. That walk yields both the architecture (a :class:`BlazeFaceConfig`) and, for every
parameter of the module, the TFLite tensor that fills it. Each shape is checked before loading.
"""

from __future__ import annotations

from blazeport.convert.walker import ConversionError, Mapping, Walker, check_ops
from blazeport.tflite import Op, TFLiteModel

SUPPORTED_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "RELU", "MAX_POOL_2D", "PAD", "RESHAPE", "CONCATENATION"})

__all__ = ["SUPPORTED_OPS", "ConversionError", "extract"]


class _Params:
    """Collects module parameters from conv ops, checking what BlazeFace's layers can reproduce."""

    def __init__(self, w: Walker):
        self.w, self.arrays, self.sources = w, {}, {}

    def put(self, prefix: str, op: Op, depthwise: bool = False) -> tuple[int, ...]:
        w = self.w
        k, b, name = w.weights(op, depthwise)
        # Conv2dSame and the 1x1 convs reproduce TF SAME padding; VALID equals it only for 1x1, stride 1
        if op.options["padding"] != "SAME" and (w.square(op) > 1 or k.shape[-1] > 1):
            raise w.fail(f"{op.type} op {op.index} uses {op.options['padding']} padding")
        if prefix.startswith("head.") and w.square(op) != 1:  # SSDHead's convs have stride 1
            raise w.fail(f"head conv op {op.index} has stride {op.options['stride']}")
        self.arrays[f"{prefix}.weight"], self.arrays[f"{prefix}.bias"] = k, b
        self.sources[f"{prefix}.weight"], self.sources[f"{prefix}.bias"] = name, w.m.tensor(op.inputs[2]).name
        return k.shape


def extract(model: TFLiteModel) -> Mapping:
    """Walk a BlazeFace graph: return its :class:`BlazeFaceConfig` and its weights by parameter."""
    from blazeport.models.blazeface import BlazeFaceConfig  # imports torch: only when converting

    check_ops(model, SUPPORTED_OPS)
    w = Walker(model)
    size = w.image_input()
    kinds = w.outputs()
    params = _Params(w)
    stem = w.only_reader(model.inputs[0], "CONV_2D")
    stem_shape = params.put("stem", stem)
    w.square(stem)
    blocks, block_out = _walk_blocks(w, params, w.activation_after(stem))
    head_sources, anchors, num_coords = _walk_heads(w, params, kinds, block_out)
    config = BlazeFaceConfig(
        input_size=size,
        stem_channels=stem_shape[0],
        stem_kernel=stem_shape[-1],
        stem_stride=stem.options["stride"][0],
        blocks=tuple(blocks),
        head_sources=head_sources,
        head_anchors=anchors,
        num_coords=num_coords,
    )
    return Mapping(config, params=params.arrays, sources=params.sources)


def _walk_blocks(w: Walker, params: _Params, x: int) -> tuple[list, dict[int, int]]:
    """Each BlazeBlock from tensor ``x`` on; returns their configs and block output tensor -> index."""
    from blazeport.models.blazeface import BlockConfig  # torch: the loader imports this walk on the torch-free path

    model = w.m
    blocks: list[BlockConfig] = []
    block_out: dict[int, int] = {}
    while dws := w.readers(x, "DEPTHWISE_CONV_2D"):
        if len(dws) != 1:
            raise w.fail(f"block input {model.tensor(x).name!r} feeds {len(dws)} depthwise convs")
        dw = dws[0]
        pw = w.only_reader(dw.outputs[0], "CONV_2D")
        i = len(blocks)
        dw_shape = params.put(f"blocks.{i}.dw", dw, depthwise=True)
        pw_shape = params.put(f"blocks.{i}.pw", pw)
        stride = w.square(dw)
        if w.square(pw) != 1:
            raise w.fail(f"block {i}: pointwise conv op {pw.index} has stride {pw.options['stride']}")
        adds = w.readers(pw.outputs[0], "ADD")
        if adds:
            add = adds[0]
            others = [t for t in add.inputs if t != pw.outputs[0]]
            if len(others) != 1 or dw_shape[0] > pw_shape[0] or model.tensor(x).shape[1] % stride:
                raise w.fail(f"block {i}: {add.type} op {add.index} is not a shortcut BlazeBlock the module can run")
            t = others[0]  # the shortcut must lead back to the block input through pool/pad only
            while t != x:
                prod = w.producers.get(t)
                if prod is None or prod.type not in ("MAX_POOL_2D", "PAD") or prod.inputs[0] < 0:
                    raise w.fail(f"block {i}: shortcut of {add.type} op {add.index} does not lead back to its input")
                t = prod.inputs[0]
        x = w.activation_after(adds[0] if adds else pw)
        blocks.append(BlockConfig(dw_shape[0], pw_shape[0], stride, dw_shape[-1], bool(adds)))
        block_out[x] = i
    return blocks, block_out


def _walk_heads(w: Walker, params: _Params, kinds: dict[str, int],
                block_out: dict[int, int]) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """Back from each output CONCATENATION through RESHAPEs to the 1x1 convs on block outputs;
    returns the blocks the heads read, anchors per level and coordinates per anchor."""
    model = w.m
    levels: dict[str, list[tuple[Op, int]]] = {}
    for kind, out in kinds.items():
        concat = w.producers.get(out)
        for part in concat.inputs if concat is not None and concat.type == "CONCATENATION" else [out]:
            op = w.producers.get(part)
            while op is not None and op.type == "RESHAPE" and op.inputs[0] >= 0:
                op = w.producers.get(op.inputs[0])
            if op is None or op.type != "CONV_2D" or op.inputs[0] not in block_out:
                raise w.fail(f"output {model.tensor(out).name!r} is not a concatenation of 1x1 convs on block outputs")
            levels.setdefault(kind, []).append((op, block_out[op.inputs[0]]))
    if set(levels) != {"cls", "reg"} or len(levels["cls"]) != len(levels["reg"]):
        raise w.fail("expected one classificators and one regressors output with matching levels")
    num_coords = model.tensor(kinds["reg"]).shape[-1]
    anchors, rows = [], 0
    for j, ((cls_op, src), (reg_op, reg_src)) in enumerate(zip(levels["cls"], levels["reg"], strict=True)):
        if src != reg_src:
            raise w.fail(f"head level {j}: classifier and regressor read different feature maps")
        a = params.put(f"head.cls.{j}", cls_op)[0]
        if params.put(f"head.reg.{j}", reg_op)[0] != a * num_coords:
            raise w.fail(f"head level {j}: {a} anchors but {model.tensor(reg_op.outputs[0]).shape[-1]} regressor channels")
        _, h, w_, _ = model.tensor(cls_op.outputs[0]).shape
        rows += h * w_ * a
        anchors.append(a)
    # SSDHead flattens each level to (1, H*W*A, k); the graph's outputs must have those rows
    if model.tensor(kinds["cls"]).shape[1] != rows:
        raise w.fail(f"the heads give {rows} anchors, the outputs have {model.tensor(kinds['cls']).shape[1]}")
    return tuple(src for _, src in levels["cls"]), tuple(anchors), num_coords
