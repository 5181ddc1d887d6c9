"""Regions of interest: MediaPipe's rotated rectangles, the crops made from them, and the way back.

What the landmark models see is not the detection's box but a rotated square around it. This
module holds that geometry as MediaPipe 0.10.14 computes it (numpy + OpenCV, no torch):

- :func:`detection_to_rect` is ``DetectionsToRectsCalculator`` (``detections_to_rects_calculator.cc``):
  the box's centre and size, rotated so that the vector from keypoint 0 to keypoint 1, measured in
  pixels, points along ``target_angle``.
- :func:`transform_rect` is ``RectTransformationCalculator`` (``rect_transformation_calculator.cc``):
  square the rect on its long side *in pixels*, then scale it.
- :func:`rect_transform` and :func:`warp_rect` are ``ImageToTensorCalculator``'s CPU path
  (``image_to_tensor_converter_opencv.cc``): ``cv::boxPoints`` of the rotated rect mapped onto the
  tensor's corners with ``cv::getPerspectiveTransform``, then ``cv::warpPerspective``, bilinear,
  ``BORDER_REPLICATE`` (the calculator's default, ``image_to_tensor_utils.cc``). The warp is the
  fixed-point one of the OpenCV MediaPipe links (:func:`blazeport.pipeline.preprocess.perspective_maps`).
- :func:`project_landmarks` is ``LandmarkProjectionCalculator`` (``landmark_projection_calculator.cc``).
- :func:`roi_from_landmarks` is ``FaceLandmarkLandmarksToRoi``: the next video frame's ROI from the landmarks.
- :func:`associate` is ``AssociationNormRectCalculator`` (``association_calculator.h``), which
  ``face_landmark_front_cpu`` runs on the rects of all detections (min_similarity_threshold 0.5).

Rects are normalized to the image (``x_center``, ``y_center``, ``width``, ``height`` in [0, 1] of
the image's width or height) with a rotation in radians, as MediaPipe's ``NormalizedRect``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

from blazeport.pipeline.preprocess import fit_for_remap, perspective_maps

__all__ = ["Rect", "associate", "detection_to_rect", "landmarks_to_box", "normalize_radians", "project_landmarks",
           "rect_iou", "rect_transform", "roi_from_detection", "roi_from_landmarks", "transform_rect", "warp_rect"]


@dataclass(frozen=True)
class Rect:
    """MediaPipe's ``NormalizedRect``: centre and size normalized to the image, rotation in radians
    (counter-clockwise in the image as displayed, y pointing down)."""

    x_center: float
    y_center: float
    width: float
    height: float
    rotation: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def corners(self, image_width: int, image_height: int) -> np.ndarray:
        """The four corners in pixels, ``cv::boxPoints`` order (bottom-left, top-left, top-right,
        bottom-right of the unrotated rect)."""
        return _box_points(self, image_width, image_height)


@lru_cache(maxsize=1)
def _libm() -> Any:
    """The C library's float ``atan2f``, ``cosf`` and ``sinf``, or ``None`` where it cannot be loaded.

    MediaPipe's calculators call ``std::atan2`` and ``std::cos`` / ``std::sin`` on floats, which are
    these (the 0.10.14 wheel imports them from glibc's libm); the double functions rounded to float
    differ from them in the last bit now and then, and a video's tracking loop feeds such bits back
    frame after frame."""
    for name in ("libm.so.6", ctypes.util.find_library("m")):
        try:
            lib = ctypes.CDLL(name) if name else None
        except OSError:
            continue
        if lib is None:
            continue
        for fn, argc in (("atan2f", 2), ("cosf", 1), ("sinf", 1)):
            getattr(lib, fn).restype = ctypes.c_float
            getattr(lib, fn).argtypes = [ctypes.c_float] * argc
        return lib
    return None


def _f32(fn: str, *args: float) -> np.float32:
    """``fn`` (``atan2``, ``cos``, ``sin``) of float32 arguments, as C's float function gives it."""
    lib = _libm()
    if lib is not None:
        return np.float32(getattr(lib, fn + "f")(*args))
    return np.float32(getattr(math, fn)(*(float(np.float32(a)) for a in args)))


def normalize_radians(angle: float) -> float:
    """An angle in [-pi, pi), as MediaPipe's ``NormalizeRadians`` (in double, like its ``M_PI``)."""
    return angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))


