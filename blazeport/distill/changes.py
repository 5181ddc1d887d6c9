"""The changes a camera makes to a photo, with explicit parameters: what Noisy Student training applies to
the student's input (:mod:`blazeport.distill.noisy`) and what ``tools/changed_photos.py`` measures.

Numpy and OpenCV only (``--help`` lists the terms without importing torch). Each change comes in one
of two kinds:

- **photometric** (:data:`PHOTOMETRIC`): low light, sensor noise, motion blur, focus blur, JPEG, colour
  cast. They leave every face where it was, so a face's box and keypoints are the same before and
  after; :func:`apply_photometric` applies them in a camera's order (optics, then the sensor, then the
  image processor: motion and focus blur, low light and noise, colour cast, JPEG).
- **geometric** (:data:`GEOMETRIC`): a horizontal flip, quarter and half turns, a crop, a small
  perspective tilt. They move faces, so labels must move with them: :func:`homography` gives the 3x3
  matrix that maps a point of the unchanged picture to the changed one (pixel coordinates, pixel
  centres at i + 0.5 in a frame ``[0, size]``), and :func:`mirrors` whether it is a reflection, in
  which case the subject's right eye becomes the left one in picture order (BlazeFace's keypoints are
  the subject's right eye, left eye, nose tip, mouth, right tragion, left tragion:
  :data:`MIRROR_KEYPOINTS` swaps 0<->1 and 4<->5). Flips and turns are exact pixel permutations of a
  square picture; a crop and a tilt resample it.

Blur and noise strengths are given in pixels *of the model's input* (128 px for short range): on a
bigger photo :func:`apply_photometric` scales kernels by ``scale`` (the photo's long side over the
input size), so a change means the same thing to the detector whether it is applied to the 128 px
letterboxed tensor during training or to the full photo before detection.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

__all__ = ["GEOMETRIC", "MIRROR_KEYPOINTS", "PHOTOMETRIC", "apply_photometric", "draw_params", "homography", "mirrors"]

PHOTOMETRIC = ("dark", "noise", "motion", "focus", "jpeg", "cast")
GEOMETRIC = ("flip", "turn", "half", "crop", "tilt")
MIRROR_KEYPOINTS = (1, 0, 2, 3, 5, 4)  # keypoint order after a reflection: the subject's right eye becomes the left


def draw_params(name: str, rng: np.random.Generator) -> dict[str, float]:
    """One change's random parameters (the ranges Noisy Student training draws from)."""
    if name == "dark":  # a dim scene: exposure gain, the sensor's response curve, read noise
        return {"gamma": rng.uniform(1.5, 2.5), "gain": rng.uniform(0.2, 0.6), "noise": rng.uniform(2.0, 8.0)}
    if name == "noise":
        return {"sigma": rng.uniform(4.0, 16.0)}  # on 0-255
    if name == "motion":
        return {"length": rng.uniform(5.0, 13.0), "angle": rng.uniform(0.0, 180.0)}  # input pixels, degrees
    if name == "focus":
        return {"radius": rng.uniform(1.0, 3.0)}  # input pixels
    if name == "jpeg":
        return {"quality": float(rng.integers(10, 41))}
    if name == "cast":
        return {"r": rng.uniform(0.7, 1.3), "g": rng.uniform(0.85, 1.15), "b": rng.uniform(0.7, 1.3)}
    if name == "turn":
        return {"k": float(rng.choice([1, 3]))}  # a quarter turn either way
    if name in ("flip", "half"):
        return {}
    if name == "crop":  # zoom into a window of 1/z of the side, anywhere in the picture
        z = rng.uniform(1.15, 1.6)
        return {"zoom": z, "u": rng.uniform(), "v": rng.uniform()}
    if name == "tilt":  # each corner moved by up to 8% of the side: a camera a little off-axis
        return {f"d{i}": rng.uniform(-0.08, 0.08) for i in range(8)}
    raise ValueError(f"unknown change {name!r}")


