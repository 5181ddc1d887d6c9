"""The spec types: what one detector (:class:`ModelSpec`, with its :class:`AnchorOptions` and
:class:`NMSOptions`) or one landmark model (:class:`LandmarkSpec`) needs, checked on construction
(specs also arrive as JSON inside user files), and how a distilled student's spec derives from its
teacher's (:func:`student_spec`). The tables of Google's models are :mod:`blazeport.specs.detectors`
and :mod:`blazeport.specs.landmarks`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from blazeport.errors import BlazeportError

__all__ = ["KEYPOINT_NAMES", "PALM_KEYPOINT_NAMES", "POSE_KEYPOINT_NAMES", "AnchorOptions", "LandmarkSpec", "ModelSpec",
           "NMSOptions", "spec_from_dict", "student_spec"]

# The subject's right and left (keypoint 0 has the smaller x in a frontal photo).
KEYPOINT_NAMES = (
    "right_eye",
    "left_eye",
    "nose_tip",
    "mouth_center",
    "right_ear_tragion",
    "left_ear_tragion",
)

# pose_detection_cpu.pbtxt: "Key point 0 - mid hip center, 1 - point that encodes size & rotation (for
# full body), 2 - mid shoulder center, 3 - point that encodes size & rotation (for upper body)".
POSE_KEYPOINT_NAMES = ("hip_center", "full_body_size_rotation", "shoulder_center", "upper_body_size_rotation")

# The palm detector's 7 keypoints. MediaPipe's graphs name 0 ("Center of wrist") and 2 ("MCP of middle
# finger": palm_detection_detection_to_roi.pbtxt's rotation vector); the others were read off
# mp.solutions.hands itself: on the 61 photos of ../shared/data/unlabeled/human_samples, the nearest of
# its 21 hand landmarks to each palm keypoint was most often the named one (0 wrist 41 times, 1 index
# MCP 17, 2 middle MCP 16, 3 ring MCP 15, 4 pinky MCP 19, 5 thumb CMC 30, 6 thumb MCP 20; the runners-up
# are the neighbouring joints).
PALM_KEYPOINT_NAMES = ("wrist", "index_finger_mcp", "middle_finger_mcp", "ring_finger_mcp", "pinky_mcp", "thumb_cmc",
                       "thumb_mcp")


@dataclass(frozen=True)
class AnchorOptions:
    """MediaPipe ``SsdAnchorsCalculatorOptions`` (the subset the face models use)."""

    input_size: int
    num_layers: int
    strides: tuple[int, ...]
    min_scale: float
    max_scale: float
    anchor_offset: float = 0.5
    aspect_ratios: tuple[float, ...] = (1.0,)
    interpolated_scale_aspect_ratio: float = 1.0
    fixed_anchor_size: bool = True
    reduce_boxes_in_lowest_layer: bool = False


@dataclass(frozen=True)
class NMSOptions:
    """MediaPipe ``NonMaxSuppressionCalculatorOptions``: IoU overlap, weighted or hard."""

    min_suppression_threshold: float = 0.3
    algorithm: str = "weighted"  # "weighted" (MediaPipe WEIGHTED) or "hard" (DEFAULT)
    max_detections: int = -1


@dataclass(frozen=True)
class ModelSpec:
    """One detector: how to feed it, decode it, filter it, and where it comes from."""

    name: str
    input_size: int
    anchors: AnchorOptions
    num_anchors: int
    architecture: str  # blazeport.models registry key, or "graph" (read from the .tflite)
    family: str = "blazeface"  # module family that runs it (blazeport.models.FAMILIES): blazeface, graph, resnet
    tflite: str | None = None  # original file in weights/
    sha256: str | None = None
    num_coords: int = 16
    num_keypoints: int = 6
    score_threshold: float = 0.5
    score_clip: float = 100.0
    nms: NMSOptions = field(default_factory=NMSOptions)
    normalization: tuple[float, float] = (-1.0, 1.0)  # uint8 [0, 255] maps onto this range
    description: str = ""
    aliases: tuple[str, ...] = ()
    teacher: str | None = None  # the original a distilled student stands in for (its reference)
    # MediaPipe's FaceDetection(model_selection=...) that runs this very file (parity oracle, bench baseline)
    mediapipe_model_selection: int | None = None
    keypoint_names: tuple[str, ...] = KEYPOINT_NAMES  # one per keypoint, in output order
    subject: str = "face"  # what one detection is, for messages ("2 palm(s)")
    # the mp.solutions pipeline that runs this very file inside a larger graph ("hands", "pose"; the parity
    # oracle of tools/parity_report.py), and the model_complexity that selects the file there (hands: 0 lite, 1 full)
    mediapipe_solution: str | None = None
    mediapipe_model_complexity: int | None = None

    def __post_init__(self) -> None:
        """Refuse a spec the pipeline cannot run: specs also arrive as JSON inside user files."""
        problems = _spec_problems(self)
        if problems:
            raise BlazeportError(f"invalid model spec {self.name!r}: {'; '.join(problems)}")

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready data (stored in .safetensors, .onnx, .tflite and .pte files).

        Fields added after files were first written (:data:`_LATER_FIELDS`) are left out while they
        hold their defaults, so a face model's file is byte for byte what it was and still opens in
        a blazeport that does not know them; :meth:`from_dict` restores the defaults."""
        d = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if f.name in _LATER_FIELDS and d[f.name] == (f.default if f.default is not dataclasses.MISSING else None):
                del d[f.name]
        return d

    @classmethod
    def from_dict(cls, d: Any) -> ModelSpec:
        """Rebuild a spec from :meth:`to_dict`'s JSON; any missing, unknown or mistyped field is a
        :class:`BlazeportError` that names it (callers add the file)."""
        if not isinstance(d, dict):
            raise BlazeportError(f"a model spec is a JSON object, got {type(d).__name__}")
        d = dict(d)
        for key, sub in (("anchors", AnchorOptions), ("nms", NMSOptions)):
            if key in d:
                d[key] = _sub_options(sub, key, d[key])
        for key in ("normalization", "aliases", "keypoint_names"):
            if isinstance(d.get(key), list):
                d[key] = tuple(d[key])
        _check_fields(cls, "spec", d)
        return cls(**d)


