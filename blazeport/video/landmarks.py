"""Face landmarks on video frames: the one place that chooses how a video's frames are run.

MediaPipe runs face mesh on video in one of two ways (``mp.solutions.face_mesh.FaceMesh``):

- ``static_image_mode=False`` (MediaPipe's default for video, and blazeport's): ``face_landmark_front_cpu``'s
  tracking loop, where each frame's landmarks give the next frame's regions and the detector runs only
  while fewer than ``max_faces`` faces are tracked (:class:`blazeport.video.tracking.FaceMeshTracker`);
- ``static_image_mode=True``: every frame on its own, detector then landmarks, as on a photo, what
  ``blazeport landmarks VIDEO --static`` runs.

Every command and API that takes video frames goes through :func:`video_landmarks`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from blazeport.pipeline.landmarks import FaceLandmarker, FaceLandmarks
from blazeport.video.frames import Frame
from blazeport.video.tracking import FaceMeshTracker


def video_landmarks(landmarker: FaceLandmarker, frames: Iterable[Frame],
                    static: bool = False) -> Iterator[tuple[Frame, list[FaceLandmarks]]]:
    """``(frame, faces)`` per frame, in order: MediaPipe's tracking loop, or with ``static`` every frame on
    its own (:meth:`FaceLandmarker.process`). A new tracker per call: one video, one track."""
    step = landmarker.process if static else FaceMeshTracker(landmarker).process
    for frame in frames:
        yield frame, step(frame.rgb)
