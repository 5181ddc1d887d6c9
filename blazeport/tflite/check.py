"""Check what a TFLite file says before anything trusts it: LiteRT, XNNPACK or the converter.

LiteRT verifies a flatbuffer's *layout* (every offset and vector lies inside the file) but trusts
its *content*. ``tools/fuzz_models.py`` found one-byte changes that LiteRT accepted and then
crashed on, each traced to the field it trusted:

- a ``DEQUANTIZE`` output declared larger than its float16 input: XNNPACK unpacks static weights
  into as many floats as the *output* declares and reads past the input buffer (SIGSEGV);
- an activation declared with a huge dimension (one flipped byte of a shape): XNNPACK defines its
  tensors with the declared shapes, so the process allocated gigabytes and was killed by the
  kernel (SIGKILL) or paged for minutes (hang);
- a ``DEPTHWISE_CONV_2D`` whose input list lost its bias: the kernel reads the third input
  regardless, past the end of the list (SIGSEGV, with and without XNNPACK);
- an op input that is neither a constant nor written by an earlier op (a weight buffer whose
  length byte was flipped to 0): ``RuntimeError: Input tensor N lacks data`` at invoke.

So the graph is checked as LiteRT would need it to be: tensor, buffer and opcode indices in
range; known types; shapes non-negative and of sane size; constants holding exactly
shape x dtype bytes; op arities and options; ops in topological order, each tensor written once;
and every output shape equal to what its op computes from its inputs (for the ops below; other
ops keep their declared shapes, within the size limits). Sparse metadata is checked in full,
since TFLite's densifier writes wherever its index arrays point.

A failed check raises :class:`DamagedModel` with a plain description; the reader adds the file
name and the fix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_RANK = 6  # TFLite kernels stop at 5-6 dimensions
MAX_ELEMENTS = 1 << 24  # per tensor: 64 MiB of float32, 40x the largest activation of the bundled models
MAX_TOTAL_ELEMENTS = 1 << 27  # all tensors together: 7x the back model's 18M

# TFLite TensorType (schema.fbs) -> numpy dtype; other types (STRING, RESOURCE, INT4...) are refused
DTYPES: dict[int, Any] = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_, 7: np.int16,
                          9: np.int8, 10: np.float64, 12: np.uint64, 15: np.uint32, 16: np.uint16}
ITEMSIZE = {code: np.dtype(dtype).itemsize for code, dtype in DTYPES.items()}

# op -> (min inputs, max inputs, positions that may be -1, outputs). Convs take exactly three:
# LiteRT's DEPTHWISE_CONV_2D reads input 2 even when the list holds two (SIGSEGV, fuzz seed 8545);
# a bias of -1 it refuses cleanly.
ARITY: dict[str, tuple[int, int, frozenset[int], int]] = {
    "CONV_2D": (3, 3, frozenset({2}), 1),
    "DEPTHWISE_CONV_2D": (3, 3, frozenset({2}), 1),
    "MAX_POOL_2D": (1, 1, frozenset(), 1),
    "AVERAGE_POOL_2D": (1, 1, frozenset(), 1),
    "ADD": (2, 2, frozenset(), 1),
    "SUB": (2, 2, frozenset(), 1),
    "MUL": (2, 2, frozenset(), 1),
    "PAD": (2, 2, frozenset(), 1),
    "PADV2": (3, 3, frozenset(), 1),
    "RESHAPE": (1, 2, frozenset({1}), 1),
    "CONCATENATION": (1, 1 << 16, frozenset(), 1),
    "RESIZE_BILINEAR": (2, 2, frozenset(), 1),
    "RESIZE_NEAREST_NEIGHBOR": (2, 2, frozenset(), 1),
    "DEPTH_TO_SPACE": (1, 1, frozenset(), 1),
    "TRANSPOSE": (2, 2, frozenset(), 1),
    "STRIDED_SLICE": (4, 4, frozenset(), 1),
    "DEQUANTIZE": (1, 1, frozenset(), 1),
    "DENSIFY": (1, 1, frozenset(), 1),
}
UNARY = {"RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1", "LOGISTIC", "TANH", "HARD_SWISH", "LEAKY_RELU", "ELU",
         "GELU", "ABS", "NEG", "EXP", "LOG", "SQRT", "RSQRT", "SQUARE", "FLOOR", "CEIL", "ROUND", "QUANTIZE",
         "DEQUANTIZE", "DENSIFY", "CAST"}
for _op in UNARY:
    ARITY.setdefault(_op, (1, 1, frozenset(), 1))
# ops whose output has its (first) input's type
SAME_TYPE = (UNARY - {"QUANTIZE", "DEQUANTIZE", "CAST"}) | {
    "CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D", "ADD", "SUB", "MUL", "PAD", "PADV2",
    "RESHAPE", "CONCATENATION", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "DEPTH_TO_SPACE", "TRANSPOSE",
    "STRIDED_SLICE"}
# op -> the BuiltinOptions union member its kernel reads (schema.fbs); True: it needs them (a
# missing table means stride 0, filter 0, block size 0), False: TFLite's defaults are valid
OPTIONS: dict[str, tuple[int, bool]] = {
    "CONV_2D": (1, True), "DEPTHWISE_CONV_2D": (2, True), "MAX_POOL_2D": (5, True), "AVERAGE_POOL_2D": (5, True),
    "CONCATENATION": (10, False), "ADD": (11, False), "RESIZE_BILINEAR": (15, False), "RESHAPE": (17, False),
    "MUL": (21, False), "SUB": (28, False), "STRIDED_SLICE": (32, False), "RESIZE_NEAREST_NEIGHBOR": (74, False),
    "DEPTH_TO_SPACE": (94, True),
}


class DamagedModel(ValueError):
    """The file's content contradicts itself; the message says where."""