# ModelSpec fields added with the pose and palm detectors (omitted from to_dict() at their defaults)
_LATER_FIELDS = frozenset({"keypoint_names", "subject", "mediapipe_solution", "mediapipe_model_complexity"})


def _check_fields(cls: Any, what: str, d: dict[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    if missing := sorted(required - set(d)):
        raise BlazeportError(f"{what} lacks {', '.join(missing)}")
    if unknown := sorted(set(d) - names):
        raise BlazeportError(f"{what} has unknown field(s) {', '.join(unknown)}")


def _sub_options(cls: Any, key: str, value: Any) -> Any:
    if not isinstance(value, dict):
        raise BlazeportError(f"spec field {key} must be an object, got {type(value).__name__}")
    value = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    _check_fields(cls, f"spec field {key}", value)
    return cls(**value)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _spec_problems(s: ModelSpec) -> list[str]:
    """What makes a spec unusable, each as a phrase naming the field (empty when fine)."""
    p: list[str] = []

    def integer(name: str, v: Any, lo: int = 1) -> None:
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            p.append(f"{name} must be an integer >= {lo}, got {v!r}")

    def number(name: str, v: Any, lo: float, hi: float) -> None:
        if not _number(v) or not lo <= v <= hi:
            p.append(f"{name} must be a number in [{lo:g}, {hi:g}], got {v!r}")

    if not isinstance(s.name, str) or not s.name:
        p.append("name must be a non-empty string")
    integer("input_size", s.input_size)
    integer("num_anchors", s.num_anchors)
    integer("num_coords", s.num_coords, 4)
    integer("num_keypoints", s.num_keypoints, 0)
    if not p and s.num_coords != 4 + 2 * s.num_keypoints:
        p.append(f"num_coords {s.num_coords} != 4 + 2 x num_keypoints {s.num_keypoints}")
    if not (isinstance(s.keypoint_names, tuple) and all(isinstance(k, str) and k for k in s.keypoint_names)):
        p.append(f"keypoint_names must be a list of non-empty strings, got {s.keypoint_names!r}")
    elif isinstance(s.num_keypoints, int) and len(s.keypoint_names) != s.num_keypoints:
        p.append(f"keypoint_names has {len(s.keypoint_names)} names for num_keypoints {s.num_keypoints}")
    if not isinstance(s.subject, str) or not s.subject:
        p.append(f"subject must be a non-empty string, got {s.subject!r}")
    if s.mediapipe_solution is not None and (not isinstance(s.mediapipe_solution, str) or not s.mediapipe_solution):
        p.append(f"mediapipe_solution must be a non-empty string or null, got {s.mediapipe_solution!r}")
    for name in ("mediapipe_model_selection", "mediapipe_model_complexity"):
        if getattr(s, name) is not None:
            integer(name, getattr(s, name), 0)
    number("score_threshold", s.score_threshold, 0.0, 1.0)
    number("score_clip", s.score_clip, 0.0, 1e4)
    for name in ("architecture", "family"):
        if not isinstance(getattr(s, name), str) or not getattr(s, name):
            p.append(f"{name} must be a non-empty string")
    if not (isinstance(s.normalization, tuple) and len(s.normalization) == 2 and all(map(_number, s.normalization))
            and s.normalization[0] < s.normalization[1]):
        p.append(f"normalization must be [low, high] numbers with low < high, got {s.normalization!r}")
    a = s.anchors
    if isinstance(a, AnchorOptions):
        integer("anchors.input_size", a.input_size)
        integer("anchors.num_layers", a.num_layers)
        if not (isinstance(a.strides, tuple) and a.strides and all(isinstance(x, int) and not isinstance(x, bool)
                                                                   and x > 0 for x in a.strides)):
            p.append(f"anchors.strides must be positive integers, got {a.strides!r}")
        elif isinstance(a.num_layers, int) and len(a.strides) != a.num_layers:  # as SsdAnchorsCalculator requires
            p.append(f"anchors.strides has {len(a.strides)} entries for num_layers {a.num_layers}")
        for name in ("min_scale", "max_scale", "anchor_offset", "interpolated_scale_aspect_ratio"):
            number(f"anchors.{name}", getattr(a, name), 0.0, 1e3)
    else:
        p.append("anchors must be anchor options")
    n = s.nms
    if isinstance(n, NMSOptions):
        number("nms.min_suppression_threshold", n.min_suppression_threshold, 0.0, 1.0)
        if n.algorithm not in ("weighted", "hard"):
            p.append(f"nms.algorithm must be 'weighted' or 'hard', got {n.algorithm!r}")
        if not isinstance(n.max_detections, int) or isinstance(n.max_detections, bool):
            p.append(f"nms.max_detections must be an integer, got {n.max_detections!r}")
    else:
        p.append("nms must be NMS options")
    return p



def student_spec(teacher: ModelSpec, architecture: str, family: str, name: str | None = None,
                 description: str | None = None) -> ModelSpec:
    """The spec of a student distilled from ``teacher``: the teacher's input, anchors, decoding,
    thresholds and NMS (the student meets the same head contract), its own architecture, no
    original file, and ``teacher`` as its reference for evaluation and benchmarks."""
    return dataclasses.replace(
        teacher, name=name or f"{teacher.name}_{architecture}", architecture=architecture, family=family, tflite=None,
        sha256=None, aliases=(), teacher=teacher.name, mediapipe_model_selection=None, mediapipe_solution=None,
        mediapipe_model_complexity=None,
        description=description or f"{architecture} student distilled from {teacher.name}")


@dataclass(frozen=True)
class LandmarkSpec:
    """A landmark model (face mesh, iris): one crop in, fixed-size float outputs out; no anchors, no NMS.

    The pipeline that makes its crop and reads its outputs (ROI, warp, projection) lives in
    :mod:`blazeport.pipeline.landmarks`; the spec only says how to feed the model and how to find its outputs.
    ``outputs`` are ``(name, floats per image)`` in the order the pipeline reads them; backends
    return them flattened to ``(B, floats)`` and matched by size, whatever order or shape the file
    gives them (``face_landmark.tflite`` writes ``(1, 1, 1, 1404)``, ``iris_landmark.tflite``
    ``(1, 213)``); outputs of equal size (the attention mesh's two eyes, two irises) are matched in
    the file's order, which is the spec's. ``scale`` is the pixel size landmark coordinates are given
    in (MediaPipe's ``TensorsToLandmarksCalculatorOptions.input_image_width``).
    """

    name: str
    input_size: int
    outputs: tuple[tuple[str, int], ...]
    tflite: str | None = None
    sha256: str | None = None
    normalization: tuple[float, float] = (0.0, 1.0)
    scale: float = 0.0  # 0: the input size
    architecture: str = "graph"
    family: str = "graph"
    kind: str = "landmarks"  # tells a stored landmark spec from a detector's (ModelSpec has no kind)
    description: str = ""
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.name, str) or not self.name:
            problems.append("name must be a non-empty string")
        if not isinstance(self.input_size, int) or isinstance(self.input_size, bool) or self.input_size < 1:
            problems.append(f"input_size must be an integer >= 1, got {self.input_size!r}")
        ok = isinstance(self.outputs, tuple) and self.outputs and all(
            isinstance(o, tuple) and len(o) == 2 and isinstance(o[0], str) and isinstance(o[1], int) and o[1] > 0
            for o in self.outputs)
        if not ok or len({name for name, _ in self.outputs}) != len(self.outputs):
            problems.append(f"outputs must be (name, size) pairs with distinct names and positive sizes, got {self.outputs!r}")
        if not (isinstance(self.normalization, tuple) and len(self.normalization) == 2
                and all(map(_number, self.normalization)) and self.normalization[0] < self.normalization[1]):
            problems.append(f"normalization must be [low, high] numbers with low < high, got {self.normalization!r}")
        if not _number(self.scale) or self.scale < 0:
            problems.append(f"scale must be a number >= 0, got {self.scale!r}")
        if self.kind != "landmarks":
            problems.append(f"kind must be 'landmarks', got {self.kind!r}")
        if problems:
            raise BlazeportError(f"invalid landmark spec {self.name!r}: {'; '.join(problems)}")

    @property
    def coordinate_scale(self) -> float:
        return float(self.scale or self.input_size)

    def output_size(self, name: str) -> int:
        return dict(self.outputs)[name]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> LandmarkSpec:
        """Rebuild from :meth:`to_dict`'s JSON (a safetensors header); problems name the field."""
        if not isinstance(d, dict):
            raise BlazeportError(f"a landmark spec is a JSON object, got {type(d).__name__}")
        d = dict(d)
        if isinstance(d.get("outputs"), list):
            d["outputs"] = tuple(tuple(o) if isinstance(o, list) else o for o in d["outputs"])
        for key in ("normalization", "aliases"):
            if isinstance(d.get(key), list):
                d[key] = tuple(d[key])
        _check_fields(cls, "landmark spec", d)
        return cls(**d)


def spec_from_dict(d: Any) -> ModelSpec | LandmarkSpec:
    """A stored spec of either kind (a landmark spec says ``kind: landmarks``)."""
    if isinstance(d, dict) and d.get("kind") == "landmarks":
        return LandmarkSpec.from_dict(d)
    return ModelSpec.from_dict(d)
