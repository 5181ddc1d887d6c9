"""The generic walk: any graph of the ops below, translated op by op into a GraphNet (full range)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from blazeport.convert.custom import CUSTOM_ACTIVATION_INPUTS, CUSTOM_TRANSLATORS, Translated, const
from blazeport.convert.walker import ConversionError, Mapping, Walker, check_ops
from blazeport.tflite import Op, TFLiteModel

__all__ = ["GRAPH_OPS", "TRANSLATORS", "Translated", "extract_graph"]


def _conv(w: Walker, op: Op) -> Translated:
    depthwise = op.type == "DEPTHWISE_CONV_2D"
    if depthwise and op.options.get("depth_multiplier", 1) != 1:
        raise w.fail(f"op {op.index}: depthwise conv with depth_multiplier {op.options['depth_multiplier']}")
    w.square(op)
    k, b, src = w.weights(op, depthwise)
    if (k.shape[1] if not depthwise else k.shape[0]) != w.m.tensor(op.inputs[0]).shape[-1]:
        raise w.fail(f"op {op.index}: grouped conv (kernel {w.m.tensor(op.inputs[1]).shape})")
    attrs = {"in_ch": int(k.shape[0] if depthwise else k.shape[1]), "out_ch": int(k.shape[0]), "kernel": int(k.shape[-1]),
             "stride": op.options["stride"][0], "padding": op.options["padding"], "activation": op.options["activation"]}
    return Translated("dwconv" if depthwise else "conv", attrs,
                      {"weight": (k, src), "bias": (b, w.m.tensor(op.inputs[2]).name)})


def _pad(w: Walker, op: Op) -> Translated:
    pads = const(w, op.inputs[1]).astype(int).tolist()
    if len(pads) != 4 or pads[0] != [0, 0]:
        raise w.fail(f"op {op.index}: PAD of a rank-{len(pads)} tensor or on the batch axis")
    return Translated("pad", {"hwc": pads[1:]})  # NHWC widths, as TFLite states them


def _maxpool(w: Walker, op: Op) -> Translated:
    w.square(op)
    o = op.options
    return Translated("maxpool", {"kernel": o["filter"][0], "stride": o["stride"][0], "padding": o["padding"],
                                  "activation": o["activation"]})


def _add(w: Walker, op: Op) -> Translated:
    if op.options["activation"] not in (None, "relu", "relu6"):
        raise w.fail(f"op {op.index}: ADD with fused {op.options['activation']}")
    return Translated("add", {"activation": op.options["activation"]})


def _resize_bilinear(w: Walker, op: Op) -> Translated:
    if not op.options["half_pixel_centers"] and not op.options["align_corners"]:
        raise w.fail(f"op {op.index}: legacy RESIZE_BILINEAR sampling (no half-pixel centres)")
    return Translated("resize_bilinear", {"size": const(w, op.inputs[1]).astype(int).tolist(),
                                          "align_corners": op.options["align_corners"]})


def _prelu(w: Walker, op: Op) -> Translated:
    """PRELU ``x >= 0 ? x : alpha * x`` with a constant per-channel ``alpha`` (TFLite stores it as
    ``(1, 1, C)``, broadcast over NHWC); a slope that varies over rows or columns is refused."""
    channels = w.m.tensor(op.inputs[0]).shape[-1]
    alpha = const(w, op.inputs[1]).astype(np.float32)
    if alpha.size == 1:
        alpha = np.full(channels, alpha.reshape(-1)[0], np.float32)
    if alpha.size != channels or alpha.shape[-1] != channels:
        raise w.fail(f"op {op.index}: PRELU with a slope of shape {alpha.shape} on {channels} channels "
                     "(only one slope per channel is supported)")
    return Translated("prelu", {"channels": int(channels)},
                      {"weight": (np.ascontiguousarray(alpha.reshape(channels)), w.m.tensor(op.inputs[1]).name)})


def _flatten(w: Walker, op: Op) -> Translated:
    shape = w.m.tensor(op.outputs[0]).shape
    if len(w.m.tensor(op.inputs[0]).shape) != 4 or shape[0] != 1 or len(shape) not in (2, 3):
        raise w.fail(f"op {op.index}: RESHAPE to {shape}; only (1, H, W, C) -> (1, N, k) or (1, N) is supported")
    if len(shape) == 2:  # a landmark model's head: (1, 1, 1, N) -> (1, N)
        return Translated("flatten", {"last_dim": int(shape[-1]), "rank": 2})
    return Translated("flatten", {"last_dim": int(shape[-1])})


def _reshape(w: Walker, op: Op) -> Translated:
    """RESHAPE: from a feature map (rank 4, NCHW in GraphNet) the head flattenings of :func:`_flatten`;
    otherwise any reshape that keeps the batch axis, e.g. the attention mesh's ``(1, 80, 2) -> (1, 1, 1,
    160)``. ``shape`` is TFLite's without the batch; a rank-4 result is a feature map again."""
    src, shape = w.m.tensor(op.inputs[0]).shape, w.m.tensor(op.outputs[0]).shape
    if len(src) == 4:
        return _flatten(w, op)
    if not shape or shape[0] != 1 or not src or src[0] != 1 or len(shape) > 4:
        raise w.fail(f"op {op.index}: RESHAPE {src} -> {shape}; only reshapes that keep a batch of 1 are supported")
    return Translated("reshape", {"shape": [int(d) for d in shape[1:]]})