def homography(name: str, params: dict[str, float], size: float) -> np.ndarray:
    """The 3x3 matrix taking a point of the unchanged ``size`` x ``size`` picture to the changed one."""
    s = float(size)
    if name == "flip":
        return np.array([[-1.0, 0, s], [0, 1, 0], [0, 0, 1]])
    if name == "half":
        return np.array([[-1.0, 0, s], [0, -1, s], [0, 0, 1]])
    if name == "turn":  # np.rot90 / torch.rot90 over (rows, columns): k=1 sends (x, y) to (y, s - x)
        k = int(params["k"]) % 4
        m = np.eye(3)
        for _ in range(k):
            m = np.array([[0.0, 1, 0], [-1, 0, s], [0, 0, 1]]) @ m
        return m
    if name == "crop":
        z = params["zoom"]
        u0, v0 = params["u"] * s * (1 - 1 / z), params["v"] * s * (1 - 1 / z)
        return np.array([[z, 0, -z * u0], [0, z, -z * v0], [0, 0, 1]])
    if name == "tilt":
        src = np.float32([[0, 0], [s, 0], [s, s], [0, s]])
        dst = src + np.float32([params[f"d{i}"] for i in range(8)]).reshape(4, 2) * s
        return cv2.getPerspectiveTransform(src, dst).astype(np.float64)
    raise ValueError(f"{name!r} is not a geometric change")


def mirrors(name: str) -> bool:
    """Whether ``name`` reflects the picture (keypoint order then follows :data:`MIRROR_KEYPOINTS`)."""
    return name == "flip"


def _line_kernel(length: float, angle: float) -> np.ndarray:
    """A normalised straight line of ``length`` pixels at ``angle`` degrees: a camera moved during exposure."""
    size = math.ceil(length) | 1
    k = np.zeros((size, size), np.float32)
    c = (size - 1) / 2
    dx, dy = math.cos(math.radians(angle)) * (length - 1) / 2, math.sin(math.radians(angle)) * (length - 1) / 2
    shift = 4  # sub-pixel end points (cv2 fixed point)
    p0 = (round((c - dx) * 2**shift), round((c - dy) * 2**shift))
    p1 = (round((c + dx) * 2**shift), round((c + dy) * 2**shift))
    cv2.line(k, p0, p1, 1.0, 1, cv2.LINE_AA, shift)
    return k / k.sum()


def _disk_kernel(radius: float) -> np.ndarray:
    """A normalised disk of ``radius`` pixels: a lens focused at another distance."""
    r = math.ceil(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float32)
    k = np.clip(radius + 0.5 - np.sqrt(xx * xx + yy * yy), 0.0, 1.0)  # anti-aliased edge
    return k / k.sum()


def apply_photometric(image: np.ndarray, changes: list[tuple[str, dict[str, float]]], rng: np.random.Generator,
                      scale: float = 1.0) -> np.ndarray:
    """``image`` (H, W, 3) float32 RGB in [0, 1] with the photometric ``changes`` applied in a camera's order;
    ``rng`` draws the noise; ``scale`` = the image's long side over the model's input size (1 for the input)."""
    order = {name: i for i, name in enumerate(("motion", "focus", "dark", "noise", "cast", "jpeg"))}
    x = image.astype(np.float32, copy=True)
    for name, p in sorted(changes, key=lambda c: order[c[0]]):
        if name == "motion":
            x = cv2.filter2D(x, -1, _line_kernel(max(1.0, p["length"] * scale), p["angle"]), borderType=cv2.BORDER_REFLECT)
        elif name == "focus":
            x = cv2.filter2D(x, -1, _disk_kernel(max(0.5, p["radius"] * scale)), borderType=cv2.BORDER_REFLECT)
        elif name == "dark":
            x = p["gain"] * np.power(np.clip(x, 0.0, 1.0), p["gamma"])
            x = x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(p["noise"] / 255.0)
        elif name == "noise":
            x = x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(p["sigma"] / 255.0)
        elif name == "cast":
            x = x * np.float32([p["r"], p["g"], p["b"]])
        elif name == "jpeg":
            u8 = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
            _ok, data = cv2.imencode(".jpg", np.ascontiguousarray(u8[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(p["quality"])])
            x = cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32) / 255.0
        x = np.clip(x, 0.0, 1.0)
    return x


def describe(changes: list[tuple[str, dict[str, Any]]]) -> str:
    """``motion(length=9.0, angle=30.0) + jpeg(quality=20)``: for logs and reports."""
    return " + ".join(f"{n}({', '.join(f'{k}={v:.3g}' for k, v in p.items())})" for n, p in changes) or "none"
