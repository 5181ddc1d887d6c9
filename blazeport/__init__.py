"""blazeport: convert, verify, distill, export and benchmark Google's BlazeFace detectors (and MediaPipe's face mesh)."""

from __future__ import annotations

from blazeport.detector import Detector, load
from blazeport.errors import BlazeportError
from blazeport.landmarks import FaceLandmarker, FaceLandmarks, load_landmarks
from blazeport.postprocess import Detection
from blazeport.tracking import FaceMeshTracker, landmarks_on_frames
from blazeport.version import __version__

__all__ = ["BlazeportError", "Detection", "Detector", "FaceLandmarker", "FaceLandmarks", "FaceMeshTracker", "__version__",
           "landmarks_on_frames", "load", "load_landmarks"]