def detection_to_rect(box: tuple[float, float, float, float], keypoints: Any, image_width: int, image_height: int,
                      start: int = 0, end: int = 1, target_angle_degrees: float = 0.0) -> Rect:
    """``DetectionsToRectsCalculator``: the rect of a normalized ``(xmin, ymin, width, height)`` box,
    rotated by the angle of keypoint ``start`` -> ``end`` measured in pixels (MediaPipe's face graph:
    keypoints 0 and 1, the eyes, target angle 0). In float32 step by step as the calculator
    computes it (``atan2f``; the normalization in double, stored as float), so that a video's ROIs
    stay bit for bit MediaPipe's: its tracking loop feeds each frame's ROI into the next."""
    f = np.float32
    xmin, ymin, w, h = (f(v) for v in box)
    x0, y0 = f(keypoints[start][0]) * f(image_width), f(keypoints[start][1]) * f(image_height)
    x1, y1 = f(keypoints[end][0]) * f(image_width), f(keypoints[end][1]) * f(image_height)
    target = f(math.pi * target_angle_degrees / 180.0)
    rotation = f(normalize_radians(float(target - _f32("atan2", -(y1 - y0), x1 - x0))))
    return Rect(float(xmin + w / f(2)), float(ymin + h / f(2)), float(w), float(h), float(rotation))


def transform_rect(rect: Rect, image_width: int, image_height: int, scale_x: float = 1.0, scale_y: float = 1.0,
                   square_long: bool = True) -> Rect:
    """``RectTransformationCalculator`` without shifts: square on the long side in pixels (so the
    crop is square on the image whatever its aspect), then scale; in float32 as the calculator."""
    f = np.float32
    width, height = f(rect.width), f(rect.height)
    if square_long:
        long_side = max(width * f(image_width), height * f(image_height))
        width, height = long_side / f(image_width), long_side / f(image_height)
    return Rect(rect.x_center, rect.y_center, float(width * f(scale_x)), float(height * f(scale_y)), rect.rotation)


def roi_from_detection(box: tuple[float, float, float, float], keypoints: Any, image_width: int,
                       image_height: int) -> Rect:
    """``FaceDetectionFrontDetectionToRoi`` (``face_detection_front_detection_to_roi.pbtxt``): the
    face landmark model's ROI from a short-range detection: rotation from the eyes (keypoints 0
    and 1, target angle 0), squared on the long side, scaled by 1.5."""
    rect = detection_to_rect(box, keypoints, image_width, image_height, 0, 1, 0.0)
    return transform_rect(rect, image_width, image_height, 1.5, 1.5, square_long=True)


def landmarks_to_box(landmarks: Any) -> tuple[float, float, float, float]:
    """``LandmarksToDetectionCalculator`` (``landmarks_to_detection_calculator.cc``): the normalized
    ``(xmin, ymin, width, height)`` box of all the landmarks' x and y, in float32. Its maxima start at
    ``std::numeric_limits<float>::min()``, the smallest *positive* float, not the lowest: a face whose
    landmarks all lie left of (or above) the image gets a box that reaches 1.2e-38, as MediaPipe's does."""
    pts = np.asarray(landmarks, np.float32)[:, :2]
    tiny = np.finfo(np.float32).tiny
    lo, hi = pts.min(0), np.maximum(pts.max(0), tiny)
    size = hi - lo
    return float(lo[0]), float(lo[1]), float(size[0]), float(size[1])


def roi_from_landmarks(landmarks: Any, image_width: int, image_height: int) -> Rect:
    """``FaceLandmarkLandmarksToRoi`` (``face_landmark_landmarks_to_roi.pbtxt``): the next video frame's
    ROI from a face's 468 normalized landmarks: the box of all of them (:func:`landmarks_to_box`),
    rotated by the angle of landmark 33 -> 263 (the outer eye corners, in pixels, target angle 0),
    squared on the long side, scaled by 1.5."""
    pts = np.asarray(landmarks, np.float32)
    rect = detection_to_rect(landmarks_to_box(pts), pts[:, :2], image_width, image_height, 33, 263, 0.0)
    return transform_rect(rect, image_width, image_height, 1.5, 1.5, square_long=True)


def _box_points(rect: Rect, image_width: int, image_height: int) -> np.ndarray:
    """The rect's corners in pixels as ``ImageToTensorCalculator`` gets them: ``cv::boxPoints`` of
    ``cv::RotatedRect(centre, size, roi.rotation * 180.f / M_PI)`` (the product in float, the division
    in double, the angle stored as float), computed as the OpenCV 4.x that MediaPipe 0.10.14 links
    does it (``RotatedRect::points``: cos and sin in double, every other step in float, no fused
    multiply-add). OpenCV 5's ``cv2.boxPoints`` gives other last bits for 108 of 150 random rects, and
    the crops made from them differed from MediaPipe's own ``ImageToTensorCalculator`` in 89 of 150
    (a few pixels, by one to four grey levels); with this, none of 400 do."""
    f = np.float32
    cx, cy = f(rect.x_center) * f(image_width), f(rect.y_center) * f(image_height)
    w, h = f(rect.width) * f(image_width), f(rect.height) * f(image_height)
    degrees = f(float(f(rect.rotation) * f(180.0)) / math.pi)
    angle = float(degrees) * math.pi / 180.0
    b, a = f(math.cos(angle)) * f(0.5), f(math.sin(angle)) * f(0.5)
    p0 = (cx - a * h - b * w, cy + b * h - a * w)
    p1 = (cx + a * h - b * w, cy - b * h - a * w)
    p2 = (f(2) * cx - p0[0], f(2) * cy - p0[1])
    p3 = (f(2) * cx - p1[0], f(2) * cy - p1[1])
    return np.array([p0, p1, p2, p3], np.float32)


