"""Image reading and MediaPipe-exact letterboxing (numpy + OpenCV, no torch).

MediaPipe's CPU path (``mediapipe/calculators/tensor/image_to_tensor_calculator.cc`` with
``keep_aspect_ratio: true`` and ``BORDER_ZERO``, via ``image_to_tensor_converter_opencv.cc``)
does this: the region of interest is the whole image grown to a square around its centre
(``PadRoi`` in ``image_to_tensor_utils.cc``); ``cv::getPerspectiveTransform`` maps the ROI's
corners onto the tensor's corners (pixel edge 0 -> 0 and W -> size, no half-pixel shift);
``cv::warpPerspective`` resamples the *uint8* image bilinearly with a black border; only then
is the result scaled to [-1, 1] (so the border becomes -1). A plain ``cv2.resize`` (half-pixel
centres) moves boxes by up to 0.06.

MediaPipe 0.10.14 links an OpenCV whose ``warpPerspective`` is the 3.4-4.x fixed-point one (1/32-pixel
grid, 15-bit bilinear weights); OpenCV 5 rewrote it, which moves warped pixels by up to 4 levels and
face scores by up to 0.013. So :func:`letterbox` builds the old warp's fixed-point maps itself
(:func:`_warp_maps`) and resamples with ``cv2.remap``, whose fixed-point path is the same in 4.x and 5:
the tensor is bit-identical to MediaPipe's whatever OpenCV is installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from blazeport.errors import BlazeportError


class ImageReadError(BlazeportError):
    """An image file that OpenCV cannot decode."""


@dataclass(frozen=True)
class Letterbox:
    """Padding added around the image, as fractions of the padded square (MediaPipe's order)."""

    left: float
    top: float
    right: float
    bottom: float


def read_image(path: str | Path) -> np.ndarray:
    """Read any OpenCV-readable image as RGB uint8 ``(H, W, 3)``.

    Grayscale and 16-bit files are converted, alpha is dropped, EXIF rotation is applied.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read the file ({exc.strerror or exc}).") from None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise ImageReadError(f"{path}: not an image OpenCV can decode (empty, truncated or another format).")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Accept (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA uint8 arrays."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise BlazeportError(f"images must be uint8 arrays, got {image.dtype}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2RGB)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise BlazeportError(f"expected an (H, W[, 1|3|4]) image, got shape {image.shape}")


def roi_transform(width: int, height: int, size: int) -> tuple[np.ndarray, Letterbox]:
    """The 3x3 matrix MediaPipe builds for a whole-image ROI padded to a square, and the padding."""
    side = float(max(width, height))
    cx, cy = width / 2.0, height / 2.0
    x0, y0, x1, y1 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
    # cv::boxPoints order for an unrotated rect: bottom-left, top-left, top-right, bottom-right
    src = np.array([[x0, y1], [x0, y0], [x1, y0], [x1, y1]], dtype=np.float32)
    dst = np.array([[0, size], [0, 0], [size, 0], [size, size]], dtype=np.float32)
    matrix = cv2.getPerspectiveTransform(src, dst)
    pad_x = (side - width) / 2.0 / side
    pad_y = (side - height) / 2.0 / side
    return matrix, Letterbox(pad_x, pad_y, pad_x, pad_y)


_INTER_BITS = 5  # OpenCV's INTER_BITS: warps sample on a 1/32-pixel grid
_INTER_TAB_SIZE = 1 << _INTER_BITS
_WARP_BLOCK_COLS = 64  # WarpPerspectiveInvoker's blocks: BLOCK_SZ 32 -> 16 rows x 64 columns


@lru_cache(maxsize=32)
def _warp_maps(width: int, height: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed-point maps OpenCV 3.4-4.x ``warpPerspective(INTER_LINEAR)`` builds for our ROI.

    As ``WarpPerspectiveInvoker`` in ``imgproc/src/imgwarp.cpp``: the matrix is inverted (LU, double);
    for output pixel (x, y) in a block starting at column xb, X = M0*xb + M1*y + M2 + M0*(x - xb)
    (likewise Y and W, in that order: the last bit decides ties), then X*32/W is rounded half to
    even. Integer parts (>> 5) make the ``CV_16SC2`` map, the 5+5 fractional bits the ``CV_16UC1``
    index into the bilinear weight table; ``cv2.remap`` then blends exactly as ``warpPerspective``.
    """
    matrix, _ = roi_transform(width, height, size)
    m = cv2.invert(matrix.astype(np.float64), flags=cv2.DECOMP_LU)[1]
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    xb = x - x % _WARP_BLOCK_COLS
    dx = x - xb
    w = m[2, 0] * xb + m[2, 1] * y + m[2, 2] + m[2, 0] * dx
    w = np.where(w != 0, _INTER_TAB_SIZE / np.where(w != 0, w, 1.0), 0.0)
    limits = (np.iinfo(np.int32).min, np.iinfo(np.int32).max)
    fx = np.rint(np.clip((m[0, 0] * xb + m[0, 1] * y + m[0, 2] + m[0, 0] * dx) * w, *limits)).astype(np.int64)
    fy = np.rint(np.clip((m[1, 0] * xb + m[1, 1] * y + m[1, 2] + m[1, 0] * dx) * w, *limits)).astype(np.int64)
    xy = np.stack([fx >> _INTER_BITS, fy >> _INTER_BITS], -1).clip(-32768, 32767).astype(np.int16)
    alpha = ((fy & (_INTER_TAB_SIZE - 1)) * _INTER_TAB_SIZE + (fx & (_INTER_TAB_SIZE - 1))).astype(np.uint16)
    xy.flags.writeable = alpha.flags.writeable = False  # shared through the cache
    return xy, alpha


def letterbox(image: np.ndarray, size: int, normalization: tuple[float, float] = (-1.0, 1.0)) -> tuple[np.ndarray, Letterbox]:
    """RGB uint8 image -> ``(size, size, 3)`` float32 tensor in ``normalization`` range, padding."""
    image = as_rgb(image)
    h, w = image.shape[:2]
    pad = _letterbox_pad(w, h, size)
    xy, alpha = _warp_maps(w, h, size)
    warped = cv2.remap(
        image, xy, alpha, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0)
    )  # (size, size, 3) uint8, what MediaPipe's cv::warpPerspective gives
    lo, hi = normalization
    # = warped.astype(float32) * scale + lo, without the temporaries (same two float32 roundings)
    tensor = np.multiply(warped, np.float32((hi - lo) / 255.0), dtype=np.float32)
    np.add(tensor, np.float32(lo), out=tensor)
    return tensor, pad


@lru_cache(maxsize=32)
def _letterbox_pad(width: int, height: int, size: int) -> Letterbox:
    """:func:`roi_transform`'s padding, cached per image and tensor size like the warp maps."""
    return roi_transform(width, height, size)[1]
