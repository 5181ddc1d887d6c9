"""Model specs: everything the shared pipeline needs to run one model, as data.

A spec says how to feed a model (input size, normalization), how to read its outputs (anchor
options, decode scales, keypoints), how to filter them (score threshold, NMS) and where its
original file and architecture come from. Code never branches on a model name; it reads a spec.
Where each constant comes from (MediaPipe's graphs, as compiled into 0.10.14) is said in
:mod:`~blazeport.specs.detectors`.

The package: :mod:`~blazeport.specs.types` (the dataclasses and their checks),
:mod:`~blazeport.specs.detectors` (Google's detectors and the shipped students),
:mod:`~blazeport.specs.landmarks` (the face mesh and iris models), and here the two lookups:
:func:`spec_named` and :func:`spec_of_original`.
"""

from __future__ import annotations

from pathlib import Path

from blazeport.errors import BlazeportError
from blazeport.files import sha256_of
from blazeport.specs.detectors import SPECS
from blazeport.specs.landmarks import LANDMARK_SPECS
from blazeport.specs.types import (
    KEYPOINT_NAMES,
    PALM_KEYPOINT_NAMES,
    POSE_KEYPOINT_NAMES,
    AnchorOptions,
    LandmarkSpec,
    ModelSpec,
    NMSOptions,
    spec_from_dict,
    student_spec,
)

# the original .tflite files (``ModelSpec.tflite``) and converted or distilled .safetensors, shipped
# inside the package (a clone's ``weights/`` is a link to it): read-only data, checked by sha256
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "bundled" / "weights"

__all__ = ["KEYPOINT_NAMES", "LANDMARK_SPECS", "PALM_KEYPOINT_NAMES", "POSE_KEYPOINT_NAMES", "SPECS", "WEIGHTS_DIR",
           "AnchorOptions", "LandmarkSpec", "ModelSpec", "NMSOptions", "spec_from_dict", "spec_named", "spec_of_original",
           "student_spec"]


def spec_named(name: str, detectors_only: bool = False) -> ModelSpec | LandmarkSpec:
    """The spec called ``name`` (or one of its aliases): a detector or a landmark model, or with
    ``detectors_only`` a detector alone (a distillation teacher, a bench reference). The error lists
    the names it would have taken."""
    for spec in (*SPECS.values(), *(() if detectors_only else LANDMARK_SPECS.values())):
        if name == spec.name or name in spec.aliases:
            return spec
    known = ", ".join(sorted(SPECS) + [a for s in SPECS.values() for a in s.aliases])
    landmarks = "" if detectors_only else f"; landmark models: {', '.join(LANDMARK_SPECS)}"
    raise BlazeportError(f"unknown model spec {name!r}; known specs: {known}{landmarks}")


def spec_of_original(path: str | Path, detectors_only: bool = False) -> ModelSpec | LandmarkSpec | None:
    """The spec whose Google original has this file's sha256 (its bytes, wherever they lie and whatever
    they are called), if any; with ``detectors_only``, detectors alone."""
    digest = sha256_of(path)
    specs = (*SPECS.values(), *(() if detectors_only else LANDMARK_SPECS.values()))
    return next((s for s in specs if s.sha256 == digest), None)
