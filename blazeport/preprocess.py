"""Image reading and MediaPipe-exact letterboxing (numpy + OpenCV, no torch).

MediaPipe's CPU path (``mediapipe/calculators/tensor/image_to_tensor_calculator.cc`` with
``keep_aspect_ratio: true`` and ``BORDER_ZERO``, via ``image_to_tensor_converter_opencv.cc``)
does this: the region of interest is the whole image grown to a square around its centre
(``PadRoi`` in ``image_to_tensor_utils.cc``); ``cv::getPerspectiveTransform`` maps the ROI's
corners onto the tensor's corners (pixel edge 0 -> 0 and W -> size, no half-pixel shift);
``cv::warpPerspective`` resamples the *uint8* image bilinearly with a black border; only then
is the result scaled to [-1, 1] (so the border becomes -1). We call the same OpenCV functions
with the same points so the resampling, its fixed-point rounding and the uint8 rounding match.
A plain ``cv2.resize`` (half-pixel centres) moves boxes by up to 0.06.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def letterbox(image: np.ndarray, size: int, normalization: tuple[float, float] = (-1.0, 1.0)) -> tuple[np.ndarray, Letterbox]:
    """RGB uint8 image -> ``(size, size, 3)`` float32 tensor in ``normalization`` range, padding."""
    image = as_rgb(image)
    h, w = image.shape[:2]
    matrix, pad = roi_transform(w, h, size)
    warped = cv2.warpPerspective(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0)
    )  # (size, size, 3) uint8
    lo, hi = normalization
    tensor = warped.astype(np.float32) * np.float32((hi - lo) / 255.0) + np.float32(lo)
    return tensor, pad
