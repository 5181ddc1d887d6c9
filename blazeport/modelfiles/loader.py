"""Open a model on a runtime: a :class:`~blazeport.modelfiles.ref.ModelRef` (or what a user typed,
resolved by :func:`~blazeport.modelfiles.ref.resolve`) to a ready backend or a PyTorch module.

Every command and ``blazeport.load`` go through :func:`open_backend` (a runtime) or :func:`open_module`
(a PyTorch module, for export, distillation and counting), so each loading error is raised here, once.
A file with no spec from the caller, no original's sha256 and none stored in it is refused with a hint
to pass ``--spec``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blazeport.convert import load_tflite
from blazeport.errors import BlazeportError
from blazeport.extras import require
from blazeport.modelfiles.metadata import spec_from_metadata, tflite_metadata
from blazeport.modelfiles.ref import ModelRef, Spec, resolve, runtime_file, spec_weights
from blazeport.modelfiles.runtimes import check_device, get_runtime
from blazeport.modelfiles.weights import load_safetensors

__all__ = ["ModelRef", "open_backend", "open_module", "resolve", "runtime_file", "spec_weights"]

_NO_SPEC = "pass --spec NAME (e.g. short_range) to say how to feed and decode it"


def open_module(model: str | Path | ModelRef, spec: str | Spec | None = None,
                trust_code: bool = False) -> tuple[Any, Spec, Path]:
    """``(PyTorch module, spec, source file)`` for a spec name, a ``.safetensors`` or a ``.tflite``
    (converted on load, every weight shape checked). ``trust_code``: a student file whose backbone is
    the user's own module may import it (:mod:`blazeport.models.backbones`); never needed for
    blazeport's own models."""
    require("torch", f"{model} on the torch backend")
    ref = resolve(model, spec)
    path = ref.file_for("torch")
    if path.suffix == ".safetensors":
        module, stored = load_safetensors(path, trust_code)
        return module, ref.given or stored, path  # a spec name's weights store its spec
    resolved = ref.spec or spec_from_metadata(tflite_metadata(path), path)
    if resolved is None:
        raise BlazeportError(f"{path}: not one of Google's original files and no blazeport.spec metadata; {_NO_SPEC}")
    module, _ = load_tflite(path, family=ref.family)
    return module, resolved, path


def open_backend(model: str | Path | ModelRef, runtime: str | None = None, spec: str | Spec | None = None,
                 threads: int | None = None, device: str = "cpu", trust_code: bool = False) -> tuple[Spec, Any, Path]:
    """``(spec, backend, source file)``: ``model`` ready to run on ``runtime`` (default: the reference's
    own, see :mod:`blazeport.modelfiles.runtimes`), on ``device`` (``cpu``; ``cuda[:N]`` for the
    runtimes that take it). ``trust_code``: as for :func:`open_module` (exported .onnx/.tflite/.pte files
    hold no code to import)."""
    ref = resolve(model, spec)
    runtime = runtime or ref.runtime
    rt = get_runtime(runtime)
    check_device(rt, device)
    on_device = {"device": device} if device != "cpu" else {}
    path = ref.file_for(runtime)
    if runtime == "torch":
        module, resolved, source = open_module(ref, trust_code=trust_code)
        return resolved, rt.backend(module, threads, **on_device), source
    backend = rt.backend(path, threads, **on_device)  # reads and checks the file: clear errors for damaged ones
    resolved = ref.spec or _stored_spec(path, backend)
    if resolved is None:
        raise BlazeportError(f"{path}: no blazeport.spec metadata and not a known original file; {_NO_SPEC}")
    if backend.input_size != resolved.input_size:
        raise BlazeportError(f"{path}: input is {backend.input_size}px but spec {resolved.name} expects "
                             f"{resolved.input_size}px")
    return resolved, backend, path


def _stored_spec(path: Path, backend: Any) -> Spec | None:
    meta = backend.metadata if hasattr(backend, "metadata") else tflite_metadata(path)
    return spec_from_metadata(meta, path)
