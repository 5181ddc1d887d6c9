"""Face landmarks after detection (MediaPipe's face mesh), and iris landmarks on the eyes.

The pipeline is MediaPipe 0.10.14's ``face_landmark_front_cpu`` graph as
``mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=False)`` runs it:

1. ``FaceDetectionShortRangeCpu``: the short-range detector at ``min_detection_confidence``
   (:class:`blazeport.pipeline.detector.Detector`, already at MediaPipe's parity), clipped to the first
   ``max_num_faces`` detections (``ClipDetectionVectorSizeCalculator``, NMS order);
2. ``FaceDetectionFrontDetectionToRoi``: a rotated square ROI per face (:func:`blazeport.pipeline.roi.roi_from_detection`),
   then ``AssociationNormRectCalculator`` (IoU > 0.5 drops the earlier of two overlapping ROIs);
3. ``FaceLandmarkCpu``: the ROI warped to 192x192 in [0, 1] (bilinear, replicated border), the
   ``face_landmark`` model, the face flag through a sigmoid and kept when above 0.5
   (``ThresholdingCalculator``: ``score > threshold``, ``min_tracking_confidence``), the 468
   landmarks divided by 192 (x, y and z) and projected back onto the image.

With ``refine=True`` the face mesh is ``face_landmark_with_attention`` (``FaceMesh(refine_landmarks=True)``:
the same crop, a model whose attention sub-networks refine the lips, eyes and irises), read as MediaPipe's
``TensorsToFaceLandmarksWithAttention`` does into 478 landmarks (:mod:`blazeport.pipeline.refine`), then projected
like the 468.

Iris (``iris_landmark``, MediaPipe's ``iris_landmark_left_and_right_cpu`` / ``iris_landmark_cpu``
graphs; MediaPipe's Python package has no solution that runs them, so there is no oracle to
compare with): an eye ROI from the two eye-corner landmarks (33 and 133, MediaPipe's "left" eye;
362 and 263, its "right" eye) rotated by their angle, squared and scaled by 2.3; the crop with
nearest-neighbour sampling and a replicated border (``ImageCroppingCalculator``), fitted into
64x64 (``ImageTransformationCalculator`` ``FIT``: ``INTER_AREA`` down, ``INTER_LINEAR`` up,
replicated padding), mirrored for the right eye; the model's 71 eye contour and 5 iris
landmarks un-mirrored, the padding removed (``LandmarkLetterboxRemovalCalculator``) and projected
back. Nothing here imports torch: every runtime of :mod:`blazeport.modelfiles.backends` runs both models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from blazeport.errors import BlazeportError
from blazeport.modelfiles.loader import open_backend
from blazeport.modelfiles.verify import landmark_outputs
from blazeport.pipeline.detector import Detector, load
from blazeport.pipeline.postprocess import Detection
from blazeport.pipeline.preprocess import as_rgb, fit_for_remap, read_image
from blazeport.pipeline.refine import NUM_REFINED_LANDMARKS, REFINEMENTS, refine_landmarks
from blazeport.pipeline.roi import (
    Rect,
    associate,
    detection_to_rect,
    project_landmarks,
    roi_from_detection,
    transform_rect,
    warp_rect,
)
from blazeport.specs import LandmarkSpec

__all__ = ["EYES", "FaceLandmarker", "FaceLandmarks", "Iris", "IrisLandmarker", "crop_eye", "eye_roi", "is_refined",
           "load_landmarks"]

NUM_FACE_LANDMARKS = 468
NUM_EYE_CONTOUR, NUM_IRIS = 71, 5  # iris_landmark's two outputs, in landmarks of 3 floats
# MediaPipe's eye boundary landmarks (iris_tracking_cpu.pbtxt: SplitNormalizedLandmarkListCalculator ranges),
# named as its iris graph names them; "left" (33, 133) is on the image's left in a frontal photo, the
# subject's right eye. The right eye's crop is mirrored for the model (IS_RIGHT_EYE).
EYES: dict[str, tuple[int, int, bool]] = {"left": (33, 133, False), "right": (362, 263, True)}
IRIS_ROI_SCALE = 2.3  # iris_landmark_landmarks_to_roi.pbtxt


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-100.0, min(100.0, x))))


@dataclass
class Iris:
    """One eye: 71 eye contour / brow landmarks and 5 iris landmarks (centre first), ``(N, 3)``
    normalized to the image like the face landmarks, and the eye ROI they were read from."""

    contour: np.ndarray
    iris: np.ndarray
    roi: Rect

    def to_dict(self) -> dict[str, Any]:
        return {"contour": self.contour.tolist(), "iris": self.iris.tolist(), "roi": self.roi.to_dict()}


def is_refined(spec: LandmarkSpec) -> bool:
    """Whether the face mesh model has the attention mesh's outputs (478 refined landmarks)."""
    return {r.output for r in REFINEMENTS} <= {name for name, _ in spec.outputs}


