"""Temporal smoothing of detections on video (``detect --smooth``, ``detect_video(smooth=True)``): off by
default, since MediaPipe's FaceDetection smooths nothing.

The filter is MediaPipe's own one-euro filter (``mediapipe/util/filtering/one_euro_filter.cc`` and
``low_pass_filter.cc``, Casiez et al., CHI 2012) as its ``LandmarksSmoothingCalculator`` runs it
(``landmarks_smoothing_calculator_utils.cc``, ``OneEuroFilterImpl``), with the parameters MediaPipe
Tasks' face landmarker uses (``face_landmarks_detector_graph.cc``,
``ConfigureLandmarksSmoothingCalculator``): ``min_cutoff`` 0.05 Hz (a still face: alpha ~0.01),
``beta`` 80 (a fast move: alpha ~0.94), ``derivate_cutoff`` 1 Hz, ``frequency`` 30 until two timestamps
give the real one. As there:

- every coordinate is filtered on its own, in pixels (x * width, y * height), with the speed scaled by
  ``1 / object scale`` (the mean of the box's width and height in pixels, ``GetObjectScale(Rect)``), so
  the same motion relative to the face's size is smoothed the same way near and far;
- the speed is the change of the *raw* value since the last raw value (MediaPipe's choice; the paper
  differentiates the filtered value), itself low-passed at ``derivate_cutoff``;
- the filters' state is float32 (``LowPassFilter`` stores ``float``), the arithmetic double;
- a timestamp that does not increase returns the value unfiltered, and leaves the state as it was.

A face is a box (its two corners) and its keypoints. Faces are carried from frame to frame by IoU
(greedy, >= 0.5, the ``min_similarity_threshold`` of MediaPipe's ``AssociationNormRectCalculator`` in
``face_landmark_front_cpu``); a face with no match starts fresh filters, and a face that is not seen
in a frame loses its filters (``MultiLandmarkFilters::ClearUnused``). Scores are not smoothed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from blazeport.modelfiles.verify import iou, pair_detections
from blazeport.pipeline.postprocess import Detection

MIN_CUTOFF = 0.05
BETA = 80.0
DERIVATE_CUTOFF = 1.0
FREQUENCY = 30.0
MIN_ALLOWED_OBJECT_SCALE = 1e-6
ASSOCIATION_IOU = 0.5


class OneEuroFilter:
    """MediaPipe's ``OneEuroFilter`` over an array of values that share timestamps and a value scale
    (one filter per element, exactly as one C++ filter per coordinate)."""

    def __init__(self, frequency: float = FREQUENCY, min_cutoff: float = MIN_CUTOFF, beta: float = BETA,
                 derivate_cutoff: float = DERIVATE_CUTOFF) -> None:
        for name, value in (("frequency", frequency), ("min_cutoff", min_cutoff), ("derivate_cutoff", derivate_cutoff)):
            if not value > 1e-6:  # MediaPipe logs an error and keeps its default; a caller here gets told
                raise ValueError(f"{name} must be > 0, got {value!r}")
        self.frequency = float(frequency)
        self.min_cutoff = float(min_cutoff)
        self.beta = float(beta)
        self.derivate_cutoff = float(derivate_cutoff)
        self.last_time_ns = 0
        self._raw: np.ndarray | None = None  # x_ filter: last raw value, last filtered value (float32)
        self._stored: np.ndarray | None = None
        self._d_stored: np.ndarray | None = None  # dx_ filter: last filtered speed

    def _alpha(self, cutoff: np.ndarray | float) -> np.ndarray | float:
        te = 1.0 / self.frequency
        tau = 1.0 / (2 * math.pi * np.asarray(cutoff, np.float64))
        return 1.0 / (1.0 + tau / te)

    @staticmethod
    def _low_pass(value: np.ndarray, alpha: np.ndarray | float, stored: np.ndarray | None) -> np.ndarray:
        """``LowPassFilter::ApplyWithAlpha``: the first value passes; later, alpha * value + (1 - alpha) * stored,
        with alpha and the result rounded to float like the C++ members."""
        if stored is None:
            return value.astype(np.float32)
        a = np.asarray(alpha, np.float32).astype(np.float64)
        return (a * value.astype(np.float64) + (1.0 - a) * stored.astype(np.float64)).astype(np.float32)

    def apply(self, time_ns: int, value_scale: float, value: np.ndarray) -> np.ndarray:
        """``OneEuroFilter::Apply(timestamp, value_scale, value)`` for every element of ``value``."""
        value = np.asarray(value, np.float32)
        if self.last_time_ns >= time_ns:
            return value.copy()  # "New timestamp is equal or less than the last one": unfiltered
        if self.last_time_ns != 0 and time_ns != 0:
            self.frequency = 1.0 / ((time_ns - self.last_time_ns) * 1e-9)
        self.last_time_ns = time_ns
        if self._raw is None:
            dvalue = np.zeros(value.shape, np.float64)
        else:
            dvalue = (value.astype(np.float64) - self._raw) * value_scale * self.frequency
        d = self._low_pass(dvalue.astype(np.float32), self._alpha(self.derivate_cutoff), self._d_stored)
        self._d_stored = d
        cutoff = self.min_cutoff + self.beta * np.abs(d.astype(np.float64))
        out = self._low_pass(value, self._alpha(cutoff), self._stored)
        self._raw, self._stored = value.copy(), out
        return out.copy()


@dataclass
class _Track:
    box: tuple[float, float, float, float]  # the last raw box, normalized (xmin, ymin, w, h): for association
    filter: OneEuroFilter = field(default_factory=OneEuroFilter)


class DetectionSmoother:
    """Call once per frame, in order: ``smoother(detections, time_ms, width, height)`` -> smoothed copies
    (same order, same scores). Parameters as :class:`OneEuroFilter` (MediaPipe's face landmarker's)."""

    def __init__(self, min_cutoff: float = MIN_CUTOFF, beta: float = BETA, derivate_cutoff: float = DERIVATE_CUTOFF,
                 frequency: float = FREQUENCY, min_iou: float = ASSOCIATION_IOU) -> None:
        self.params = {"frequency": frequency, "min_cutoff": min_cutoff, "beta": beta, "derivate_cutoff": derivate_cutoff}
        OneEuroFilter(**self.params)  # checks them now
        self.min_iou = min_iou
        self.tracks: list[_Track] = []

    def reset(self) -> None:
        self.tracks = []

    def __call__(self, detections: list[Detection], time_ms: float, width: int, height: int) -> list[Detection]:
        pairs = {i: j for i, j in pair_detections(detections, self.tracks)
                 if iou(detections[i].box, self.tracks[j].box) >= self.min_iou}
        time_ns = round(time_ms * 1e6)
        tracks, out = [], []
        for i, det in enumerate(detections):
            track = self.tracks[pairs[i]] if i in pairs else _Track(det.box, OneEuroFilter(**self.params))
            track.box = det.box
            tracks.append(track)
            out.append(_smooth(det, track.filter, time_ns, width, height))
        self.tracks = tracks  # unmatched faces are forgotten with their filters
        return out


def _smooth(det: Detection, flt: OneEuroFilter, time_ns: int, width: int, height: int) -> Detection:
    x, y, w, h = det.box
    points = np.array([[x, y], [x + w, y + h], *det.keypoints], np.float64) * (width, height)
    scale = (w * width + h * height) / 2.0  # GetObjectScale(Rect): mean of the box's sides in pixels
    if scale < MIN_ALLOWED_OBJECT_SCALE:
        return det
    smoothed = flt.apply(time_ns, 1.0 / scale, points.astype(np.float32).ravel()).reshape(-1, 2).astype(np.float64)
    smoothed /= (width, height)
    (x0, y0), (x1, y1) = smoothed[0], smoothed[1]
    return Detection(det.score, (float(x0), float(y0), float(x1 - x0), float(y1 - y0)),
                     [(float(kx), float(ky)) for kx, ky in smoothed[2:]])
