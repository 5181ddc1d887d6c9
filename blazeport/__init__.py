"""blazeport: convert, verify, distill, export and benchmark Google's BlazeFace detectors (and MediaPipe's face mesh)."""

from __future__ import annotations

from blazeport.errors import BlazeportError
from blazeport.pipeline.detector import Detector, load
from blazeport.pipeline.landmarks import FaceLandmarker, FaceLandmarks, load_landmarks
from blazeport.pipeline.postprocess import Detection
from blazeport.version import __version__
from blazeport.video.tracking import FaceMeshTracker, landmarks_on_frames

__all__ = ["BlazeportError", "Detection", "Detector", "FaceLandmarker", "FaceLandmarks", "FaceMeshTracker", "__version__",
           "landmarks_on_frames", "load", "load_landmarks"]
