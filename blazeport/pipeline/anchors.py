"""SSD anchors, generated exactly as MediaPipe's ``SsdAnchorsCalculator`` does.

Mirrors ``mediapipe/calculators/tflite/ssd_anchors_calculator.cc``: consecutive layers with the
same stride share one feature map; each layer adds one anchor per aspect ratio plus, when
``interpolated_scale_aspect_ratio > 0``, one at the geometric mean of its scale and the next
layer's. With a single stride MediaPipe's scale is ``(min + max) / 2`` (``CalculateScale``), which
is where several ports divide by zero. Anchors are ``(N, 4)`` float32 ``[x_center, y_center, w,
h]`` in normalized input coordinates, in the order the model's outputs are laid out.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from blazeport.errors import BlazeportError
from blazeport.specs import AnchorOptions, ModelSpec

ANCHORS_DIR = Path(__file__).resolve().parent.parent / "bundled" / "anchors"


def _scale(min_scale: float, max_scale: float, index: int, num_strides: int) -> float:
    if num_strides == 1:
        return (min_scale + max_scale) * 0.5
    return min_scale + (max_scale - min_scale) * index / (num_strides - 1.0)


def _layer_groups(opts: AnchorOptions) -> list[tuple[int, list[tuple[float, float]]]]:
    """(stride, [(aspect ratio, scale) per anchor of a cell]) for each run of equal strides.

    MediaPipe's ``SsdAnchorsCalculator`` merges consecutive layers of one stride into one
    feature map whose cells carry every merged layer's anchors.
    """
    strides = opts.strides
    if len(strides) != opts.num_layers:
        raise ValueError(f"num_layers={opts.num_layers} but {len(strides)} strides given")
    groups = []
    layer = 0
    while layer < opts.num_layers:
        pairs: list[tuple[float, float]] = []
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            scale = _scale(opts.min_scale, opts.max_scale, last, len(strides))
            if last == 0 and opts.reduce_boxes_in_lowest_layer:
                pairs += [(1.0, 0.1), (2.0, scale), (0.5, scale)]
            else:
                pairs += [(ar, scale) for ar in opts.aspect_ratios]
                if opts.interpolated_scale_aspect_ratio > 0.0:
                    nxt = 1.0 if last == len(strides) - 1 else _scale(opts.min_scale, opts.max_scale, last + 1, len(strides))
                    pairs.append((opts.interpolated_scale_aspect_ratio, math.sqrt(scale * nxt)))
            last += 1
        groups.append((strides[layer], pairs))
        layer = last
    return groups


def head_layout(opts: AnchorOptions) -> list[tuple[int, int]]:
    """(stride, anchors per cell) of each head level, in anchor order: what a student's SSD head
    must produce to own the same anchor rows (short range: ``[(8, 2), (16, 6)]``)."""
    return [(stride, len(pairs)) for stride, pairs in _layer_groups(opts)]


def generate_anchors(opts: AnchorOptions) -> np.ndarray:
    """Return the ``(N, 4)`` anchor table for ``opts``."""
    rows: list[np.ndarray] = []
    for stride, pairs in _layer_groups(opts):
        heights = [s / math.sqrt(ratio) for ratio, s in pairs]
        widths = [s * math.sqrt(ratio) for ratio, s in pairs]
        fm = math.ceil(opts.input_size / stride)
        ys, xs = np.meshgrid(np.arange(fm), np.arange(fm), indexing="ij")
        n = len(heights)
        xc = np.repeat(((xs + opts.anchor_offset) / fm).reshape(-1), n)
        yc = np.repeat(((ys + opts.anchor_offset) / fm).reshape(-1), n)
        if opts.fixed_anchor_size:
            w = np.ones_like(xc)
            h = np.ones_like(yc)
        else:
            w = np.tile(np.asarray(widths), fm * fm)
            h = np.tile(np.asarray(heights), fm * fm)
        rows.append(np.stack([xc, yc, w, h], axis=1))
    return np.concatenate(rows).astype(np.float32)


def anchors_for(spec: ModelSpec) -> np.ndarray:
    """The committed table in ``anchors/NAME.npy`` if present, else freshly generated.

    The committed tables are what a board without blazeport's source reads; a test keeps them
    equal to the generator.
    """
    path = ANCHORS_DIR / f"{spec.name}.npy"
    table = np.load(path) if path.is_file() else generate_anchors(spec.anchors)
    if table.shape != (spec.num_anchors, 4):
        raise BlazeportError(f"spec {spec.name}: its anchor options give {len(table)} anchors, but it says "
                             f"num_anchors {spec.num_anchors}")
    return table
