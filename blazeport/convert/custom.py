"""Translators for MediaPipe's custom TFLite ops: options read, checked and turned into GraphNet nodes.

A custom op is stored as ``CUSTOM`` with a name (``TransformLandmarks``), the version of its
``OperatorCode`` and a flexbuffer map of options (:func:`blazeport.tflite._custom_options`). The
three here are the ones ``face_landmark_with_attention.tflite`` holds; the maths is
:mod:`blazeport.models.custom_ops`. Each translator checks what the MediaPipe kernel's ``Prepare``
and ``Eval`` check (``mediapipe/util/tflite/operations/*.cc``: input ranks and types, option ranges),
plus what the kernel would silently get wrong (an index past the landmarks, an output shape that
disagrees with the options), and refuses anything else in one :class:`ConversionError` naming the op.
Only version 2 of each op is translated: that is what MediaPipe's face mesh uses, and v1 kernels
compute other things (v1 ``TransformTensorBilinear`` has no half-pixel correction, v1
``TransformLandmarks`` reads 4-D input with a scale).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from blazeport.convert.walker import Walker
from blazeport.tflite import Op

__all__ = ["CUSTOM_ACTIVATION_INPUTS", "CUSTOM_OPS", "CUSTOM_TRANSLATORS", "Translated", "const"]


@dataclass
class Translated:
    """One TFLite op as a GraphNet node: its kind, attributes and (for convs, PRELU) parameters."""

    kind: str
    attrs: dict[str, Any] = field(default_factory=dict)
    # parameter suffix ("weight", "bias") -> (array in torch layout, the TFLite tensor it came from)
    params: dict[str, tuple[np.ndarray, str]] = field(default_factory=dict)


def const(w: Walker, i: int) -> np.ndarray:
    """A constant input's data, or a refusal naming the tensor."""
    data = w.m.tensor(i).data
    if data is None:
        raise w.fail(f"tensor {w.m.tensor(i).name!r} was expected to be a constant")
    return data


def _version_2(w: Walker, op: Op) -> dict[str, Any]:
    """The op's options, after refusing any version but 2 (see the module docstring)."""
    name = op.type.partition(":")[2]
    if op.options.get("version") != 2:
        raise w.fail(f"op {op.index}: MediaPipe custom op {name} version {op.options.get('version')}; blazeport "
                     "translates version 2 (what MediaPipe's face mesh with attention uses)")
    return op.options.get("custom", {})


def _shape(w: Walker, i: int) -> tuple[int, ...]:
    return tuple(w.m.tensor(i).shape)


def _int(w: Walker, op: Op, opts: dict[str, Any], key: str, low: int, high: int | None = None) -> int:
    value = opts.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value >= high):
        bound = f" and below {high}" if high is not None else ""
        raise w.fail(f"op {op.index} ({op.type}): option {key} = {value!r}, expected an integer >= {low}{bound}")
    return value


def _float(w: Walker, op: Op, opts: dict[str, Any], key: str, positive: bool) -> float:
    value = opts.get(key, None if positive else 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or (positive and value <= 0):
        raise w.fail(f"op {op.index} ({op.type}): option {key} = {value!r}, expected a {'positive ' if positive else ''}"
                     "finite number")
    return float(value)


def _landmarks_to_matrix(w: Walker, op: Op) -> Translated:
    """``Landmarks2TransformMatrix`` v2: landmarks ``(1, N, 3)`` (``Prepare``: rank 3, float32) ->
    ``(1, 4, 4)``. Options as ``ParseLandmarksToTransformMatrixV2Attributes`` reads them; ``Eval``
    refuses negative indices, a non-positive output size or scale; an odd ``subset_idxs`` list pairs
    its last index with itself (so every listed index is used)."""
    opts = _version_2(w, op)
    src = _shape(w, op.inputs[0])
    if len(src) != 3 or src[0] != 1 or src[2] != 3 or _shape(w, op.outputs[0]) != (1, 4, 4):
        raise w.fail(f"op {op.index} ({op.type}): landmarks of shape {src} -> {_shape(w, op.outputs[0])}; expected "
                     "(1, N, 3) -> (1, 4, 4)")
    n = src[1]
    subset = opts.get("subset_idxs")
    if (not isinstance(subset, list) or not subset
            or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n for i in subset)):
        raise w.fail(f"op {op.index} ({op.type}): subset_idxs must be indices of the {n} landmarks, got {subset!r}")
    attrs = {
        "subset": list(subset),
        "left": _int(w, op, opts, "left_rotation_idx", 0, n),
        "right": _int(w, op, opts, "right_rotation_idx", 0, n),
        "target_rotation": _float(w, op, opts, "target_rotation_radians", positive=False),
        "output_height": _int(w, op, opts, "output_height", 1),
        "output_width": _int(w, op, opts, "output_width", 1),
        "scale_x": _float(w, op, opts, "scale_x", positive=True),
        "scale_y": _float(w, op, opts, "scale_y", positive=True),
    }
    return Translated("landmarks_to_matrix", attrs)


