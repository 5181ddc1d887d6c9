"""End to end against MediaPipe's video mode: :class:`blazeport.video.tracking.FaceMeshTracker` vs
``mp.solutions.face_mesh.FaceMesh(static_image_mode=False, refine_landmarks=False)`` on the same RGB
frames, in order: 100 frames of 640x480 made from two real photos by a moving camera (pan, zoom, a
few degrees of tilt; faces enter and leave, 25 frames show no face, a cut to another photo; see
``tools/tracking_parity.py``, which prints the same figures).

- ``max_num_faces=2``, torch and tflite: the same faces in every frame, in MediaPipe's order, and
  every landmark within 2e-3 (measured 5.3e-4 on tflite, 5.6e-4 on torch).
- ``max_num_faces=4`` with MediaPipe's own detections replayed to blazeport's loop: bit for bit the
  same landmarks (0.0 here: the crop, the model on LiteRT, the projection and the next ROI are
  MediaPipe's float for float), including frames with six faces (MediaPipe clips detections, not
  tracked faces) and association with a detection on most frames.
- ``max_num_faces=4`` with blazeport's detector: the same faces in every frame; the landmarks drift
  further (measured 2.0e-3 on tflite, 4.2e-3 on torch, on a face sliding out of the frame): the
  detector's last-bit differences from MediaPipe's (~1e-7), which the loop carries from frame to frame.
- The rotated crops against MediaPipe's ImageToTensorCalculator itself: identical.

Needs the optional ``parity`` extra (``pip install -e ".[parity]"``); skipped without it.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

pytest.importorskip("mediapipe", reason="MediaPipe is the oracle here; install the optional extra: pip install -e '.[parity]'")

from blazeport.pipeline.landmarks import load_landmarks
from blazeport.video.tracking import FaceMeshTracker
from tools.tracking_parity import (
    DATA,
    LANDMARK_TOL,
    compare,
    default_video,
    faces_array,
    mediapipe_graph_video,
    mediapipe_video,
    track_replaying,
)

pytestmark = pytest.mark.filterwarnings("ignore:SymbolDatabase.GetPrototype:UserWarning")  # protobuf 4 vs MediaPipe


@pytest.fixture(scope="module")
def video() -> list[np.ndarray]:
    if not (DATA / "unlabeled" / "human_samples").is_dir():
        pytest.skip(f"real photos not found at {DATA} (the shared data folder beside the checkout)")
    return default_video()


@pytest.fixture(scope="module")
def facemesh_2(video) -> list[list[np.ndarray]]:
    return mediapipe_video(video, max_faces=2)


@pytest.fixture(scope="module")
def graph_4(video) -> tuple[list[list[np.ndarray]], list]:
    return mediapipe_graph_video(video, max_faces=4)


@pytest.mark.parametrize("backend", ["tflite", "torch"])
def test_video_mode_matches_facemesh(video, facemesh_2, backend: str) -> None:
    counts = [len(f) for f in facemesh_2]
    assert counts.count(0) >= 20 and counts.count(2) >= 50, "the video shows no face, then two, for a while"
    assert sum(a != b for a, b in pairwise(counts)) >= 4, "and faces enter and leave"
    tracker = FaceMeshTracker(load_landmarks(backend=backend, max_faces=2))
    ours = [faces_array(f) for f in tracker.track(video)]
    report = compare(ours, facemesh_2)
    assert report["frames_agreeing"] == len(video), report["count_mismatches"]
    assert report["max_xy_diff"] <= LANDMARK_TOL and report["max_z_diff"] <= LANDMARK_TOL, report
    assert 1 < tracker.stats.detector_runs < len(video) - 30  # tracked frames skip the detector


def test_tracking_loop_is_mediapipes_bit_for_bit(video, graph_4) -> None:
    theirs, detections = graph_4
    assert max(map(len, theirs)) > 4, "MediaPipe returns more faces than max_num_faces on this video"
    assert sum(1 for d in detections if d) > 50, "and merges detections with tracked faces on most frames"
    ours = track_replaying(load_landmarks(backend="tflite", max_faces=4), video, detections)
    report = compare(ours, theirs)
    assert report["frames_agreeing"] == len(video), report["count_mismatches"]
    assert report["max_xy_diff"] <= 1e-6 and report["max_z_diff"] <= 1e-6, report


def test_same_faces_as_mediapipe_with_four_faces(video, graph_4) -> None:
    theirs, _ = graph_4
    tracker = FaceMeshTracker(load_landmarks(backend="tflite", max_faces=4))
    report = compare([faces_array(f) for f in tracker.track(video)], theirs)
    assert report["frames_agreeing"] == len(video), report["count_mismatches"]
    assert report["faces"] == report["mediapipe_faces"] >= 200
    assert report["max_xy_diff"] <= 5e-3, report  # see the module docstring: the detector's last bits, carried


def test_rotated_crops_are_mediapipes_pixel_for_pixel(video) -> None:
    """MediaPipe's own ImageToTensorCalculator (192x192, [0, 1], as FaceLandmarkCpu sets it) against
    blazeport.pipeline.roi.warp_rect on random rotated rects of the video's frames: identical tensors. With
    OpenCV 5's cv2.boxPoints for the corners, 89 of 150 differed by one to four grey levels."""
    import mediapipe as mp
    from google.protobuf import text_format
    from mediapipe.framework import calculator_pb2
    from mediapipe.framework.formats import rect_pb2
    from mediapipe.python import packet_creator, packet_getter

    from blazeport.pipeline.roi import Rect, warp_rect

    config = text_format.Parse("""
        input_stream: "image" input_stream: "roi" output_stream: "floats"
        node { calculator: "ImageToTensorCalculator" input_stream: "IMAGE:image" input_stream: "NORM_RECT:roi"
               output_stream: "TENSORS:tensors"
               options { [mediapipe.ImageToTensorCalculatorOptions.ext] { output_tensor_width: 192
                         output_tensor_height: 192 output_tensor_float_range { min: 0 max: 1 } } } }
        node { calculator: "TensorsToFloatsCalculator" input_stream: "TENSORS:tensors" output_stream: "FLOATS:floats" }
        """, calculator_pb2.CalculatorGraphConfig())
    out: list[np.ndarray] = []
    graph = mp.CalculatorGraph(graph_config=config)
    graph.observe_output_stream("floats", lambda _, p: out.append(np.array(packet_getter.get_float_list(p), np.float32)))
    graph.start_run()
    rng = np.random.default_rng(0)
    differ = 0
    try:
        for t in range(60):
            img = video[int(rng.integers(len(video)))]
            rect = Rect(*(float(np.float32(v)) for v in (*rng.uniform(0.1, 0.9, 2), *rng.uniform(0.2, 0.7, 2),
                                                           rng.uniform(-3.1, 3.1))))
            proto = rect_pb2.NormalizedRect(x_center=rect.x_center, y_center=rect.y_center, width=rect.width,
                                            height=rect.height, rotation=rect.rotation)
            graph.add_packet_to_input_stream("image", packet_creator.create_image_frame(
                image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(img)).at(t))
            graph.add_packet_to_input_stream("roi", packet_creator.create_proto(proto).at(t))
            graph.wait_until_idle()
            differ += not np.array_equal(out[-1].reshape(192, 192, 3), warp_rect(img, rect, 192))
    finally:
        graph.close()
    assert len(out) == 60 and differ == 0
