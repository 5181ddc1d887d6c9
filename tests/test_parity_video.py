"""Detection on video is MediaPipe's FaceDetection on each frame: ``detector.detect_video(VIDEO)`` against
``mp.solutions.face_detection.FaceDetection(model_selection=0).process`` on the frames OpenCV's own loop
decodes from the same file (a lossless FFV1 clip made from real photos under camera motion, with a
face-free stretch). Same tolerances as the photo parity test (``tests/test_parity_mediapipe.py``).

Needs the optional ``parity`` extra (``pip install -e ".[parity]"``); skipped without it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

mp = pytest.importorskip(
    "mediapipe", reason="MediaPipe is the oracle here; install the optional extra: pip install -e '.[parity]'"
)

from blazeport import load  # noqa: E402
from tests.videos import read_all  # noqa: E402
from tools.parity_report import Face, compare, mediapipe_faces  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:SymbolDatabase.GetPrototype:UserWarning")  # protobuf 4 vs MediaPipe


@pytest.mark.parametrize("backend", ["tflite", "torch"])
def test_detect_video_matches_mediapipe_frame_by_frame(clip_mkv: Path, backend: str) -> None:
    with mp.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5) as fd:
        theirs = [mediapipe_faces(fd, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)) for bgr in read_all(clip_mkv)]
    ours = [[Face(d.score, np.array(d.box), np.array(d.keypoints)) for d in dets]
            for _, _, dets in load("short_range", backend=backend).detect_video(clip_mkv)]
    assert len(ours) == len(theirs) == 40
    results = [compare(f"frame {i}", a, b) for i, (a, b) in enumerate(zip(ours, theirs, strict=True))]
    assert sum(r.mediapipe for r in results) >= 55 and sum(r.mediapipe == 0 for r in results) >= 8  # faces, and none
    bad = [r for r in results if not r.within()]
    assert not bad, "; ".join(f"{r.image}: {r.ours} vs {r.mediapipe} faces, score {r.worst_score:.2e}, "
                              f"coordinates {r.worst_coord:.2e}" for r in bad)
