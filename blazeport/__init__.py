"""blazeport: convert, verify, distill, export and benchmark Google's BlazeFace detectors (and MediaPipe's face mesh)."""

from __future__ import annotations

from blazeport.detector import Detector, load
from blazeport.errors import BlazeportError
from blazeport.landmarks import FaceLandmarker, FaceLandmarks, load_landmarks
from blazeport.postprocess import Detection
from blazeport.version import __version__

__all__ = ["BlazeportError", "Detection", "Detector", "FaceLandmarker", "FaceLandmarks", "__version__", "load",
           "load_landmarks"]