def _transform_tensor(w: Walker, op: Op) -> Translated:
    """``TransformTensorBilinear`` v2: a feature map ``(1, H, W, C)`` and a ``(1, 4, 4)`` matrix ->
    ``(1, OH, OW, C)``. The CPU kernel loops over the *declared* output shape (its ``Prepare`` does not
    resize it), so that shape decides, and the options' ``output_height`` / ``output_width`` must agree."""
    opts = _version_2(w, op)
    src, matrix, out = _shape(w, op.inputs[0]), _shape(w, op.inputs[1]), _shape(w, op.outputs[0])
    if len(src) != 4 or matrix != (1, 4, 4) or len(out) != 4 or out[0] != 1 or out[3] != src[3] or min(out) < 1:
        raise w.fail(f"op {op.index} ({op.type}): inputs {src} and {matrix} -> {out}; expected (1, H, W, C) and "
                     "(1, 4, 4) -> (1, OH, OW, C)")
    height, width = _int(w, op, opts, "output_height", 1), _int(w, op, opts, "output_width", 1)
    if (height, width) != out[1:3]:
        raise w.fail(f"op {op.index} ({op.type}): options say {height}x{width}, the output is declared {out}")
    return Translated("transform_tensor", {"output_height": height, "output_width": width})


def _transform_landmarks(w: Walker, op: Op) -> Translated:
    """``TransformLandmarks`` v2: landmarks ``(1, N, D)`` (``Prepare``: rank 3) and a ``(1, 4, 4)``
    matrix -> ``(1, N, D)``; D (``dimensions``, the output's last axis) must be 2 or 3 (``Eval``)."""
    _version_2(w, op)
    src, matrix = _shape(w, op.inputs[0]), _shape(w, op.inputs[1])
    if len(src) != 3 or src[0] != 1 or src[2] not in (2, 3) or matrix != (1, 4, 4) or _shape(w, op.outputs[0]) != src:
        raise w.fail(f"op {op.index} ({op.type}): inputs {src} and {matrix} -> {_shape(w, op.outputs[0])}; expected "
                     "(1, N, 2 or 3) and (1, 4, 4) -> the landmarks' shape")
    return Translated("transform_landmarks")


# "CUSTOM:<name>" -> (translator, activations it reads): MediaPipe's ops that GraphNet runs
CUSTOM_OPS: dict[str, tuple[Callable[[Walker, Op], Translated], int]] = {
    "CUSTOM:Landmarks2TransformMatrix": (_landmarks_to_matrix, 1),
    "CUSTOM:TransformTensorBilinear": (_transform_tensor, 2),
    "CUSTOM:TransformLandmarks": (_transform_landmarks, 2),
}
CUSTOM_TRANSLATORS = {name: fn for name, (fn, _) in CUSTOM_OPS.items()}
CUSTOM_ACTIVATION_INPUTS = {name: n for name, (_, n) in CUSTOM_OPS.items()}