def _mul(w: Walker, op: Op) -> Translated:
    """MUL of an activation by a constant (the attention mesh's ``* 0.25`` and its matrix mask), the
    constant kept in the node's attributes. On a feature map (NCHW here, NHWC in TFLite) only a scalar
    or a per-channel constant is supported; any other tensor takes TFLite's broadcasting as it is."""
    if op.options.get("activation") is not None:
        raise w.fail(f"op {op.index}: MUL with fused {op.options['activation']}")
    value = const(w, op.inputs[1]).astype(np.float32)
    rank = len(w.m.tensor(op.inputs[0]).shape)
    if rank == 4 and value.size != 1 and value.shape[:-1] != (1,) * (value.ndim - 1):
        raise w.fail(f"op {op.index}: MUL of a feature map by a constant of shape {value.shape} (only scalars and "
                     "per-channel constants are supported)")
    return Translated("mul", {"value": value.tolist(), "shape": list(value.shape), "feature_map": rank == 4})


def _strided_slice(w: Walker, op: Op) -> Translated:
    """STRIDED_SLICE with constant begin / end / strides and no ellipsis, new-axis, shrink or offset
    (begin and end masks are honoured). The batch axis is kept whole: the file's batch is 1, GraphNet's
    any. Indices are TFLite's (NHWC on a feature map)."""
    o = op.options
    if o["ellipsis_mask"] or o["new_axis_mask"] or o["shrink_axis_mask"] or o["offset"]:
        raise w.fail(f"op {op.index}: STRIDED_SLICE with ellipsis, new-axis, shrink-axis masks or offset ({o})")
    shape = w.m.tensor(op.inputs[0]).shape
    begin, end, strides = (const(w, i).astype(int).tolist() for i in op.inputs[1:4])
    if not len(begin) == len(end) == len(strides) == len(shape) or min(strides) < 1:
        raise w.fail(f"op {op.index}: STRIDED_SLICE of shape {shape} by {begin}:{end}:{strides}")
    spans = []
    for axis, (b, e, s, size) in enumerate(zip(begin, end, strides, shape, strict=True)):
        b = 0 if o["begin_mask"] >> axis & 1 else (b + size if b < 0 else b)
        e = size if o["end_mask"] >> axis & 1 else (e + size if e < 0 else e)
        spans.append([max(0, min(b, size)), max(0, min(e, size)), s])
    if spans[0][:2] != [0, 1] or spans[0][2] != 1:
        raise w.fail(f"op {op.index}: STRIDED_SLICE across the batch axis ({spans[0]})")
    return Translated("slice", {"spans": spans[1:], "feature_map": len(shape) == 4})


