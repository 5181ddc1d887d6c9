"""Face landmarks in video mode: MediaPipe's tracking loop, frame by frame.

``mp.solutions.face_mesh.FaceMesh(static_image_mode=False)`` runs the graph
``mediapipe/modules/face_landmark/face_landmark_front_cpu.pbtxt`` with ``use_prev_landmarks`` true.
As compiled into the mediapipe 0.10.14 wheel (``face_landmark_front_cpu.binarypb``; its subgraphs
``FaceLandmarkCpu``, ``FaceDetectionFrontDetectionToRoi`` and ``FaceLandmarkLandmarksToRoi`` are
serialized inside ``mediapipe/python/_framework_bindings*.so``), one frame is:

1. ``PreviousLoopbackCalculator``: the ROIs the previous frame's landmarks made come back (none on
   the first frame, nor after a frame without faces: ``EndLoopNormalizedRectCalculator`` sends no
   packet then).
2. ``NormalizedRectVectorHasMinSizeCalculator`` (``size >= num_faces``) and a ``GateCalculator``
   (``empty_packets_as_allow``): the short-range detector runs only when fewer than ``num_faces``
   ROIs came back. Its detections are clipped to the first ``num_faces``
   (``ClipDetectionVectorSizeCalculator``) and turned into ROIs (``FaceDetectionFrontDetectionToRoi``).
3. ``AssociationNormRectCalculator`` (``association_calculator.h``, ``min_similarity_threshold``
   0.5) on its two inputs in order, the detections' ROIs first, then the tracked ones: each rect in
   turn removes the rects already kept that it overlaps by IoU > 0.5 (axis-aligned, rotation
   ignored) and is appended. So a tracked face beats a detection of itself, the faces come out as
   the new detections not overlapping a tracked face, then the tracked faces in their order, and two
   tracked ROIs that came to overlap merge into the later one. The result is not clipped: with
   ``num_faces`` 2, one tracked face and two new ones give three faces, as MediaPipe does.
4. ``FaceLandmarkCpu`` per ROI (:meth:`blazeport.pipeline.landmarks.FaceLandmarker.faces_in`): a presence
   score not above ``min_tracking_confidence`` drops the face (its ``ThresholdingCalculator``, which
   the Python ``FaceMesh`` sets from that argument); iris landmarks, which ``FaceMesh`` does not run,
   run per face kept, as in the static path.
5. ``FaceLandmarkLandmarksToRoi`` (:func:`blazeport.pipeline.roi.roi_from_landmarks`): each face kept gives
   the next frame's ROI, the box of all 468 landmarks rotated by landmarks 33 -> 263, squared, x1.5,
   in the size of the frame it was found in.

The one state is the list of ROIs of step 5; :meth:`FaceMeshTracker.reset` forgets it (a new
video). Faces whose ROI came from the previous frame have ``detection`` ``None``.

Why a wrapper and not ``FaceLandmarker.track``: this module builds on :mod:`blazeport.pipeline.landmarks`, and a
method there would make the two import each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from blazeport.pipeline.landmarks import FaceLandmarker, FaceLandmarks
from blazeport.pipeline.postprocess import Detection
from blazeport.pipeline.preprocess import as_rgb, read_image
from blazeport.pipeline.roi import Rect, associate, roi_from_landmarks

__all__ = ["FaceMeshTracker", "TrackerStats", "landmarks_on_frames"]


@dataclass
class TrackerStats:
    """What the loop did since the tracker was made or reset: frames seen, frames the detector ran
    on, and faces returned (summed over frames)."""

    frames: int = 0
    detector_runs: int = 0
    faces: int = 0


@dataclass
class FaceMeshTracker:
    """MediaPipe's video mode (``FaceMesh(static_image_mode=False)``) around a :class:`FaceLandmarker`.

    The landmarker's ``max_faces`` is ``max_num_faces`` (``None``: no limit, so the detector runs on
    every frame), its detector threshold ``min_detection_confidence``, its ``min_presence``
    ``min_tracking_confidence``. Feed frames in order to :meth:`process`; :meth:`reset` between videos.
    """

    landmarker: FaceLandmarker
    stats: TrackerStats = field(default_factory=TrackerStats, init=False)
    _rois: list[Rect] = field(default_factory=list, init=False, repr=False)

    @property
    def tracked(self) -> list[Rect]:
        """The ROIs the last frame's landmarks made for the next frame (``face_rects_from_landmarks``)."""
        return list(self._rois)

    def reset(self) -> None:
        """Forget the tracked faces and the counts: the next frame is a first frame (a new video)."""
        self._rois = []
        self.stats = TrackerStats()

    def needs_detection(self) -> bool:
        """``NormalizedRectVectorHasMinSizeCalculator`` + ``GateCalculator``: the detector runs when
        fewer than ``max_faces`` faces came back from the previous frame (always with no limit)."""
        limit = self.landmarker.max_faces
        return limit is None or len(self._rois) < limit

    def rois(self, image: np.ndarray) -> list[tuple[Detection | None, Rect]]:
        """The frame's ROIs, each with its detection (``None`` for a tracked face), after
        ``AssociationNormRectCalculator``: detections' ROIs first, then the tracked ones. Runs the
        detector when :meth:`needs_detection` (counted in :attr:`stats`)."""
        h, w = image.shape[:2]
        tracked: list[tuple[Detection | None, Rect]] = [(None, r) for r in self._rois]
        if not self.needs_detection():
            return associate(tracked, key=lambda p: p[1])
        self.stats.detector_runs += 1
        # landmarker.rois clips to max_faces and associates the detections' ROIs among themselves, which
        # leaves exactly the list the calculator holds after its first input: appending the tracked ROIs
        # to it and associating again is the calculator's one pass over both inputs.
        detected: list[tuple[Detection | None, Rect]] = list(self.landmarker.rois(self.landmarker.detector.detect(image),
                                                                                   w, h))
        return associate(detected + tracked, key=lambda p: p[1])

    def process(self, image: np.ndarray | str | Path) -> list[FaceLandmarks]:
        """The faces of the next frame (an RGB uint8 array, or an image path), in MediaPipe's order."""
        image = read_image(image) if isinstance(image, (str, Path)) else as_rgb(image)
        h, w = image.shape[:2]
        faces = self.landmarker.faces_in(image, self.rois(image))
        self._rois = [roi_from_landmarks(f.landmarks, w, h) for f in faces]
        self.stats.frames += 1
        self.stats.faces += len(faces)
        return faces

    def track(self, frames: Iterable[np.ndarray]) -> Iterator[list[FaceLandmarks]]:
        """The faces of each frame of one video, in order; starts afresh (:meth:`reset`) first."""
        self.reset()
        for frame in frames:
            yield self.process(frame)


def landmarks_on_frames(landmarker: FaceLandmarker, frames: Iterable[np.ndarray],
                        static: bool = False) -> Iterator[tuple[int, list[FaceLandmarks]]]:
    """``(index, faces)`` for each RGB uint8 frame of a sequence, in order: MediaPipe's video mode
    (:class:`FaceMeshTracker`), or every frame on its own with ``static=True``
    (``FaceMesh(static_image_mode=True)``, :meth:`FaceLandmarker.process`). What ``blazeport landmarks``
    runs on a video's frames."""
    step = landmarker.process if static else FaceMeshTracker(landmarker).process
    for index, frame in enumerate(frames):
        yield index, step(frame)