def rect_transform(rect: Rect, image_width: int, image_height: int, out_width: int, out_height: int) -> np.ndarray:
    """The 3x3 matrix that maps the rect's corners (pixels) onto the output's corners (pixel edge 0
    -> 0 and W -> out_width, no half-pixel shift), as ``cv::getPerspectiveTransform`` gives it."""
    src = _box_points(rect, image_width, image_height)
    dst = np.array([[0, out_height], [0, 0], [out_width, 0], [out_width, out_height]], dtype=np.float32)
    return cv2.getPerspectiveTransform(src, dst)


def warp_rect(image: np.ndarray, rect: Rect, size: int, normalization: tuple[float, float] = (0.0, 1.0),
              border: str = "replicate") -> np.ndarray:
    """The rect of an RGB uint8 image as a ``(size, size, 3)`` float32 tensor in ``normalization``
    range: MediaPipe's ``ImageToTensorCalculator`` with a ``NORM_RECT`` (bilinear, the warp of the
    OpenCV it links, ``BORDER_REPLICATE`` by default, ``border="zero"`` for ``BORDER_ZERO``)."""
    image = fit_for_remap(image)  # a side of 32767 px or more: shrunk first (the rect is normalized)
    h, w = image.shape[:2]
    xy, alpha = perspective_maps(rect_transform(rect, w, h, size, size), size, size)
    mode = {"replicate": cv2.BORDER_REPLICATE, "zero": cv2.BORDER_CONSTANT}[border]
    warped = cv2.remap(image, xy, alpha, cv2.INTER_LINEAR, borderMode=mode, borderValue=(0, 0, 0))
    lo, hi = normalization
    tensor = np.multiply(warped, np.float32((hi - lo) / 255.0), dtype=np.float32)
    np.add(tensor, np.float32(lo), out=tensor)
    return tensor


def project_landmarks(landmarks: np.ndarray, rect: Rect) -> np.ndarray:
    """``LandmarkProjectionCalculator``: ``(N, 3)`` landmarks normalized to the crop -> normalized
    to the image. x and y are rotated about the crop's centre by the rect's rotation and scaled by
    its width and height; z (normalized like x) is scaled by the width."""
    pts = np.asarray(landmarks, np.float32)
    x, y = pts[:, 0] - np.float32(0.5), pts[:, 1] - np.float32(0.5)
    c, s = _f32("cos", rect.rotation), _f32("sin", rect.rotation)  # std::cos / std::sin of the float rotation
    out = np.empty_like(pts)
    out[:, 0] = (c * x - s * y) * np.float32(rect.width) + np.float32(rect.x_center)
    out[:, 1] = (s * x + c * y) * np.float32(rect.height) + np.float32(rect.y_center)
    out[:, 2:] = pts[:, 2:] * np.float32(rect.width)
    return out


def rect_iou(a: Rect, b: Rect) -> float:
    """IoU of two rects as axis-aligned boxes, rotation ignored (``AssociationNormRectCalculator``'s
    ``GetRectangle``)."""
    ax0, ay0, bx0, by0 = a.x_center - a.width / 2, a.y_center - a.height / 2, b.x_center - b.width / 2, b.y_center - b.height / 2
    iw = min(ax0 + a.width, bx0 + b.width) - max(ax0, bx0)
    ih = min(ay0 + a.height, by0 + b.height) - max(ay0, by0)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (a.width * a.height + b.width * b.height - inter)


def associate(rects: list[Any], key: Any = None, threshold: float = 0.5) -> list[Any]:
    """``AssociationNormRectCalculator`` on one list: each element in turn removes the earlier ones it
    overlaps by IoU > ``threshold`` and is appended, so of two overlapping faces the later (lower
    scored) one's rect is kept, at the end. ``key`` maps an element to its :class:`Rect`."""
    key = key or (lambda r: r)
    out: list[Any] = []
    for item in rects:
        rect = key(item)
        out = [o for o in out if not rect_iou(rect, key(o)) > threshold]
        out.append(item)
    return out