def _concat(w: Walker, op: Op) -> Translated:
    rank = len(w.m.tensor(op.outputs[0]).shape)
    if rank != 3 or op.options["axis"] % rank != 1:
        raise w.fail(f"op {op.index}: CONCATENATION on axis {op.options['axis']} of a rank-{rank} tensor")
    return Translated("concat", {"axis": 1})


# TFLite op -> its translator: the ops a GraphNet runs. The next detector whose ops are all here is a
# spec, not new code; a new op is one function and one row.
TRANSLATORS: dict[str, Callable[[Walker, Op], Translated]] = {
    "CONV_2D": _conv,
    "DEPTHWISE_CONV_2D": _conv,
    "PAD": _pad,
    "MAX_POOL_2D": _maxpool,
    "ADD": _add,
    "RELU": lambda w, op: Translated("relu"),
    "PRELU": _prelu,
    "RESIZE_BILINEAR": _resize_bilinear,
    "DEPTH_TO_SPACE": lambda w, op: Translated("depth_to_space", {"block_size": op.options["block_size"]}),
    "RESHAPE": _reshape,
    "CONCATENATION": _concat,
    "MUL": _mul,
    "STRIDED_SLICE": _strided_slice,
    **CUSTOM_TRANSLATORS,  # MediaPipe's custom ops (blazeport.convert.custom)
}
GRAPH_OPS = frozenset(TRANSLATORS)
# activations an op reads first (the rest are constants); every op not listed reads one
ACTIVATION_INPUTS: dict[str, int] = {"ADD": 2, **CUSTOM_ACTIVATION_INPUTS}


def extract_graph(model: TFLiteModel) -> Mapping:
    """Translate a whole TFLite graph, op by op (:data:`TRANSLATORS`), into a :class:`GraphConfig`
    and its weights.

    Used for the networks that are not plain BlazeFace (full range dense and sparse). Each op
    becomes a :class:`Node` named by its kind and position; NHWC attributes are kept as TFLite
    states them and translated by :class:`GraphNet` where it runs them.
    """
    from blazeport.models.graph import GraphConfig, Node, param_name  # imports torch: only when converting

    check_ops(model, GRAPH_OPS)
    w = Walker(model)
    size = w.image_input()
    outputs = _graph_outputs(w)
    names = {model.inputs[0]: "input"}
    counts: dict[str, int] = {}
    nodes: list[Node] = []
    mapping = Mapping(None)
    for op in model.ops:
        n_act = len(op.inputs) if op.type == "CONCATENATION" else ACTIVATION_INPUTS.get(op.type, 1)
        act = [names[i] for i in w.data_inputs(op, n_act)]
        t = TRANSLATORS[op.type](w, op)
        counts[t.kind] = counts.get(t.kind, 0) + 1
        node = Node(t.kind, tuple(act), f"{t.kind}{counts[t.kind] - 1}", t.attrs)
        names[op.outputs[0]] = node.output
        nodes.append(node)
        for suffix, (array, source) in t.params.items():
            name = f"layers.{param_name(node)}.{suffix}"
            mapping.params[name], mapping.sources[name] = array, source
    if any(o not in names for o in outputs):
        raise w.fail("an output is not computed from the input")
    mapping.config = GraphConfig(size, "input", tuple(names[o] for o in outputs), tuple(nodes))
    return mapping


def _graph_outputs(w: Walker) -> tuple[int, ...]:
    """The output tensors GraphNet returns: a detector's (regressors, classificators), or a landmark
    model's outputs in the file's order (``face_landmark``: landmarks, face flag; ``iris_landmark``: eye
    contour, iris; the attention mesh: mesh, lips, left eye, right eye, left iris, right iris, face
    flag), each of one image's floats (1, ..., N)."""
    try:
        kinds = w.outputs()
        return kinds["reg"], kinds["cls"]
    except ConversionError:
        shapes = [w.m.tensor(o).shape for o in w.m.outputs]
        if shapes and all(len(s) in (2, 4) and s[0] == 1 and all(d == 1 for d in s[1:-1]) for s in shapes):
            return tuple(w.m.outputs)
        raise w.fail(f"expected outputs (1, N, 1) and (1, N, k) (a detector), or (1, ..., K) outputs (a landmark "
                     f"model), found {shapes}") from None
