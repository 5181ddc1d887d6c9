"""Model specs: everything the shared pipeline needs to run one model, as data.

A spec says how to feed a model (input size, normalization), how to read its outputs (anchor
options, decode scales, keypoints), how to filter them (score threshold, NMS) and where its
original file and architecture come from. Code never branches on a model name; it reads a spec.

The constants mirror MediaPipe's detection graphs (``mediapipe/modules/face_detection/
face_detection.pbtxt`` and the short/full-range wrappers, ``pose_detection/pose_detection_cpu.pbtxt``,
``palm_detection/palm_detection_cpu.pbtxt``: ``ImageToTensorCalculatorOptions``,
``SsdAnchorsCalculatorOptions``, ``TensorsToDetectionsCalculatorOptions``,
``NonMaxSuppressionCalculatorOptions``), each spec below holding one graph's values. The palm and
pose values were read from the graphs compiled into mediapipe 0.10.14 itself (its
``_framework_bindings`` module): today's GitHub ``pose_detection_cpu.pbtxt`` says
``min_score_thresh: 0.2``, the 0.10.14 graph that the parity oracle runs says 0.5. Every one of
these graphs sets ``reverse_output_order: true`` (raw boxes are x, y, w, h), ``sigmoid_score``
with ``score_clipping_thresh: 100``, x/y/w/h scales equal to the input size, no
``flip_vertically`` and no ``apply_exponential_on_box_size``: what :mod:`blazeport.postprocess` decodes.

The package: :mod:`~blazeport.specs.types` (the dataclasses and their checks),
:mod:`~blazeport.specs.detectors` (Google's detectors and the shipped students),
:mod:`~blazeport.specs.landmarks` (the face mesh and iris models), and here the lookups.
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
           "AnchorOptions", "LandmarkSpec", "ModelSpec", "NMSOptions", "find_spec", "get_spec", "original_spec_for_file",
           "spec_for_file", "spec_from_dict", "student_spec"]


def original_spec_for_file(path: str | Path) -> ModelSpec | LandmarkSpec | None:
    """The detector or landmark spec whose original file has this file's sha256, if any."""
    digest = sha256_of(path)
    return next((s for s in (*SPECS.values(), *LANDMARK_SPECS.values()) if s.sha256 == digest), None)


def find_spec(name: str) -> ModelSpec | LandmarkSpec:
    """A detector spec (:func:`get_spec`) or a landmark spec by name; the error lists both."""
    for spec in LANDMARK_SPECS.values():
        if name == spec.name or name in spec.aliases:
            return spec
    try:
        return get_spec(name)
    except BlazeportError as exc:
        raise BlazeportError(f"{exc}; landmark models: {', '.join(LANDMARK_SPECS)}") from None


def spec_for_file(path: str | Path) -> ModelSpec | None:
    """The spec whose original file has this file's sha256 (Google's bytes, wherever they lie), if any."""
    digest = sha256_of(path)
    return next((spec for spec in SPECS.values() if spec.sha256 == digest), None)


def get_spec(name: str) -> ModelSpec:
    """Look a spec up by name or alias; the error lists what is known."""
    for spec in SPECS.values():
        if name == spec.name or name in spec.aliases:
            return spec
    known = ", ".join(sorted(SPECS) + [a for s in SPECS.values() for a in s.aliases])
    raise BlazeportError(f"unknown model spec {name!r}; known specs: {known}")
