"""MediaPipe's video mode (``blazeport.video.tracking``) without MediaPipe and, but for the last test, without
models: a scripted detector and a stand-in face mesh on synthetic frames, so each rule of the loop
shows in a few frames.

The frames are black with white squares ("faces"). The detector finds the squares (counting its
calls); the stand-in model returns the same 468 landmarks for any crop, spread over the middle two
thirds of it (so the next ROI is the crop itself) with the eyes level, and a face flag that says
"face" when the middle of the crop is bright. The real ``FaceLandmarker.faces_in`` warps, thresholds
and projects.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from blazeport.pipeline.landmarks import FaceLandmarker
from blazeport.pipeline.postprocess import Detection
from blazeport.pipeline.roi import Rect, landmarks_to_box, rect_iou, rect_transform, roi_from_landmarks
from blazeport.specs import LANDMARK_SPECS
from blazeport.video.tracking import FaceMeshTracker, landmarks_on_frames

W, H = 320, 240
SPEC = LANDMARK_SPECS["face_landmark"]


def _canonical_landmarks() -> np.ndarray:
    """468 points on a grid over [1/6, 5/6] of the crop, landmarks 33 and 263 (the eye corners that
    give the tracked ROI its rotation) level."""
    g = np.linspace(1 / 6, 5 / 6, 22)
    pts = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)[:468]
    pts = np.concatenate([pts, np.zeros((468, 1))], 1)
    pts[0], pts[-1] = (1 / 6, 1 / 6, 0), (5 / 6, 5 / 6, 0)  # the grid's corners
    pts[33], pts[263] = (0.35, 0.4, 0), (0.65, 0.4, 0)
    return pts.astype(np.float32)


class StandInMesh:
    """A face landmark "model": fixed landmarks (in 192-px units) and a face flag from the crop's middle."""

    name = "stand-in"

    def raw(self, batch: np.ndarray) -> list[np.ndarray]:
        lm = np.tile((_canonical_landmarks() * SPEC.input_size).reshape(1, -1), (len(batch), 1))
        middle = batch[:, 80:112, 80:112].mean(axis=(1, 2, 3))
        flags = np.where(middle > 0.5, 8.0, -8.0).astype(np.float32)[:, None]
        return [lm, flags]


