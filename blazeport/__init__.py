"""blazeport: convert, verify, distill, export and benchmark Google's BlazeFace detectors."""

from __future__ import annotations

from blazeport.detector import Detector, load
from blazeport.errors import BlazeportError
from blazeport.postprocess import Detection
from blazeport.version import __version__

__all__ = ["BlazeportError", "Detection", "Detector", "__version__", "load"]
