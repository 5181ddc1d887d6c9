"""One resolver: what a user typed becomes one :class:`ModelRef`, in one place.

A user names a model as a spec name or alias (``short_range``, ``front``), a ``.safetensors`` from
``blazeport convert`` or ``distill``, a ``.tflite`` (Google's original, recognised by its sha256
wherever it lies and whatever it is called, or a file from ``blazeport export``), an ``.onnx`` or a
``.pte``. :func:`resolve` turns any of these into a :class:`ModelRef` (the file, the spec, the
family, the runtime that reads it) and raises the one error for a name or file it cannot take;
:mod:`blazeport.modelfiles.loader` opens a reference on a runtime, and ``convert``, ``bench`` and
every command take it. A file is hashed once per version (:func:`blazeport.files.sha256_of`) and
parsed only by the runtime that opens it.

Which spec a file gets, in order: the spec the caller names (honoured on every runtime), the spec
whose original has the file's sha256, then the spec stored in the file (safetensors header, ONNX or
TFLite metadata), which only the opened file can tell (:func:`blazeport.modelfiles.loader.open_backend`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from blazeport.errors import BlazeportError
from blazeport.modelfiles.bundle import check_bundled
from blazeport.modelfiles.runtimes import MODEL_SUFFIXES, default_runtime, get_runtime, native_runtime
from blazeport.specs import WEIGHTS_DIR, LandmarkSpec, ModelSpec, spec_named, spec_of_original

__all__ = ["ModelRef", "Spec", "resolve", "runtime_file", "spec_weights"]

Spec = ModelSpec | LandmarkSpec  # a detector or a landmark model (face mesh, iris)


@dataclass(frozen=True)
class ModelRef:
    """A model as the user named it, resolved: everything known before any runtime opens it."""

    typed: str  # what the user typed
    path: Path | None  # the model file; None for a spec name, whose file depends on the runtime (file_for)
    given: Spec | None  # the spec the caller named (--spec): honoured on every runtime
    original: Spec | None  # the spec whose Google original has this file's bytes (None for every other file)
    named: Spec | None  # the spec a spec name picked (None for a file)
    runtime: str  # the runtime that reads the file as it is; for a spec name, the best one installed

    @property
    def spec(self) -> Spec | None:
        """The spec known before opening: the caller's, the original's or the name's. None: only the file's
        stored spec can tell (read when a runtime opens it)."""
        return self.given or self.original or self.named

    @property
    def family(self) -> str | None:
        """The architecture family known before opening: an original's or a named spec's."""
        known = self.original or self.named
        return known.family if known is not None else None

    @property
    def label(self) -> str:
        """A short name for tables and file names: the file's stem or the spec's name."""
        return self.path.stem if self.path is not None else self.spec.name  # type: ignore[union-attr]

    def file_for(self, runtime: str) -> Path:
        """The file ``runtime`` opens for this model, or the one error that says which runtime or file would do.

        A file must be one the runtime reads (a ``.tflite`` on torch is converted on load). A spec name
        on torch is its converted ``.safetensors``; on another runtime the bundled file for it
        (:func:`runtime_file`: Google's original, or the verified export a student ships with)."""
        rt = get_runtime(runtime)
        if self.path is not None:
            if self.path.suffix not in rt.suffixes:
                native = native_runtime(self.path)
                if runtime == "torch":
                    raise BlazeportError(f"{self.path}: a {self.path.suffix} file holds no PyTorch weights; it runs on "
                                         f"the {native} backend. Give the .safetensors or .tflite it was exported from.")
                raise BlazeportError(f"{self.path}: a {self.path.suffix} file runs on the {native} backend "
                                     f"(--backend {native})")
            return self.path
        spec = self.named
        assert spec is not None
        if runtime == "torch":
            return spec_weights(spec)
        if not rt.runs_spec_names:
            raise BlazeportError(f"the {runtime} backend runs a {'/'.join(rt.suffixes)} file; write one with "
                                 f"`blazeport export {self.typed} --format {runtime}`")
        path = runtime_file(spec, rt.suffixes[0])
        if path is None:
            raise BlazeportError(f"{spec.name} has no original .tflite and no bundled {rt.suffixes[0]} export; use "
                                 f"--backend torch, or `blazeport export {spec.name} --format {runtime}`")
        return path


def resolve(model: str | Path | ModelRef, spec: str | Spec | None = None) -> ModelRef:
    """``model`` (a spec name or alias, or a model file) as a :class:`ModelRef`; ``spec`` (a name or a
    spec) overrides the spec it would get. A model that is neither a known name nor a readable model
    file is one error that says what would be."""
    wanted = spec_named(spec) if isinstance(spec, str) else spec
    if isinstance(model, ModelRef):
        return model if wanted is None else replace(model, given=wanted)
    path = Path(model)
    if path.suffix in MODEL_SUFFIXES:
        if not path.is_file():
            raise BlazeportError(f"{path}: no such model file")
        check_bundled(path)
        original = spec_of_original(path) if path.suffix == ".tflite" else None  # Google ships .tflite only
        return ModelRef(str(model), path, wanted, original, None, native_runtime(path) or "torch")
    if path.suffix and path.is_file():
        raise BlazeportError(f"{path}: not a model file blazeport reads ({', '.join(MODEL_SUFFIXES)}); "
                             "give one of those or a model name (`blazeport models` lists them)")
    return ModelRef(str(model), None, wanted, None, spec_named(str(model)), default_runtime(str(model)))


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

