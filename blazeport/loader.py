"""One way to open a model: from what the user typed to a spec and a ready backend or module.

What a user can name: a spec name or alias (``short_range``, ``front``; converted weights in
``weights/NAME.safetensors``, Google's original for the tflite runtime), a ``.safetensors`` from
``blazeport convert`` or ``distill``, a ``.tflite`` (Google's original, recognised by its sha256,
or a file from ``blazeport export``), or a ``.onnx`` from ``blazeport export``. Every command and
``blazeport.load`` go through :func:`open_backend` (a runtime) or :func:`open_module` (a PyTorch
module, for export, distillation and counting), so each loading error is raised here, once.

Which spec a file gets, in order: the ``spec`` the caller names (honoured on every runtime), the
spec whose original has the file's sha256, the spec stored in the file (safetensors header, ONNX or
TFLite metadata). A file with none of these is refused with a hint to pass ``--spec``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blazeport.bundle import check_bundled
from blazeport.convert import load_tflite
from blazeport.errors import BlazeportError
from blazeport.extras import require
from blazeport.metadata import spec_from_metadata, tflite_metadata
from blazeport.runtimes import MODEL_SUFFIXES, check_device, get_runtime, native_runtime
from blazeport.specs import WEIGHTS_DIR, LandmarkSpec, ModelSpec, spec_named, spec_of_original
from blazeport.weights import load_safetensors

__all__ = ["open_backend", "open_module", "runtime_file", "spec_weights"]


Spec = ModelSpec | LandmarkSpec  # a detector or a landmark model (face mesh, iris)


def _as_spec(spec: str | Spec | None) -> Spec | None:
    return spec_named(spec) if isinstance(spec, str) else spec


def _model_file(model: str | Path) -> Path | None:
    """The path, if ``model`` names a model file rather than a spec."""
    path = Path(model)
    if path.suffix not in MODEL_SUFFIXES:
        return None
    if not path.is_file():
        raise BlazeportError(f"{path}: no such model file")
    return check_bundled(path)


def spec_weights(spec: Spec) -> Path:
    """``weights/NAME.safetensors`` of a spec, or the one error that says how to make it."""
    weights = WEIGHTS_DIR / f"{spec.name}.safetensors"
    if not weights.is_file():
        how = (f"Run `blazeport convert weights/{spec.tflite}` first." if spec.tflite
               else "Distill one with `blazeport distill` and load its student.safetensors.")
        raise BlazeportError(f"{weights}: converted weights for {spec.name} not found. {how}")
    return check_bundled(weights)


def runtime_file(spec: Spec, suffix: str) -> Path | None:
    """The bundled file a runtime runs for a spec name, so a core install without torch runs every
    bundled model by name; checked against the bundle's sha256 list. For ``.tflite``: the verified
    builtin-ops re-export ``NAME_builtin.tflite`` where Google's file holds custom ops LiteRT has no
    kernel for (the face mesh with attention), else Google's original, else for a student the verified
    export shipped beside its ``.safetensors`` (``NAME.tflite``)."""
    if suffix == ".tflite":
        names = [f"{spec.name}_builtin.tflite", spec.tflite or f"{spec.name}.tflite"]
    else:
        names = [f"{spec.name}{suffix}"]
    for name in names:
        if (WEIGHTS_DIR / name).is_file():
            return check_bundled(WEIGHTS_DIR / name)
    return None


def open_module(model: str | Path, spec: str | Spec | None = None, trust_code: bool = False) -> tuple[Any, Spec, Path]:
    """``(PyTorch module, spec, source file)`` for a spec name, a ``.safetensors`` or a ``.tflite``
    (converted on load, every weight shape checked). ``trust_code``: a student file whose backbone is
    the user's own module may import it (:mod:`blazeport.models.backbones`); never needed for
    blazeport's own models."""
    require("torch", f"{model} on the torch backend")
    wanted = _as_spec(spec)
    path = _model_file(model)
    if path is None:
        path = spec_weights(spec_named(str(model)))
    if path.suffix not in get_runtime("torch").suffixes:  # .onnx, .pte: exported graphs, no PyTorch weights
        native = native_runtime(path)
        raise BlazeportError(f"{path}: a {path.suffix} file holds no PyTorch weights; it runs on the {native} backend. "
                             "Give the .safetensors or .tflite it was exported from.")
    if path.suffix == ".safetensors":
        module, stored = load_safetensors(path, trust_code)
        return module, wanted or stored, path
    known = spec_of_original(path)
    resolved = wanted or known
    if resolved is None:
        resolved = spec_from_metadata(tflite_metadata(path), path)
    if resolved is None:
        raise BlazeportError(f"{path}: not one of Google's original files and no blazeport.spec metadata; "
                             "pass --spec NAME (e.g. short_range) to say how to feed and decode it")
    module, _ = load_tflite(path, family=known.family if known else None)
    return module, resolved, path


def open_backend(model: str | Path, runtime: str = "torch", spec: str | Spec | None = None,
                 threads: int | None = None, device: str = "cpu", trust_code: bool = False) -> tuple[Spec, Any, Path]:
    """``(spec, backend, source file)``: ``model`` ready to run on ``runtime`` (see the registry in
    :mod:`blazeport.backends`), on ``device`` (``cpu``; ``cuda[:N]`` for the runtimes that take it).
    ``trust_code``: as for :func:`open_module` (exported .onnx/.tflite/.pte files hold no code to import)."""
    rt = get_runtime(runtime)
    check_device(rt, device)
    on_device = {"device": device} if device != "cpu" else {}
    path = _model_file(model)
    wanted = _as_spec(spec)
    if path is not None and path.suffix not in rt.suffixes:
        native = native_runtime(path)
        raise BlazeportError(f"{path}: a {path.suffix} file runs on the {native} backend (--backend {native})")
    if path is None and not rt.runs_spec_names:
        raise BlazeportError(f"the {runtime} backend runs a {'/'.join(rt.suffixes)} file; write one with "
                             f"`blazeport export {model} --format {runtime}`")
    if runtime == "torch":
        module, resolved, source = open_module(model, wanted, trust_code)
        return resolved, rt.backend(module, threads, **on_device), source
    if path is None:  # a spec name on a runtime: Google's original file, or the export a student ships with
        resolved = spec_named(str(model))
        path = runtime_file(resolved, rt.suffixes[0])
        if path is None:
            raise BlazeportError(f"{resolved.name} has no original .tflite and no bundled {rt.suffixes[0]} export; use "
                                 f"--backend torch, or `blazeport export {resolved.name} --format {runtime}`")
        return resolved, rt.backend(path, threads), path
    backend = rt.backend(path, threads, **on_device)  # reads and checks the file: clear errors for damaged ones
    resolved = wanted or spec_of_original(path) or _stored_spec(path, backend)
    if resolved is None:
        raise BlazeportError(f"{path}: no blazeport.spec metadata and not a known original file; "
                             "pass --spec NAME (e.g. short_range) to say how to feed and decode it")
    if backend.input_size != resolved.input_size:
        raise BlazeportError(f"{path}: input is {backend.input_size}px but spec {resolved.name} expects "
                             f"{resolved.input_size}px")
    return resolved, backend, path


def _stored_spec(path: Path, backend: Any) -> ModelSpec | None:
    meta = backend.metadata if hasattr(backend, "metadata") else tflite_metadata(path)
    return spec_from_metadata(meta, path)