def check_options_type(op_index: int, op_type: str, union_type: int, present: bool) -> bool:
    """Whether the op's options table may be read as its own kind (False: use TFLite's defaults).

    LiteRT reads options through ``builtin_options_as_<Kind>()``, which gives null for a table of
    another kind, and then runs on zeroed defaults. Where those are valid (no fused activation, axis
    0) blazeport does the same; where the kernel needs real values (stride, filter, block size) the
    file is refused, since the reader would otherwise parse another kind's table as garbage.
    """
    if op_type not in OPTIONS:
        return present
    wanted, needed = OPTIONS[op_type]
    if present and union_type == wanted:
        return True
    if needed:
        raise DamagedModel(f"op {op_index} ({op_type}) has options of kind {union_type}, not {wanted} (strides, padding...)")
    return False


def check_tensor(index: int, name: str, type_code: int, shape: tuple[int, ...], buffer: int, n_buffers: int) -> None:
    """Type, shape and buffer index of one tensor, before its data is read."""
    if type_code not in ITEMSIZE:
        raise DamagedModel(f"tensor {index} ({name!r}) has TFLite type {type_code}, which blazeport cannot read")
    if not 0 <= buffer < n_buffers:
        raise DamagedModel(f"tensor {index} ({name!r}) refers to buffer {buffer}; the file has {n_buffers}")
    if len(shape) > MAX_RANK or any(d < 0 for d in shape):
        raise DamagedModel(f"tensor {index} ({name!r}) has shape {shape}")
    if _numel(shape) > MAX_ELEMENTS:
        raise DamagedModel(f"tensor {index} ({name!r}) has shape {shape}: {_numel(shape):,} elements, "
                           f"over blazeport's limit of {MAX_ELEMENTS:,}")


def check_constant_size(index: int, name: str, type_code: int, shape: tuple[int, ...], nbytes: int) -> None:
    """A dense constant holds exactly shape x dtype bytes (LiteRT reads that many from the buffer)."""
    want = _numel(shape) * ITEMSIZE[type_code]
    if nbytes != want:
        raise DamagedModel(f"tensor {index} ({name!r}, shape {shape}) has a buffer of {nbytes:,} bytes, "
                           f"its shape needs {want:,}")