@dataclass
class FaceLandmarks:
    """One face: 468 landmarks ``(468, 3)`` (478 from the attention mesh: 468-472 and 473-477 the
    two irises, centre first) normalized to the image (x / width, y / height; z in
    the units of x, negative towards the camera, as MediaPipe's ``NormalizedLandmark``), the face
    presence score (the sigmoid of the model's face flag), the detection and the ROI the model
    saw; ``iris`` holds the eyes when iris landmarks were asked for. ``detection`` is ``None`` for a
    face tracked in video mode whose ROI came from the previous frame's landmarks
    (:mod:`blazeport.video.tracking`)."""

    score: float
    landmarks: np.ndarray
    detection: Detection | None
    roi: Rect
    iris: dict[str, Iris] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"score": self.score, "landmarks": self.landmarks.tolist(), "roi": self.roi.to_dict(),
               "detection": None if self.detection is None else self.detection.to_dict()}
        if self.iris:
            out["iris"] = {k: v.to_dict() for k, v in self.iris.items()}
        return out


def _landmarks(raw: np.ndarray, count: int, scale: float, flip: bool = False) -> np.ndarray:
    """``TensorsToLandmarksCalculator``: raw ``(count * 3,)`` in model pixels -> ``(count, 3)`` normalized
    (x, y and z divided by the input width), x mirrored first when ``flip``."""
    pts = np.asarray(raw, np.float32).reshape(count, 3).copy()
    if flip:
        pts[:, 0] = np.float32(scale) - pts[:, 0]
    return pts / np.float32(scale)


def eye_roi(landmarks: np.ndarray, eye: str, image_width: int, image_height: int) -> Rect:
    """``IrisLandmarkLandmarksToRoi``: the box of the eye's two corner landmarks (``LandmarksToDetection``),
    rotated by their angle, squared on the long side in pixels, scaled by 2.3."""
    a, b, _ = EYES[eye]
    pts = np.asarray(landmarks, np.float64)[[a, b], :2]
    lo, hi = pts.min(0), pts.max(0)
    rect = detection_to_rect((lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]), pts, image_width, image_height)
    return transform_rect(rect, image_width, image_height, IRIS_ROI_SCALE, IRIS_ROI_SCALE, square_long=True)


def _round(x: float) -> int:
    """C's ``std::round`` (half away from zero)."""
    return math.floor(abs(x) + 0.5) * (1 if x >= 0 else -1)


