"""MediaPipe's three custom TFLite ops, as PyTorch functions: the attention of the face mesh.

``face_landmark_with_attention.tflite`` (what ``FaceMesh(refine_landmarks=True)`` runs) is a face
mesh whose lips, eyes and irises are refined by small sub-networks that each look at a 16x16 crop
of a 48x48 feature map. The crops are cut by three custom ops that LiteRT does not have (MediaPipe
links its own kernels into its op resolver, ``mediapipe/util/tflite/op_resolver.cc``):

- ``Landmarks2TransformMatrix`` (v2): from the coarse mesh, a rotated box around a subset of its
  landmarks (the lips, one eye) as a 4x4 matrix mapping crop pixels to feature-map pixels
  (``mediapipe/util/tflite/operations/landmarks_to_transform_matrix.cc``);
- ``TransformTensorBilinear`` (v2): the feature map sampled through that matrix, bilinear, zero
  outside (``transform_tensor_bilinear.cc``);
- ``TransformLandmarks`` (v2): the sub-network's 2-D landmarks mapped back through a matrix
  (``transform_landmarks.cc``).

Each function here follows its kernel step by step (the same formulas, in float32, in the same
order where the order changes the rounding), for a batch: the kernels run batch 1, and each image
of a batch here uses its own matrix. Options arrive as the flexbuffer maps of the ops'
``custom_options`` (read by ``tflite/delegates/gpu/common/mediapipe/*.cc``'s ``Parse*Attributes``),
checked by :mod:`blazeport.convert.custom`. Layout: feature maps NCHW (as the rest of
:class:`~blazeport.models.graph.GraphNet`), landmarks and matrices as TFLite holds them.

Everything is written with ops that ONNX and TFLite have as builtins (gather, floor, atan2, cos,
sin, min/max, arithmetic), so an exported model needs no custom op.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["landmarks_to_transform_matrix", "transform_landmarks", "transform_tensor_bilinear"]


def landmarks_to_transform_matrix(landmarks: torch.Tensor, subset: Sequence[int], left: int, right: int,
                                  target_rotation: float, output_height: int, output_width: int, scale_x: float,
                                  scale_y: float) -> torch.Tensor:
    """``Landmarks2TransformMatrix`` v2 (``LandmarksToTransformMatrixV2``): landmarks ``(B, N, 3)`` ->
    the matrix ``(B, 4, 4)`` that maps a pixel ``(x, y, 0, 1)`` of an ``output_width x output_height``
    crop onto the landmarks' frame.

    ``EstimateRotationRadians``: ``rotation = target - atan2(right.y - left.y, right.x - left.x)``.
    ``EstimateCenterAndSize``: the ``subset`` landmarks (x, y) rotated by ``rotation``; their
    bounding box gives the crop's size, and its centre rotated back the crop's centre. The matrix is
    ``shift(centre) * rotate(-rotation) * scale(scale_x * width / output_width, scale_y * height /
    output_height) * shift(-output_width / 2, -output_height / 2)``, written out below.
    """
    idx = torch.as_tensor(list(subset), dtype=torch.long, device=landmarks.device)
    left_xy, right_xy = landmarks[:, left, :2], landmarks[:, right, :2]  # (B, 2) each
    rotation = target_rotation - torch.atan2(right_xy[:, 1] - left_xy[:, 1], right_xy[:, 0] - left_xy[:, 0])  # (B,)
    cos, sin = torch.cos(rotation)[:, None], torch.sin(rotation)[:, None]  # (B, 1)
    x, y = landmarks[:, idx, 0], landmarks[:, idx, 1]  # (B, K): the subset
    # Mat3 t_rotation * (x, y, 1): sum over k in order; the third term is 0 * 1
    rx, ry = cos * x + -sin * y, sin * x + cos * y  # (B, K)
    x_max, x_min = rx.amax(1), rx.amin(1)  # (B,)
    y_max, y_min = ry.amax(1), ry.amin(1)
    width, height = x_max - x_min, y_max - y_min
    mid_x, mid_y = (x_min + x_max) / 2, (y_min + y_max) / 2
    # t_rotation_inverse (rotation -r) applied to the box's centre
    cos_i, sin_i = torch.cos(-rotation), torch.sin(-rotation)
    centre_x, centre_y = cos_i * mid_x + -sin_i * mid_y, sin_i * mid_x + cos_i * mid_y
    # t = shift(centre) * rotate(-r) * scale(sx, sy) * shift(-W/2, -H/2)
    sx = scale_x * width / output_width
    sy = scale_y * height / output_height
    m00, m01 = cos_i * sx, -sin_i * sy
    m10, m11 = sin_i * sx, cos_i * sy
    half_w, half_h = -1.0 * (output_width / 2.0), -1.0 * (output_height / 2.0)
    m03 = m00 * half_w + m01 * half_h + centre_x
    m13 = m10 * half_w + m11 * half_h + centre_y
    zero, one = torch.zeros_like(m00), torch.ones_like(m00)
    rows = [m00, m01, zero, m03, m10, m11, zero, m13, zero, zero, one, zero, zero, zero, zero, one]
    return torch.stack(rows, 1).reshape(-1, 4, 4)


def transform_tensor_bilinear(x: torch.Tensor, matrix: torch.Tensor, output_height: int,
                              output_width: int) -> torch.Tensor:
    """``TransformTensorBilinear`` v2 (``TransformTensorBilinearV2``): feature map ``(B, C, H, W)``
    sampled at ``matrix @ (x, y, 0, 1)`` for every pixel of an ``output_height x output_width`` output
    -> ``(B, C, output_height, output_width)``.

    v2 is "align corners": the matrix is first corrected to ``T -> S * T * A`` with A a half-pixel
    shift and S its inverse, which changes only its translation (``x_transform[3] += x_transform[0]
    * 0.5 + x_transform[1] * 0.5 - 0.5``). A sample outside ``[0, W - 1] x [0, H - 1]`` is 0 in
    every channel; inside, the four neighbours (0 past the edge) are mixed bilinearly as the kernel
    writes it: ``upper = (1 - fx) * q11 + fx * q21``, ``lower = (1 - fx) * q12 + fx * q22``,
    ``lc * lower + (1 - lc) * upper``.
    """
    b, c, h, w = x.shape
    xt, yt = matrix[:, 0], matrix[:, 1]  # (B, 4): the first two rows
    x_shift = xt[:, 3] + (xt[:, 0] * 0.5 + xt[:, 1] * 0.5 - 0.5)  # (B,)
    y_shift = yt[:, 3] + (yt[:, 0] * 0.5 + yt[:, 1] * 0.5 - 0.5)
    oy, ox = torch.meshgrid(torch.arange(output_height, dtype=x.dtype, device=x.device),
                            torch.arange(output_width, dtype=x.dtype, device=x.device), indexing="ij")
    ox, oy = ox.reshape(1, -1), oy.reshape(1, -1)  # (1, P): P = output pixels, row-major
    # DotProduct(transform, (out_x, out_y, 0, 1)), left to right; the z term is 0
    tx = xt[:, 0:1] * ox + xt[:, 1:2] * oy + x_shift[:, None]  # (B, P)
    ty = yt[:, 0:1] * ox + yt[:, 1:2] * oy + y_shift[:, None]
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)  # (B, P)
    x0, y0 = torch.floor(tx), torch.floor(ty)
    fx, fy = tx - x0, ty - y0  # right_contrib, lower_contrib
    flat = x.reshape(b, c, h * w)

    def read(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        """``ReadValue(h, w)``: the feature at (row, col) in every channel, 0 past the edge."""
        valid = inside & (row >= 0) & (col >= 0) & (row <= h - 1) & (col <= w - 1)  # (B, P)
        index = torch.where(valid, row * w + col, torch.zeros_like(row)).long()  # (B, P): any in-range index if not valid
        values = flat.gather(2, index[:, None, :].expand(b, c, index.shape[1]))  # (B, C, P)
        return torch.where(valid[:, None, :], values, torch.zeros_like(values))

    q11, q21 = read(y0, x0), read(y0, x0 + 1)
    q12, q22 = read(y0 + 1, x0), read(y0 + 1, x0 + 1)
    fx, fy = fx[:, None, :], fy[:, None, :]  # (B, 1, P)
    upper = (1.0 - fx) * q11 + fx * q21
    lower = (1.0 - fx) * q12 + fx * q22
    out = fy * lower + (1.0 - fy) * upper  # (B, C, P)
    out = torch.where(inside[:, None, :], out, torch.zeros_like(out))
    return out.reshape(b, c, output_height, output_width)


def transform_landmarks(landmarks: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``TransformLandmarks`` v2 (``TransformLandmarksV2``): landmarks ``(B, N, D)`` (D = 2 or 3) with
    x and y mapped by the matrix's first two rows as points ``(x, y, 0, 1)``; z, when there is one,
    is copied. v2 has no ``scale`` option (``ParseTransformLandmarksV2Attributes`` sets 1)."""
    px, py = landmarks[..., 0], landmarks[..., 1]  # (B, N)
    m = matrix[:, :2, :, None]  # (B, 2, 4, 1): rows x, y; column per landmark broadcast
    # DotProduct(row, (x, y, 0, 1)) left to right; the z term is 0
    out_x = m[:, 0, 0] * px + m[:, 0, 1] * py + m[:, 0, 3]
    out_y = m[:, 1, 0] * px + m[:, 1, 1] * py + m[:, 1, 3]
    return torch.stack([out_x, out_y, *([landmarks[..., 2]] if landmarks.shape[-1] == 3 else [])], -1)
