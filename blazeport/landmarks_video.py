"""Face landmarks on video frames: the one place that chooses how a video's frames are run.

MediaPipe runs face mesh on video in one of two ways (``mp.solutions.face_mesh.FaceMesh``):

- ``static_image_mode=True``: every frame on its own, detector then landmarks, as on a photo. That is
  :func:`static_landmarks`, what ``blazeport landmarks VIDEO --static`` runs;
- ``static_image_mode=False`` (MediaPipe's default for video): ``face_landmark_front_cpu``'s tracking
  loop, where each frame's landmarks give the next frame's regions and the detector runs only when a
  face is lost. That loop is built apart (``blazeport.tracking.FaceMeshTracker``) and is not in this
  build: until it lands, :func:`video_landmarks` runs every video static, whatever it is asked.
  Adding it is one branch here (``FaceMeshTracker(landmarker).process(frame.rgb)`` per frame), and
  every command and API that takes video frames goes through this function.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from blazeport.landmarks import FaceLandmarker, FaceLandmarks
from blazeport.video import Frame

TRACKING_NOTE = ("each frame runs on its own (static mode, FaceMesh(static_image_mode=True)); MediaPipe's tracking "
                 "loop for video is not in this build")


def static_landmarks(landmarker: FaceLandmarker, frames: Iterable[Frame]) -> Iterator[tuple[Frame, list[FaceLandmarks]]]:
    """``(frame, faces)`` per frame, each frame on its own (:meth:`FaceLandmarker.process`), in order."""
    for frame in frames:
        yield frame, landmarker.process(frame.rgb)


def video_landmarks(landmarker: FaceLandmarker, frames: Iterable[Frame],
                    static: bool = True) -> Iterator[tuple[Frame, list[FaceLandmarks]]]:
    """A video's landmarks, frame by frame. ``static=False`` asks for MediaPipe's tracking loop, which
    this build does not have yet: every video runs :func:`static_landmarks` (see the module's note)."""
    return static_landmarks(landmarker, frames)
