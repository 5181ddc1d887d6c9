"""Calibration photos for full-integer export: a folder of real photos, split once, letterboxed as at inference.

Static int8 quantization fixes one scale per activation tensor from the ranges the float model
reaches on sample inputs, so those inputs must be what the pipeline feeds: real photos through
:func:`blazeport.pipeline.preprocess.letterbox` (MediaPipe's warp, RGB in the spec's range, -1 border), not
random noise and not a plain resize (its border and interpolation shift the ranges).

The folder is split **deterministically** (sorted paths shuffled with a fixed seed): a held-out part
verifies the int8 file, the rest (up to ``count``, default :data:`DEFAULT_COUNT`) calibrates it, so
the fidelity reported is measured on photos the calibration never saw. When the caller brings its
own verification photos (``--images``), every photo of the folder may calibrate, except any that is
pixel-identical to one of them.
"""

from __future__ import annotations

import hashlib
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blazeport.errors import BlazeportError
from blazeport.pipeline.photos import IMAGE_SUFFIXES, list_images
from blazeport.pipeline.preprocess import ImageReadError, letterbox, read_image
from blazeport.specs import ModelSpec

DEFAULT_COUNT = 300  # "a few hundred": ranges settle by ~200 photos (Percentile/moving-average calibration)
MIN_CALIBRATION = 20  # fewer and one unusual photo sets a layer's range
MIN_VERIFY = 10  # held-out photos for the AP check; faces must appear in some of them
MAX_VERIFY = 100  # enough for a stable AP50; more only slows the export
SEED = 0

__all__ = ["DEFAULT_COUNT", "MIN_CALIBRATION", "MIN_VERIFY", "Calibration", "load_calibration"]


@dataclass
class Calibration:
    """Letterboxed calibration batch, the held-out photos to verify on, and where they came from."""

    folder: Path
    inputs: np.ndarray  # (N, S, S, 3) float32, NHWC, the spec's range
    verify_images: list[np.ndarray]  # RGB uint8 photos the calibration did not see
    verify_source: str  # "held out of FOLDER" or "--images"
    skipped: int  # unreadable files in the folder

    def describe(self) -> dict[str, object]:
        return {"folder": str(self.folder), "calibration_images": len(self.inputs),
                "verification_images": len(self.verify_images), "verification_source": self.verify_source,
                "unreadable_skipped": self.skipped, "split_seed": SEED}


def _digest(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def load_calibration(folder: str | Path, spec: ModelSpec, count: int = DEFAULT_COUNT,
                     verify_images: list[np.ndarray] | None = None, max_pixels: int | None = None) -> Calibration:
    """Read, split and letterbox ``folder`` (recursively). Raises :class:`BlazeportError` naming the
    folder and the fix when it is missing or holds too few readable photos."""
    folder = Path(folder)
    wanted = f"a folder of real photos (at least {MIN_CALIBRATION + MIN_VERIFY}, a few hundred is best)"
    if folder.exists() and not folder.is_dir():  # one image cannot set the ranges: a folder is asked for, not accepted
        what = "an image file" if folder.suffix.lower() in IMAGE_SUFFIXES else "a file"
        raise BlazeportError(f"--calibration {folder}: is {what}, not a folder; int8 calibration needs {wanted}")
    if not folder.is_dir():
        raise BlazeportError(f"--calibration {folder}: no such folder; give {wanted}")
    if count < MIN_CALIBRATION:
        raise BlazeportError(f"--calibration-count {count}: int8 calibration needs at least {MIN_CALIBRATION} photos")
    paths = list_images([folder])
    random.Random(SEED).shuffle(paths)
    held_out = 0 if verify_images else min(MAX_VERIFY, max(MIN_VERIFY, len(paths) // 5))
    need = MIN_CALIBRATION + held_out
    if len(paths) < need:
        raise BlazeportError(f"--calibration {folder}: {len(paths)} image file(s); int8 export needs at least {need} "
                             f"real photos ({MIN_CALIBRATION} to calibrate"
                             f"{f' + {held_out} held out to verify' if held_out else ''}). Add photos or choose another folder.")
    exclude = {_digest(im) for im in verify_images or []}
    held: list[np.ndarray] = []
    tensors: list[np.ndarray] = []
    skipped = 0
    for path in paths:
        if len(held) >= held_out and len(tensors) >= count:
            break
        try:
            image = read_image(path, max_pixels=max_pixels)
        except ImageReadError as exc:
            skipped += 1
            print(f"skipped: {exc}", file=sys.stderr)
            continue
        if len(held) < held_out:
            held.append(image)
        elif _digest(image) not in exclude:
            tensors.append(letterbox(image, spec.input_size, spec.normalization)[0])
    if len(tensors) < MIN_CALIBRATION or len(held) < held_out:
        readable = len(held) + len(tensors)
        raise BlazeportError(f"--calibration {folder}: {readable} readable photo(s) of {len(paths)} file(s) "
                             f"({skipped} unreadable); int8 export needs at least {need} ({MIN_CALIBRATION} to calibrate"
                             f"{f' + {held_out} held out to verify' if held_out else ', none of them among --images'}). "
                             "Add photos or choose another folder.")
    source = "--images" if verify_images else f"held out of {folder} (seed {SEED})"
    return Calibration(folder, np.stack(tensors).astype(np.float32), list(verify_images or held), source, skipped)