def check_quantization(index: int, name: str, shape: tuple[int, ...], scale: np.ndarray, zero: np.ndarray,
                       axis: int) -> None:
    """Per-tensor (one scale) or per-channel (one per index along ``axis``) parameters."""
    if len(zero) not in (0, len(scale)):
        raise DamagedModel(f"tensor {index} ({name!r}) has {len(scale)} quantization scales and {len(zero)} zero points")
    if len(scale) > 1 and not (0 <= axis < len(shape) and shape[axis] == len(scale)):
        raise DamagedModel(f"tensor {index} ({name!r}, shape {shape}) has {len(scale)} scales along axis {axis}")


def sparse_levels(order: list[int], block_map: list[int], levels: list[dict[str, Any]],
                  dense_shape: tuple[int, ...], n_values: int) -> tuple[list[int], list[int]]:
    """Check sparse metadata against the dense shape; return each level's size and the block sizes.

    ``levels`` holds ``{"dense": size}`` or ``{"segments": array, "indices": array}`` per level.
    TFLite's ``FormatConverter`` (and XNNPACK's static unpacking) write where these point, so
    every size, segment and index must agree with the dense shape, and the leaves they reach
    must be the ``n_values`` stored (counted here, before anything is expanded).
    """
    rank, n = len(dense_shape), len(levels)
    if len(order) != n or n < rank or sorted(order[:rank]) != list(range(rank)) or order[rank:] != list(range(rank, n)):
        raise DamagedModel(f"sparse traversal order {order} does not fit a rank-{rank} tensor with {n} levels")
    if len(block_map) != n - rank or len(set(block_map)) != len(block_map) or any(not 0 <= d < rank for d in block_map):
        raise DamagedModel(f"sparse block map {block_map} does not fit a rank-{rank} tensor with {n} levels")
    blocks = []
    for level in levels[rank:]:
        if "dense" not in level or level["dense"] < 1:
            raise DamagedModel("sparse block dimensions must be dense with a positive size")
        blocks.append(int(level["dense"]))
    block_of = dict(zip(block_map, blocks, strict=True))
    for d, b in block_of.items():
        if dense_shape[d] % b:
            raise DamagedModel(f"sparse block size {b} does not divide dimension {d} of shape {dense_shape}")
    sizes = [dense_shape[d] // block_of.get(d, 1) for d in order[:rank]] + blocks
    positions = 1
    for i, (level, size) in enumerate(zip(levels, sizes, strict=True)):
        if "dense" in level:
            if level["dense"] != size:
                raise DamagedModel(f"sparse level {i} is dense with size {level['dense']}; the shape {dense_shape} says {size}")
            positions *= size
            continue
        seg, idx = level["segments"], level["indices"]
        if (len(seg) != positions + 1 or seg[0] != 0 or seg[-1] != len(idx) or np.any(np.diff(seg) < 0)
                or (len(idx) and (idx.min() < 0 or idx.max() >= size))):
            raise DamagedModel(f"sparse level {i}: segments or indices do not fit {positions} rows of size {size}")
        positions = len(idx)
    if positions != n_values:
        raise DamagedModel(f"sparse tensor holds {n_values} values but its index lists {positions}")
    return sizes, blocks


def check_graph(tensors: list[Any], ops: list[Any], inputs: list[int], outputs: list[int]) -> None:
    """Indices, arities, options, topological order and shapes of the whole subgraph.

    ``tensors`` have ``index, name, shape, type_code, data`` (``data`` set for constants); ``ops``
    have ``index, type, inputs, outputs, options``.
    """
    n = len(tensors)
    for what, ids in (("input", inputs), ("output", outputs)):
        bad = [i for i in ids if not 0 <= i < n]
        if bad or not ids:
            raise DamagedModel(f"graph {what}s {ids} are not tensors of the graph (it has {n})")
    total = sum(_numel(t.shape) for t in tensors)
    if total > MAX_TOTAL_ELEMENTS:
        raise DamagedModel(f"the tensors hold {total:,} elements together, over blazeport's limit of {MAX_TOTAL_ELEMENTS:,}")
    ready = {t.index for t in tensors if t.data is not None} | set(inputs)
    for op in ops:
        _check_arity(op, n)
        for i in op.inputs:
            if i >= 0 and i not in ready:
                raise DamagedModel(f"op {op.index} ({op.type}) reads tensor {i} ({tensors[i].name!r}), which is neither "
                                   "a constant, a graph input nor written by an earlier op")
        for o in op.outputs:
            if o in ready:
                raise DamagedModel(f"op {op.index} ({op.type}) writes tensor {o} ({tensors[o].name!r}), which is a "
                                   "constant, a graph input or written by another op")
            ready.add(o)
        _check_op(op, tensors)
    missing = [o for o in outputs if o not in ready]
    if missing:
        raise DamagedModel(f"graph outputs {missing} are never written")


def _check_arity(op: Any, n: int) -> None:
    lo, hi, optional, n_out = ARITY.get(op.type, (0, 1 << 16, None, None))
    if not lo <= len(op.inputs) <= hi or (n_out is not None and len(op.outputs) != n_out) or not op.outputs:
        raise DamagedModel(f"op {op.index} ({op.type}) has {len(op.inputs)} inputs and {len(op.outputs)} outputs")
    for pos, i in enumerate(op.inputs):
        if not (0 <= i < n or (i == -1 and (optional is None or pos in optional))):
            raise DamagedModel(f"op {op.index} ({op.type}) input {pos} is tensor {i}; the graph has {n}")
    if any(not 0 <= o < n for o in op.outputs):
        raise DamagedModel(f"op {op.index} ({op.type}) writes tensors {op.outputs}; the graph has {n}")


def _check_op(op: Any, tensors: list[Any]) -> None:
    """Options in range, types consistent, and the declared output shape equal to the computed one."""
    opts, kind = op.options, op.type
    ins = [tensors[i] if i >= 0 else None for i in op.inputs]
    out = tensors[op.outputs[0]]
    where = f"op {op.index} ({kind})"
    if opts.get("padding", "SAME") not in ("SAME", "VALID") or opts.get("activation", None) == "unknown":
        raise DamagedModel(f"{where} has padding {opts.get('padding')!r} / activation {opts.get('activation')!r}")
    for key in ("stride", "dilation", "filter"):
        if key in opts and min(opts[key]) < 1:
            raise DamagedModel(f"{where} has {key} {opts[key]}")
    if kind in SAME_TYPE and out.type_code != ins[0].type_code:
        raise DamagedModel(f"{where} turns TFLite type {ins[0].type_code} into {out.type_code}")
    if kind == "DEQUANTIZE" and (out.type_code != 0 or ins[0].type_code not in (1, 3, 7, 9)):
        raise DamagedModel(f"{where} turns TFLite type {ins[0].type_code} into {out.type_code}")
    expected = _infer_shape(op, ins, tuple(out.shape), where)
    if expected is not None and tuple(out.shape) != tuple(expected):
        raise DamagedModel(f"{where} computes shape {tuple(expected)} but its output {out.name!r} is declared {tuple(out.shape)}")


def _window_op_shape(kind: str, opts: dict[str, Any], x: tuple[int, ...], ins: list[Any], where: str) -> tuple[int, ...]:
    """Output shape of a conv or pool over NHWC ``x``, checking kernel, bias and window as LiteRT's kernels assume."""
    if len(x) != 4 or min(x) < 1:
        raise DamagedModel(f"{where} reads shape {x}, not a non-empty NHWC tensor")
    if kind.endswith("POOL_2D"):
        (kh, kw), channels, dil = opts["filter"], x[3], (1, 1)
    else:
        w = ins[1].shape
        if len(w) != 4 or w[3] < 1:
            raise DamagedModel(f"{where} has a kernel of shape {tuple(w)}")
        kh, kw, channels, dil = w[1], w[2], w[0] if kind == "CONV_2D" else w[3], opts["dilation"]
        if kind == "CONV_2D" and (x[3] % w[3] or w[0] % (x[3] // w[3])):
            raise DamagedModel(f"{where}: kernel {tuple(w)} does not fit {x[3]} input channels")
        if kind == "DEPTHWISE_CONV_2D" and (w[0] != 1 or w[3] != x[3] * opts.get("depth_multiplier", 0)):
            raise DamagedModel(f"{where}: kernel {tuple(w)} and depth multiplier {opts.get('depth_multiplier')} "
                               f"do not fit {x[3]} input channels")
        if ins[2:] and ins[2] is not None and tuple(ins[2].shape) != (channels,):
            raise DamagedModel(f"{where} has a bias of shape {tuple(ins[2].shape)} for {channels} channels")
    windows = zip(x[1:3], (kh, kw), opts["stride"], dil, strict=True)
    hw = [_window(size, k, s, d, opts["padding"]) for size, k, s, d in windows]
    if min(hw) < 1:
        raise DamagedModel(f"{where}: a {kh}x{kw} window does not fit a {x[1]}x{x[2]} input")
    return (x[0], *hw, channels)


def _concat_shape(opts: dict[str, Any], x: tuple[int, ...], ins: list[Any], where: str) -> tuple[int, ...]:
    """Output shape of a CONCATENATION: same rank, equal shapes but on the axis."""
    axis = opts.get("axis", 0)
    if not -len(x) <= axis < len(x) or any(len(t.shape) != len(x) for t in ins):
        raise DamagedModel(f"{where} joins shapes {[tuple(t.shape) for t in ins]} on axis {axis}")
    axis %= len(x)
    if any(tuple(t.shape[:axis]) + tuple(t.shape[axis + 1:]) != x[:axis] + x[axis + 1:] for t in ins):
        raise DamagedModel(f"{where} joins shapes {[tuple(t.shape) for t in ins]} on axis {axis}")
    return (*x[:axis], sum(t.shape[axis] for t in ins), *x[axis + 1:])


def _infer_shape(op: Any, ins: list[Any], declared: tuple[int, ...], where: str) -> tuple[int, ...] | None:
    """The output shape TFLite's kernel computes, or None for ops not modelled here."""
    kind, opts = op.type, op.options
    if kind not in ARITY:  # input 0 of these is required, so ins[0] is a tensor
        return None
    x = tuple(ins[0].shape)
    if kind in UNARY:
        return x
    if kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D"):
        return _window_op_shape(kind, opts, x, ins, where)
    if kind in ("ADD", "SUB", "MUL"):
        try:
            return tuple(np.broadcast_shapes(x, tuple(ins[1].shape)))
        except ValueError:
            raise DamagedModel(f"{where} combines shapes {x} and {tuple(ins[1].shape)}") from None
    if kind in ("PAD", "PADV2"):
        pads = ins[1].data
        if pads is None:
            return None
        if pads.shape != (len(x), 2) or np.any(pads < 0):
            raise DamagedModel(f"{where} has paddings {pads.tolist()} for a rank-{len(x)} tensor")
        return tuple(int(s + p.sum()) for s, p in zip(x, pads, strict=True))
    if kind == "RESHAPE":
        if _numel(x) != _numel(declared):
            raise DamagedModel(f"{where} reshapes shape {x} into {declared}")
        return declared
    if kind == "CONCATENATION":
        return _concat_shape(opts, x, ins, where)
    if kind in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"):
        size = ins[1].data
        if size is None:
            return None
        if len(x) != 4 or size.shape != (2,) or np.any(size < 1):
            raise DamagedModel(f"{where} resizes shape {x} to {size.tolist()}")
        return (x[0], int(size[0]), int(size[1]), x[3])
    if kind == "TRANSPOSE":
        perm = ins[1].data
        if perm is None:
            return None
        if sorted(perm.reshape(-1).tolist()) != list(range(len(x))):
            raise DamagedModel(f"{where} permutes shape {x} by {perm.tolist()}")
        return tuple(x[int(p)] for p in perm.reshape(-1))
    if kind == "DEPTH_TO_SPACE":
        b = opts.get("block_size", 0)
        if len(x) != 4 or b < 1 or x[3] % (b * b):
            raise DamagedModel(f"{where} with block size {b} cannot rearrange shape {x}")
        return (x[0], x[1] * b, x[2] * b, x[3] // (b * b))
    return None


def _window(size: int, k: int, stride: int, dilation: int, padding: str) -> int:
    """Output length of a strided window (TFLite ``ComputeOutSize``): SAME keeps ceil(size / stride)."""
    if padding == "SAME":
        return -(-size // stride)
    return -(-(size - (k - 1) * dilation) // stride)


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out
