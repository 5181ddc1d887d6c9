"""The runtime registry: one row per runtime (torch, LiteRT, ONNX Runtime, ExecuTorch), the single
source of the runtime list that the CLI's choices, :func:`blazeport.load` and the bench read, like
Ultralytics' AutoBackend picking the runtime from the file; and the default runtime, the best one
installed. The backends themselves are :mod:`blazeport.modelfiles.backends`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from blazeport.errors import BlazeportError
from blazeport.extras import installed
from blazeport.modelfiles.backends import ExecuTorchBackend, OnnxBackend, TFLiteBackend, TorchBackend

__all__ = ["MODEL_SUFFIXES", "RUNTIMES", "Runtime", "check_device", "default_runtime", "get_runtime", "native_runtime"]


@dataclass(frozen=True)
class Runtime:
    """One row of the runtime registry: the single source of the runtime list (CLI choices,
    ``blazeport.load``, bench), like Ultralytics' AutoBackend picking the runtime from the file."""

    name: str
    backend: type
    suffixes: tuple[str, ...]  # model files it runs ('.tflite' on torch: converted on load)
    runs_spec_names: bool  # a spec name runs on it (torch: converted weights; tflite: Google's original)
    install: str
    devices: tuple[str, ...] = ("cpu",)  # "cuda": takes device="cuda[:N]" (tests skip it without a GPU)


RUNTIMES: dict[str, Runtime] = {
    r.name: r
    for r in (
        Runtime("torch", TorchBackend, (".safetensors", ".tflite"), True, "pip install 'blazeport[torch]'", ("cpu", "cuda")),
        Runtime("tflite", TFLiteBackend, (".tflite",), True, "pip install ai-edge-litert"),
        Runtime("onnx", OnnxBackend, (".onnx",), False, "pip install onnxruntime", ("cpu", "cuda")),
        Runtime("executorch", ExecuTorchBackend, (".pte",), False, "pip install 'blazeport[export]'"),
    )
}
MODEL_SUFFIXES = tuple(sorted({s for r in RUNTIMES.values() for s in r.suffixes}))


def check_device(runtime: Runtime, device: str) -> str:
    """``device`` if ``runtime`` can run on it (``cpu``, ``cuda``, ``cuda:N``), else one clear error."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise BlazeportError(f"unknown device {device!r}: use cpu, cuda or cuda:N")
    if kind not in runtime.devices:
        on = [r.name for r in RUNTIMES.values() if kind in r.devices]
        raise BlazeportError(f"the {runtime.name} backend runs on the CPU only; --device {device} is for "
                             f"{', '.join(on)}")
    return device


def get_runtime(name: str) -> Runtime:
    if name not in RUNTIMES:
        raise BlazeportError(f"unknown backend {name!r}; choose one of {', '.join(RUNTIMES)}")
    return RUNTIMES[name]


def native_runtime(path: str | Path) -> str | None:
    """The runtime that reads this file as it is (``.tflite`` -> tflite, ``.onnx`` -> onnx, ...)."""
    suffix = Path(path).suffix
    return next((r.name for r in RUNTIMES.values() if r.suffixes and r.suffixes[0] == suffix), None)


def default_runtime(model: str | Path) -> str:
    """The runtime ``blazeport.load`` uses when none is named: the best one installed. With torch
    (``blazeport[torch]``): torch for a spec name, a ``.safetensors`` or a ``.tflite`` (converted on
    load, as before). Without it (the core install): LiteRT for a spec name or a ``.tflite`` (Google's
    original, or the export bundled for a student). An ``.onnx`` or ``.pte`` runs on its own runtime
    either way: those hold no PyTorch weights. A ``.safetensors`` without torch stays ``torch``, whose
    refusal names the extra."""
    suffix = Path(model).suffix
    if suffix in MODEL_SUFFIXES and suffix not in RUNTIMES["torch"].suffixes:
        return native_runtime(model) or "torch"
    if installed("torch") or suffix == ".safetensors":
        return "torch"
    return "tflite"