def crop_eye(image: np.ndarray, rect: Rect, size: int = 64, flip: bool = False,
             normalization: tuple[float, float] = (0.0, 1.0)) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The eye ROI as the iris model's input, and the letterbox padding ``(left, top, right, bottom)``
    (fractions of the output) that fitting it added.

    ``ImageCroppingCalculator`` (``border_mode: BORDER_REPLICATE``): the crop is
    ``round(width * W) x round(height * H)`` pixels, its corners mapped with pixel centres
    (``shift_dst * M * shift_src``) and sampled nearest-neighbour (``flags = 0``); an unrotated
    crop's centre snaps to the pixel grid. ``ImageTransformationCalculator`` (``scale_mode: FIT``):
    resized to fit ``size`` (``INTER_AREA`` when shrinking), padded by replicating the edge,
    mirrored when ``flip``. ``TfLiteConverterCalculator`` (``zero_center: false``): x / 255.
    """
    image = fit_for_remap(image)  # a side of 32767 px or more: shrunk first (the rect is normalized)
    h, w = image.shape[:2]
    crop_w, crop_h = _round(rect.width * w), _round(rect.height * h)
    if crop_w < 1 or crop_h < 1:
        raise BlazeportError(f"eye ROI of {crop_w}x{crop_h} pixels: too small to crop")
    cx, cy = rect.x_center * w, rect.y_center * h
    if rect.rotation == 0.0:
        cx = float(_round(cx)) if crop_w % 2 == 0 else _round(cx + 0.5) - 0.5
        cy = float(_round(cy)) if crop_h % 2 == 0 else _round(cy + 0.5) - 0.5
    src = cv2.boxPoints(((cx, cy), (float(crop_w), float(crop_h)), rect.rotation * 180.0 / math.pi)).astype(np.float32)
    dst = np.array([[0, crop_h], [0, 0], [crop_w, 0], [crop_w, crop_h]], np.float32)
    m = cv2.getPerspectiveTransform(src, dst)
    shift_src = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]], np.float64)
    shift_dst = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]], np.float64)
    crop = cv2.warpPerspective(image, shift_dst @ m @ shift_src, (crop_w, crop_h), flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_REPLICATE)
    scale = min(np.float32(size) / np.float32(crop_w), np.float32(size) / np.float32(crop_h))
    tw, th = _round(float(np.float32(crop_w) * scale)), _round(float(np.float32(crop_h) * scale))
    crop = cv2.resize(crop, (tw, th), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    top, left = (size - th) // 2, (size - tw) // 2
    crop = cv2.copyMakeBorder(crop, top, size - th - top, left, size - tw - left, cv2.BORDER_REPLICATE)
    if flip:
        crop = cv2.flip(crop, 1)
    lo, hi = normalization
    tensor = crop.astype(np.float32) * np.float32((hi - lo) / 255.0) + np.float32(lo)
    # ComputeOutputLetterboxPadding: from the aspect ratios of the crop and the output
    aspect_in, aspect_out = crop_w / crop_h, 1.0
    pad_x = (1.0 - aspect_in / aspect_out) / 2.0 if aspect_in < aspect_out else 0.0
    pad_y = (1.0 - aspect_out / aspect_in) / 2.0 if aspect_out < aspect_in else 0.0
    return tensor, (pad_x, pad_y, pad_x, pad_y)


def _remove_padding(pts: np.ndarray, pad: tuple[float, float, float, float]) -> np.ndarray:
    """``LandmarkLetterboxRemovalCalculator``: crop coordinates without the FIT padding (z scaled like x)."""
    left, top, right, bottom = pad
    out = pts.copy()
    out[:, 0] = (pts[:, 0] - left) / (1.0 - left - right)
    out[:, 1] = (pts[:, 1] - top) / (1.0 - top - bottom)
    out[:, 2] = pts[:, 2] / (1.0 - left - right)
    return out


@dataclass
class IrisLandmarker:
    """The iris model on both eyes of faces found by :class:`FaceLandmarker` (or any 468 landmarks)."""

    spec: LandmarkSpec
    backend: Any  # a backend of blazeport.modelfiles.backends (its ``raw`` outputs)

    def process(self, image: np.ndarray, landmarks: np.ndarray) -> dict[str, Iris]:
        """Both eyes of one face: ``landmarks`` are its 468 normalized face landmarks."""
        image = as_rgb(image)
        h, w = image.shape[:2]
        rois, crops, pads = {}, [], []
        for eye, (_, _, flip) in EYES.items():
            rois[eye] = eye_roi(landmarks, eye, w, h)
            tensor, pad = crop_eye(image, rois[eye], self.spec.input_size, flip, self.spec.normalization)
            crops.append(tensor)
            pads.append(pad)
        contour, iris = landmark_outputs(self.backend.raw(np.stack(crops)), self.spec, self.spec.name)
        scale = self.spec.coordinate_scale
        out = {}
        for i, (eye, (_, _, flip)) in enumerate(EYES.items()):
            c = _remove_padding(_landmarks(contour[i], len(contour[i]) // 3, scale, flip), pads[i])
            r = _remove_padding(_landmarks(iris[i], len(iris[i]) // 3, scale, flip), pads[i])
            out[eye] = Iris(project_landmarks(c, rois[eye]), project_landmarks(r, rois[eye]), rois[eye])
        return out


@dataclass
class FaceLandmarker:
    """Face detection, then 468 face landmarks per face (and optionally iris landmarks).

    ``detector`` is the short-range :class:`Detector` (its score threshold is FaceMesh's
    ``min_detection_confidence``); ``backend`` runs the face landmark model; ``max_faces`` is
    ``max_num_faces`` (MediaPipe's default is 1; ``None`` keeps every face); ``min_presence`` is
    ``min_tracking_confidence`` (a face is kept when its presence score is above it).
    """

    detector: Detector
    spec: LandmarkSpec
    backend: Any
    max_faces: int | None = 1
    min_presence: float = 0.5
    iris: IrisLandmarker | None = None

    @property
    def runtime(self) -> str:
        """The runtime that runs the models (``onnx``), or each model's when they differ (``face mesh on
        onnx, detector on torch``: a ``.onnx`` face mesh with the default detector, which runs on torch).
        What a summary should name: the ``--backend`` asked for, or its absence, does not say it."""
        names = {"face mesh": self.backend, "detector": self.detector.backend}
        if self.iris is not None:
            names["iris"] = self.iris.backend
        runtimes = {k: getattr(b, "name", type(b).__name__) for k, b in names.items()}
        if len(set(runtimes.values())) == 1:
            return next(iter(runtimes.values()))
        return ", ".join(f"{k} on {v}" for k, v in runtimes.items())

    def rois(self, detections: list[Detection], width: int, height: int) -> list[tuple[Detection, Rect]]:
        """The detections kept (the first ``max_faces``) with their ROIs, after association."""
        kept = detections if self.max_faces is None else detections[: self.max_faces]
        pairs = [(d, roi_from_detection(d.box, d.keypoints, width, height)) for d in kept]
        return associate(pairs, key=lambda p: p[1])

    def process(self, image: np.ndarray | str | Path) -> list[FaceLandmarks]:
        """Landmarks of every face kept in one RGB uint8 image (or an image file path)."""
        image = read_image(image) if isinstance(image, (str, Path)) else as_rgb(image)
        h, w = image.shape[:2]
        return self.faces_in(image, self.rois(self.detector.detect(image), w, h))

    def faces_in(self, image: np.ndarray, pairs: Sequence[tuple[Detection | None, Rect]]) -> list[FaceLandmarks]:
        """``FaceLandmarkCpu`` on each ROI of an RGB uint8 image (with the detection it came from, or
        ``None``), in order; a face whose presence is not above ``min_presence`` is dropped."""
        if not pairs:
            return []
        batch = np.stack([warp_rect(image, roi, self.spec.input_size, self.spec.normalization) for _, roi in pairs])
        names = [name for name, _ in self.spec.outputs]
        outputs = dict(zip(names, landmark_outputs(self.backend.raw(batch), self.spec, self.spec.name), strict=True))
        refined, scale = is_refined(self.spec), self.spec.coordinate_scale
        faces = []
        for k, (det, roi) in enumerate(pairs):
            score = _sigmoid(float(outputs["face_flag"][k][0]))
            if not score > self.min_presence:
                continue
            crop = (refine_landmarks({n: o[k] for n, o in outputs.items()}, scale) if refined
                    else _landmarks(outputs["landmarks"][k], NUM_FACE_LANDMARKS, scale))
            pts = project_landmarks(crop, roi)
            face = FaceLandmarks(score, pts, det, roi)
            if self.iris is not None:
                face.iris = self.iris.process(image, pts)
            faces.append(face)
        return faces


def _landmark_backend(model: str | Path, backend: str | None, threads: int | None, kind: str,
                      device: str = "cpu") -> tuple[LandmarkSpec, Any]:
    spec, runner, _ = open_backend(model, backend, None, threads, device)
    if not isinstance(spec, LandmarkSpec):
        raise BlazeportError(f"{model}: {spec.name} is a face detector, not a {kind} model")
    if not hasattr(runner, "raw"):
        raise BlazeportError(f"the {runner.name} backend does not run landmark models yet; use torch or tflite")
    # one blank input: the outputs must be the ones the spec reads (a refusal naming the file, not junk)
    landmark_outputs(runner.raw(np.zeros((1, spec.input_size, spec.input_size, 3), np.float32)), spec, str(model))
    return spec, runner


def _check_iris(model: str | Path, spec: LandmarkSpec) -> None:
    """Refuse a landmark model that is not an iris model before it runs: :class:`IrisLandmarker` splits
    its two outputs into 71 + 5 landmarks, and a face mesh given instead would end in a reshape error."""
    sizes = [n for _, n in spec.outputs]
    if sizes != [NUM_EYE_CONTOUR * 3, NUM_IRIS * 3]:
        raise BlazeportError(f"{model}: {spec.name} is not an iris model (an iris model gives "
                             f"{NUM_EYE_CONTOUR} eye contour and {NUM_IRIS} iris landmarks from an eye crop); give "
                             "iris_landmark or a file converted or exported from it")


def load_landmarks(model: str | Path | None = None, backend: str | None = None, detector: str | Path = "short_range",
                   iris: bool | str | Path = False, threads: int | None = None, max_faces: int | None = 1,
                   min_detection_confidence: float = 0.5, min_presence: float = 0.5, device: str = "cpu",
                   trust_code: bool = False, refine: bool = False) -> FaceLandmarker:
    """A ready :class:`FaceLandmarker`: ``model`` (spec name or file of the face landmark model; default
    ``face_landmark``, or ``face_landmark_with_attention`` with ``refine``) and ``detector`` on ``backend``
    (``torch``, ``tflite`` or ``onnx``, as :func:`blazeport.load`); ``refine=True`` runs the attention
    mesh, 478 landmarks with refined lips, eyes and irises (``FaceMesh(refine_landmarks=True)``; Google's
    file holds MediaPipe's custom ops, so it runs on torch, or exported on onnx);
    ``iris=True`` (or an iris model name or file) adds iris landmarks. Defaults are FaceMesh's:
    one face, detection and presence thresholds 0.5. ``device`` as :func:`blazeport.load` (``cuda[:N]`` on torch
    and onnx) for all the models; ``trust_code`` as :func:`blazeport.load`, for a student detector whose
    backbone is the user's own module."""
    model = model if model is not None else "face_landmark_with_attention" if refine else "face_landmark"
    for name, value in (("min_detection_confidence", min_detection_confidence), ("min_presence", min_presence)):
        if not 0.0 <= value <= 1.0:
            raise BlazeportError(f"{name} must be in [0, 1], got {value!r}")
    if max_faces is not None and (not isinstance(max_faces, int) or max_faces < 1):
        raise BlazeportError(f"max_faces must be a whole number >= 1 or None, got {max_faces!r}")
    spec, runner = _landmark_backend(model, backend, threads, "face landmark", device)
    if spec.output_size(spec.outputs[0][0]) != NUM_FACE_LANDMARKS * 3:
        raise BlazeportError(f"{model}: {spec.name} is not a face mesh model (468 landmarks)")
    if refine and not is_refined(spec):
        raise BlazeportError(f"{model}: {spec.name} is a face mesh without attention ({NUM_FACE_LANDMARKS} landmarks); "
                             f"refined landmarks ({NUM_REFINED_LANDMARKS}) need face_landmark_with_attention or a file "
                             "converted or exported from it")
    iris_landmarker = None
    if iris:
        iris_model = "iris_landmark" if iris is True else iris
        iris_spec, iris_runner = _landmark_backend(iris_model, backend, threads, "iris", device)
        _check_iris(iris_model, iris_spec)
        iris_landmarker = IrisLandmarker(iris_spec, iris_runner)
    det = load(detector, backend=backend, threads=threads, score_threshold=min_detection_confidence, device=device,
               trust_code=trust_code)
    return FaceLandmarker(det, spec, runner, max_faces, min_presence, iris_landmarker)
