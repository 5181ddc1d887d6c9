"""The augmentations of a distillation sample: a random affine (zoom, shift, flip, close-ups) that the
letterbox warp absorbs, then photometric changes and the failure modes of issue 13 (grey, low light,
occlusion) on the uint8 result.

Numpy and OpenCV only: the CLI's ``--help`` reads :data:`AUGMENT_TERMS` without importing torch.
``mosaic`` works on whole batches and lives in :mod:`blazeport.distill.mosaic`.
These are **labelled after the change**: the teacher labels the augmented tensor itself, so none of
them can put a label where the teacher would not (nor teach the student anything the teacher does not
already see on the changed photo); a term with probability 0 draws nothing from the sample's
generator, so a run with ``--augment none`` sees the samples that runs made before these terms existed.

The ``ns_*`` terms (:data:`NOISY_TERMS`) are **labelled before the change** (Noisy Student, Xie et al.,
CVPR 2020): the teacher labels the clean sample and the student learns from a changed copy under those
labels, carried through the change where it moves faces. They are applied to the batch, after the
teacher has seen it, by :mod:`blazeport.distill.noisy`, with draws of their own (seeded by the step),
so they draw nothing from a sample's generator either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from blazeport.errors import BlazeportError

AUGMENT_TERMS: dict[str, str] = {
    "closeup": "zoom in 1.5-4x anywhere in the photo (faces that fill the frame)",
    "grey": "greyscale",
    "dark": "low light: gamma 1.3-2.2, gain 0.4-0.8, sensor noise",
    "occlude": "one or two flat rectangles of 10-35 percent of the side (hands, masks, microphones)",
    "mosaic": "a 2x2 mosaic of four samples of the batch at half size (small faces, crowds)",
}
# Labelled BEFORE the change (Noisy Student): blazeport.distill.changes has the parameters, blazeport.distill.noisy
# applies them to the student's input and carries the teacher's clean-photo outputs through the geometric ones.
NOISY_TERMS: dict[str, str] = {
    "ns_dark": "low light: gain 0.2-0.6, gamma 1.5-2.5, read noise (labels kept)",
    "ns_noise": "sensor noise, sigma 4-16 of 255 (labels kept)",
    "ns_motion": "motion blur along a line of 5-13 input pixels at any angle (labels kept)",
    "ns_focus": "focus blur, a disk of radius 1-3 input pixels (labels kept)",
    "ns_jpeg": "JPEG at quality 10-40 (labels kept)",
    "ns_cast": "colour cast: red and blue gains 0.7-1.3, green 0.85-1.15 (labels kept)",
    "ns_flip": "horizontal flip (labels mirrored; keypoints swap to the subject's order: eyes 0<->1, ears 4<->5)",
    "ns_turn": "a quarter turn either way, of the square letterboxed input (labels turned, exact)",
    "ns_half": "a half turn, upside down (labels turned, exact)",
    "ns_crop": "zoom 1.15-1.6x into a window anywhere in the picture (labels moved and scaled)",
    "ns_tilt": "a small perspective change, each corner moved by up to 8 percent of the side (labels mapped)",
}
DEFAULT_AUGMENT = "closeup=0.2,grey=0.1,dark=0.15,occlude=0.2,mosaic=0.3"


@dataclass(frozen=True)
class AugmentConfig:
    zoom: tuple[float, float] = (0.6, 1.5)  # > 1 zooms in (faces grow), < 1 shrinks them (small-face practice)
    shift: float = 0.15  # fraction of the input size
    flip: float = 0.5
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.3
    blur: float = 0.2  # probability of a Gaussian blur, sigma in [0.5, 1.5]
    closeup: float = 0.0  # probabilities of AUGMENT_TERMS
    grey: float = 0.0
    dark: float = 0.0
    occlude: float = 0.0
    mosaic: float = 0.0  # applied to the batch, by blazeport.distill.mosaic (the others: to each sample, here)
    noisy: tuple[tuple[str, float], ...] = ()  # NOISY_TERMS above 0, (name, p) in table order: blazeport.distill.noisy

    @classmethod
    def parse(cls, text: str, zoom: tuple[float, float] = (0.6, 1.5)) -> AugmentConfig:
        """``--augment``: ``closeup=0.2,grey=0.1,...`` (probabilities of :data:`AUGMENT_TERMS`), or ``none``."""
        probs: dict[str, float] = {}
        noisy: dict[str, float] = {}
        for item in [] if text.strip() in ("", "none") else text.split(","):
            name, _, value = item.partition("=")
            name = name.strip()
            if name not in AUGMENT_TERMS and name not in NOISY_TERMS:
                raise BlazeportError(f"--augment: unknown term {name!r}; use NAME=P with NAME one of "
                                     f"{', '.join([*AUGMENT_TERMS, *NOISY_TERMS])}, or none")
            try:
                p = float(value)
            except ValueError:
                p = math.nan
            if not 0.0 <= p <= 1.0:
                raise BlazeportError(f"--augment {name}={value!r}: a probability in [0, 1] is needed")
            (noisy if name in NOISY_TERMS else probs)[name] = p
        ordered = tuple((k[3:], noisy[k]) for k in NOISY_TERMS if noisy.get(k, 0.0) > 0)
        return cls(zoom=(float(zoom[0]), float(zoom[1])), noisy=ordered, **probs)


def noisy_terms(aug: AugmentConfig) -> dict[str, float]:
    """The Noisy Student changes above probability 0, by change name (``dark``, ``turn``...), in table order."""
    return dict(aug.noisy)


def augment_help() -> str:
    """``--augment``'s help: every term, and whether the teacher labels the photo before or after the change."""
    after = "; ".join(f"{k}: {v}" for k, v in AUGMENT_TERMS.items())
    before = "; ".join(f"{k}: {v}" for k, v in NOISY_TERMS.items())
    return (f"Labelled AFTER the change (the teacher labels the changed photo; the student can only inherit its "
            f"failures there): {after}. Labelled BEFORE the change (Noisy Student: the teacher labels the clean "
            f"photo, the student learns from the changed one under those labels): {before}")