class SquareDetector:
    """Finds the white squares of a frame, highest first, and counts its calls; the eyes level."""

    name = "squares"

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, image: np.ndarray) -> list[Detection]:
        self.calls += 1
        contours, _ = cv2.findContours((image[..., 0] > 128).astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        found = []
        for c in contours:
            x, y, w, h = cv2.boundingRect(c)
            box = (x / W, y / H, w / W, h / H)
            eyes = [((x + 0.3 * w) / W, (y + 0.4 * h) / H), ((x + 0.7 * w) / W, (y + 0.4 * h) / H)]
            found.append((y, Detection(0.9, box, eyes + [(0.0, 0.0)] * 4)))
        return [d for _, d in sorted(found, key=lambda t: t[0])]  # top first: the order the test expects


def frame(*squares: tuple[int, int, int]) -> np.ndarray:
    """A black frame with white squares (x, y, side) in pixels."""
    img = np.zeros((H, W, 3), np.uint8)
    for x, y, s in squares:
        img[y : y + s, x : x + s] = 255
    return img


def tracker(max_faces: int | None) -> tuple[FaceMeshTracker, SquareDetector]:
    det = SquareDetector()
    return FaceMeshTracker(FaceLandmarker(det, SPEC, StandInMesh(), max_faces=max_faces)), det  # type: ignore[arg-type]


def centres(faces: list) -> list[tuple[float, float]]:
    return [(round(f.roi.x_center * W), round(f.roi.y_center * H)) for f in faces]


def test_a_face_that_stays_is_tracked_without_the_detector() -> None:
    """NormalizedRectVectorHasMinSizeCalculator: with max_num_faces faces tracked, the detector is gated off."""
    trk, det = tracker(max_faces=1)
    results = [trk.process(frame((100, 80, 60))) for _ in range(5)]
    assert det.calls == 1 and trk.stats.detector_runs == 1 and trk.stats.frames == 5
    assert [len(r) for r in results] == [1] * 5
    assert results[0][0].detection is not None and all(r[0].detection is None for r in results[1:])
    assert centres(results[-1]) == [(130, 110)]  # the stand-in keeps the ROI where the square is
    trk.reset()
    trk.process(frame((100, 80, 60)))
    assert det.calls == 2 and trk.stats.frames == 1  # a new video starts with a detection


def test_a_face_whose_presence_drops_is_let_go_and_the_detector_runs_again() -> None:
    trk, det = tracker(max_faces=1)
    counts = [len(trk.process(frame((100, 80, 60)))) for _ in range(3)]
    assert counts == [1, 1, 1] and det.calls == 1
    assert trk.process(frame()) == []  # the square is gone: presence low, the tracked face is dropped ...
    assert det.calls == 1  # ... on a frame the detector did not run on (one face was tracked)
    assert trk.tracked == []
    assert trk.process(frame()) == [] and det.calls == 2  # nothing tracked: the detector runs, finds nothing
    assert len(trk.process(frame((30, 30, 50)))) == 1 and det.calls == 3


def test_a_detection_of_a_tracked_face_is_dropped_and_new_faces_come_first() -> None:
    """AssociationNormRectCalculator: detections' ROIs first, then the tracked ones; a tracked ROI removes
    the detection ROI it overlaps (IoU > 0.5) and takes its place at the end."""
    trk, det = tracker(max_faces=2)
    (first,) = trk.process(frame((200, 120, 60)))
    assert first.detection is not None
    faces = trk.process(frame((202, 120, 60), (40, 20, 60)))  # the tracked face moved 2 px, a new one on top
    assert det.calls == 2  # one face tracked, max 2: the detector runs
    assert centres(faces) == [(70, 50), (230, 150)]  # the new face, then the tracked one
    assert faces[0].detection is not None and faces[1].detection is None  # the tracked ROI won over its detection
    trk.process(frame((202, 120, 60), (40, 20, 60)))
    assert det.calls == 2  # two tracked: gated off


def test_more_faces_than_max_num_faces_when_new_ones_join_a_tracked_one() -> None:
    """MediaPipe clips the detections to max_num_faces, not the associated ROIs: one tracked face and two
    new detections give three faces (its FaceMesh(max_num_faces=4) returned six on a video here), and
    with three tracked the detector stays off."""
    trk, det = tracker(max_faces=2)
    trk.process(frame((240, 150, 50)))
    faces = trk.process(frame((240, 150, 50), (20, 20, 50), (120, 20, 50)))
    assert len(faces) == 3 and [f.detection is None for f in faces] == [False, False, True]
    assert len(trk.process(frame((240, 150, 50), (20, 20, 50), (120, 20, 50)))) == 3 and det.calls == 2


def test_tracked_rois_that_come_to_overlap_merge_into_the_later_one() -> None:
    trk, det = tracker(max_faces=2)
    trk.process(frame((40, 60, 60), (200, 60, 60)))  # two faces, both tracked next
    assert det.calls == 1
    a, _ = trk.tracked
    drifted = Rect(a.x_center + 0.01, a.y_center, a.width, a.height)
    trk._rois = [a, drifted]  # the second drifted onto the first
    faces = trk.process(frame((40, 60, 60), (200, 60, 60)))
    assert len(faces) == 1 and det.calls == 1  # two came back (no detection), associated into one
    assert faces[0].roi == drifted  # the later one


def test_no_limit_runs_the_detector_on_every_frame_and_static_mode_too() -> None:
    trk, det = tracker(max_faces=None)
    for _ in range(3):
        assert len(trk.process(frame((100, 80, 60)))) == 1
    assert det.calls == 3
    _, det_static = tracker(max_faces=1)
    landmarker = FaceLandmarker(det_static, SPEC, StandInMesh(), max_faces=1)  # type: ignore[arg-type]
    frames = [frame((100, 80, 60))] * 4
    static = list(landmarks_on_frames(landmarker, frames, static=True))
    assert [i for i, _ in static] == [0, 1, 2, 3] and det_static.calls == 4
    video = list(landmarks_on_frames(landmarker, frames, static=False))
    assert [len(f) for _, f in video] == [1] * 4 and det_static.calls == 5  # video mode: one more call


def test_track_starts_afresh_each_video() -> None:
    trk, det = tracker(max_faces=1)
    for faces in trk.track([frame((100, 80, 60))] * 3):
        assert len(faces) == 1
    assert list(map(len, trk.track([frame((100, 80, 60))] * 2))) == [1, 1]
    assert det.calls == 2 and trk.stats.frames == 2


# ---------------------------------------------------------------------------------------------
# FaceLandmarkLandmarksToRoi


def test_next_roi_is_the_landmarks_box_rotated_by_33_to_263_squared_and_scaled() -> None:
    pts = _canonical_landmarks() * np.float32(0.3) + np.float32(0.2)  # a box of 0.2 x 0.2 at (0.25, 0.25)-(0.45, 0.45)
    roi = roi_from_landmarks(pts, 400, 200)
    assert (roi.x_center, roi.y_center, roi.rotation) == pytest.approx((0.35, 0.35, 0.0), abs=1e-6)
    # 0.2 x 0.2 of 400 x 200 is 80 x 40 px: squared on the long side to 80 px, x1.5 = 120 px
    assert (roi.width * 400, roi.height * 200) == pytest.approx((120, 120), abs=1e-4)
    tilted = pts.copy()
    tilted[263, 1] -= np.float32(0.05)  # the right eye corner 10 px higher over 36 px
    dx, dy = (tilted[263, 0] - tilted[33, 0]) * 400, (tilted[263, 1] - tilted[33, 1]) * 200
    assert roi_from_landmarks(tilted, 400, 200).rotation == pytest.approx(-math.atan2(-dy, dx), abs=1e-6)


def test_landmark_box_starts_its_maxima_at_the_smallest_positive_float() -> None:
    """LandmarksToDetectionCalculator starts x_max at std::numeric_limits<float>::min() (1.2e-38), so a face
    entirely left of the image still has a box reaching x = 0+."""
    pts = np.array([[-0.3, 0.2, 0], [-0.1, 0.4, 0]], np.float32)
    xmin, ymin, w, h = landmarks_to_box(pts)
    assert xmin == pytest.approx(-0.3) and w == pytest.approx(0.3) and (ymin, h) == pytest.approx((0.2, 0.2))


def test_crop_corners_match_opencv_and_overlap_is_measured_unrotated() -> None:
    rect = Rect(0.4, 0.6, 0.3, 0.25, 0.7)
    m = rect_transform(rect, 640, 480, 192, 192)
    corners = cv2.boxPoints(((0.4 * 640, 0.6 * 480), (0.3 * 640, 0.25 * 480), math.degrees(0.7)))
    mapped = cv2.perspectiveTransform(corners[None].astype(np.float64), m)[0]
    np.testing.assert_allclose(mapped, [[0, 192], [0, 0], [192, 0], [192, 192]], atol=1e-3)
    assert rect_iou(rect, Rect(0.4, 0.6, 0.3, 0.25, -1.0)) == pytest.approx(1.0)


def test_real_models_track_a_photo_with_iris_per_tracked_face() -> None:
    """On the bundled models (LiteRT): a still photo seen three times is detected once, then tracked, and the
    iris model runs on every face kept, as on photos; the tracked landmarks stay on the face."""
    import skimage.data

    from blazeport.pipeline.landmarks import load_landmarks

    landmarker = load_landmarks(backend="tflite", iris=True)
    photo = skimage.data.astronaut()
    trk = FaceMeshTracker(landmarker)
    frames = list(trk.track([photo] * 3))
    assert [len(f) for f in frames] == [1, 1, 1] and trk.stats.detector_runs == 1
    assert frames[0][0].detection is not None and frames[2][0].detection is None
    assert all(set(f[0].iris) == {"left", "right"} for f in frames)
    (static,) = landmarker.process(photo)
    assert np.abs(frames[2][0].landmarks - static.landmarks)[:, :2].max() < 0.01
    assert frames[2][0].to_dict()["detection"] is None
