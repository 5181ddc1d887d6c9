"""Optional extras: which is installed, and the one line that says which to install.

The core install (``pip install blazeport``) runs the bundled models on LiteRT and ONNX Runtime
with no torch. ``blazeport[torch]`` adds what convert, distill, prune and export need;
``[export]`` TFLite and ExecuTorch export, ``[fast]`` the compiled post-processing, ``[parity]``
MediaPipe as the oracle. :data:`EXTRA_OF` maps each optional library to its extra, so a missing one
ends a command in one line (:func:`missing_extra`) instead of an ``ImportError`` from deep inside.
"""

from __future__ import annotations

import importlib.util
import sys

from blazeport.errors import BlazeportError

__all__ = ["COMMAND_NEEDS", "EXTRA_OF", "installed", "missing_extra", "require"]

# top-level module -> the extra that installs it
EXTRA_OF: dict[str, str] = {
    "torch": "torch", "skimage": "torch", "matplotlib": "torch", "tensorboard": "torch", "torch_pruning": "torch",
    "onnx": "torch", "onnxscript": "torch", "onnxslim": "torch", "webdataset": "torch",
    "litert_torch": "export", "executorch": "export", "numba": "fast", "mediapipe": "parity",
}

# commands that cannot start without a library (checked before they read anything)
COMMAND_NEEDS: dict[str, str] = {"convert": "torch", "distill": "torch", "prune": "torch", "export": "torch"}

_WHY = {"torch": "PyTorch", "export": "the exporters", "fast": "numba", "parity": "MediaPipe"}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (a ``None`` in ``sys.modules``, as
    tests use to hide a library, counts as missing)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_extra(module: str, what: str) -> str:
    """``what`` needs ``module``: the sentence that names the extra to install."""
    extra = EXTRA_OF.get(module.split(".")[0])
    if extra is None:
        return f"{what} needs {module}, which is not installed: pip install {module}"
    return (f"{what} needs {_WHY.get(extra, extra)} ({module}), which this install does not have: "
            f"pip install 'blazeport[{extra}]'")


def require(module: str, what: str) -> None:
    """Raise the one-line :class:`BlazeportError` of :func:`missing_extra` unless ``module`` is installed."""
    if not installed(module):
        raise BlazeportError(missing_extra(module, what))