def random_affine(rng: np.random.Generator, aug: AugmentConfig, size: int) -> np.ndarray:
    """A 3x3 affine in the model input's frame: zoom about the centre (log-uniform in ``aug.zoom``, or
    1.5-4x for a close-up), shift, horizontal flip."""
    s = float(np.exp(rng.uniform(np.log(aug.zoom[0]), np.log(aug.zoom[1]))))
    reach = aug.shift * size
    if aug.closeup and rng.random() < aug.closeup:
        s = float(np.exp(rng.uniform(np.log(1.5), np.log(4.0))))
        reach += (s - 1) * size / 2  # the zoomed window may land anywhere in the letterboxed photo
    tx, ty = rng.uniform(-reach, reach, 2)
    fx = -1.0 if rng.random() < aug.flip else 1.0
    c = size / 2.0
    return np.array([[s * fx, 0, c - s * fx * c + tx], [0, s, c - s * c + ty], [0, 0, 1]])


def photometric(out: np.ndarray, rng: np.random.Generator, aug: AugmentConfig) -> np.ndarray:
    """Contrast, brightness, saturation, blur, then :data:`AUGMENT_TERMS`' grey, low light and occlusion,
    on a ``(S, S, 3)`` uint8 sample."""
    x = out.astype(np.float32)
    x *= rng.uniform(1 - aug.contrast, 1 + aug.contrast)
    x += rng.uniform(-aug.brightness, aug.brightness) * 255
    gray = x.mean(axis=2, keepdims=True)
    x = gray + (x - gray) * rng.uniform(1 - aug.saturation, 1 + aug.saturation)
    out = np.clip(x, 0, 255).astype(np.uint8)
    if rng.random() < aug.blur:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 1.5))
    size = out.shape[0]
    if aug.grey and rng.random() < aug.grey:
        out = np.repeat(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
    if aug.dark and rng.random() < aug.dark:
        gamma, gain, noise = rng.uniform(1.3, 2.2), rng.uniform(0.4, 0.8), rng.uniform(2.0, 8.0)
        x = 255.0 * gain * (out.astype(np.float32) / 255.0) ** gamma
        x += rng.normal(0.0, noise, out.shape).astype(np.float32)
        out = np.clip(x, 0, 255).astype(np.uint8)
    if aug.occlude and rng.random() < aug.occlude:
        out = out.copy()
        for _ in range(int(rng.integers(1, 3))):
            w, h = (rng.uniform(0.10, 0.35, 2) * size).astype(int)
            x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            out[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, 3, dtype=np.uint8)
    return out
