"""What a run measures: MODEL arguments resolved into targets, the baselines added beside them,
and the exports made (and cached) on the fly.

A *target* is one file on one backend. Every model is opened through :mod:`blazeport.modelfiles.loader`
(``blazeport.load`` for a file a runtime reads as it is; :func:`~blazeport.modelfiles.loader.open_module` for
the module a torch target loads and re-exports are made from), so a spec name whose converted
weights are missing gets the loader's one error. Facts come from the spec, never from a name: a
student's reference original is its ``teacher``, an original is its own reference, and the
MediaPipe pipeline that runs an original is its ``mediapipe_model_selection``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blazeport.export
from blazeport.bench.counts import Counts, graph_counts, module_counts, tflite_counts
from blazeport.bench.mediapipe import MEDIAPIPE
from blazeport.errors import BlazeportError
from blazeport.files import sha256_of
from blazeport.modelfiles.loader import open_backend, open_module, resolve
from blazeport.modelfiles.metadata import tflite_metadata
from blazeport.modelfiles.runtimes import MODEL_SUFFIXES, RUNTIMES
from blazeport.modelfiles.weights import save_safetensors
from blazeport.pipeline.detector import load
from blazeport.specs import (
    SPECS,
    WEIGHTS_DIR,
    LandmarkSpec,
    ModelSpec,
    spec_named,
    student_spec,
)
from blazeport.tflite import read_tflite

ORIGINAL = "tflite-original"  # Google's original .tflite in LiteRT: the bench's own pseudo-backend
BACKENDS = (*RUNTIMES, ORIGINAL)  # the --backend labels
DEFAULT_TEACHER = "short_range"  # whose input, anchors and head an untrained student gets without --spec


@dataclass
class Target:
    """One file on one backend; a row per thread count and mode."""

    model: str  # the row's model label
    backend: str  # one of BACKENDS, or MEDIAPIPE
    path: str | None  # the file the runtime loads (None: MediaPipe's own)
    spec: ModelSpec | LandmarkSpec  # a landmark model (face mesh, iris) is timed model only
    reference: ModelSpec | LandmarkSpec | None  # the original this model is compared with
    baseline: bool = False  # added by the bench, not asked for
    params: int | None = None
    macs: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None  # a blazeport export's precision (its blazeport.modelfiles.weights metadata: int8, float16, ...)
    trust_code: bool = False  # --trust-code: the child may import a student file's own backbone module

    @property
    def runtime(self) -> str:
        return "tflite" if self.backend == ORIGINAL else self.backend

    def key(self) -> tuple[str, str | None]:
        return self.backend, self.path if self.path is None else str(Path(self.path).resolve())


@dataclass
class _Model:
    """One MODEL argument: its label, spec, the files it runs as they are, and what torch opens."""

    label: str
    stem: str  # names its cached exports
    spec: ModelSpec | LandmarkSpec
    files: dict[str, Path]  # backend -> a file that backend runs as it is
    torch_model: str | Path | None  # what open_module opens (None: no PyTorch weights, e.g. an .onnx)
    spec_arg: str | None = None  # --spec, for a file
    module: Any = None  # the PyTorch module, once opened
    source: Path | None = None  # the file it was opened from: what torch loads, what exports are made from
    weights: str | None = None  # blazeport.modelfiles.weights of an exported file (int8 files get their own latency target)


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def reference_of(spec: ModelSpec | LandmarkSpec) -> ModelSpec | LandmarkSpec | None:
    """The original a model is compared with: the teacher its spec names (a student), else the model
    itself when it is an original (it has a Google ``.tflite``) that LiteRT can run: not the attention
    mesh, whose MediaPipe custom ops LiteRT has no kernels for."""
    teacher = getattr(spec, "teacher", None)  # landmark specs have none
    if teacher is not None:
        return SPECS.get(teacher)
    return spec if spec.tflite and runs_on_litert(spec) else None


def original_file(spec: ModelSpec | LandmarkSpec) -> Path | None:
    return WEIGHTS_DIR / spec.tflite if spec.tflite else None


def runs_on_litert(spec: ModelSpec | LandmarkSpec) -> bool:
    """Whether the spec's original file runs in LiteRT as it is (no custom ops it lacks kernels for)."""
    original = original_file(spec)
    return original is None or not original.is_file() or not read_tflite(original).custom_ops()


def cached_export(source: Path, fmt: str, cache: Path, stem: str, log: Any, trust_code: bool = False) -> Path:
    """``blazeport export`` of ``source`` into ``cache``, named by the source's sha256 (reused when
    present; a new source, e.g. retrained weights, gets a new file). Raises BlazeportError."""
    f = blazeport.export.get_format(fmt)
    # a format that can take a dynamic batch gets one (ONNX): the folder bench's --batch then runs one
    # forward per batch there, as on torch; at batch 1 it runs like the fixed-batch file
    dynamic = f.dynamic_batch
    out = cache / f"{stem}-{sha256_of(source)[:12]}{'-dynbatch' if dynamic else ''}{f.suffix}"
    if out.is_file():
        return out
    log(f"exporting {source} -> {out} ({fmt}{', dynamic batch' if dynamic else ''}, verified; once, then cached)")
    report = blazeport.export.export(source, fmt, out, dynamic_batch=dynamic, trust_code=trust_code)
    if not report["ok"]:
        out.unlink(missing_ok=True)
        raise BlazeportError(f"{out}: the exported file failed verification against PyTorch; not benchmarked")
    return out


def untrained_student(architecture: str, teacher: ModelSpec, cache: Path) -> Path:
    """A seeded, untrained student with ``teacher``'s head, saved once to the cache (for timing:
    weights do not matter). Its spec is :func:`~blazeport.specs.student_spec` of the teacher."""
    import torch

    from blazeport.models import architecture_name, build_student  # torch: the bench runs without it

    short = architecture_name(architecture)
    tag = "" if short == architecture else "_" + hashlib.sha1(architecture.encode()).hexdigest()[:8]  # options differ
    name = f"{teacher.name}_{short}{tag}_untrained"
    out = cache / f"{name}.safetensors"
    if not out.is_file():
        torch.manual_seed(0)
        module = build_student(architecture, teacher).eval()
        spec = student_spec(teacher, architecture, module.family, name=name,
                            description=f"untrained {architecture} student of {teacher.name} (benchmark only)")
        save_safetensors(module, spec, out, extra={"untrained": "true"})
    return out


def _is_student(arg: str, has_torch: bool) -> bool:
    if not has_torch or arg in SPECS:
        return False
    from blazeport.models import REGISTERED  # torch: the bench runs without it

    head = arg.split(",")[0]
    return head in REGISTERED or ":" in head  # timm:NAME or package.module:factory


def _describe(arg: str, spec_name: str | None, cache: Path, has_torch: bool, notes: list[str],
              trust_code: bool = False) -> _Model:
    """What one MODEL argument is: a model file, an untrained student architecture, or a spec name."""
    path = Path(arg)
    if path.suffix in MODEL_SUFFIXES:
        return _describe_file(path, spec_name, has_torch, trust_code)
    if _is_student(arg, has_torch):
        weights = untrained_student(arg, spec_named(spec_name or DEFAULT_TEACHER, detectors_only=True), cache)
        module, spec, source = open_module(weights)
        label = f"{arg} (untrained)"
        notes.append(f"{label}: freshly initialised weights (seed 0): latency only, it detects nothing")
        return _Model(label, arg, spec, {}, weights, module=module, source=source)
    spec = spec_named(arg)  # a detector, or a landmark model (model-only rows)
    original = original_file(spec)
    files = {ORIGINAL: original} if original is not None and original.is_file() and runs_on_litert(spec) else {}
    if original is not None and not runs_on_litert(spec):
        notes.append(f"{arg}: no {ORIGINAL} row: LiteRT cannot run {spec.tflite} (MediaPipe's custom ops); its rows are "
                     "the converted model and its exports")
    return _Model(arg, arg, spec, files, arg)


def _describe_file(path: Path, spec_name: str | None, has_torch: bool, trust_code: bool = False) -> _Model:
    ref = resolve(path, spec_name)  # the file checked, hashed once; its spec if the caller or its bytes say
    if path.suffix == ".safetensors":
        if not has_torch:
            raise BlazeportError(f"{path}: a .safetensors model needs torch (pip install -e .)")
        module, spec, source = open_module(ref, trust_code=trust_code)
        return _Model(path.stem, path.stem, spec, {}, path, spec_name, module, source)
    runtime, original = ref.runtime, ref.original
    if isinstance(original, LandmarkSpec):  # Google's landmark file: the original, converted on load for torch
        if not runs_on_litert(original):
            raise BlazeportError(f"{path}: LiteRT cannot run this file (MediaPipe's custom ops); bench "
                                 f"{original.name} (its converted model and exports) instead")
        return _Model(original.name, original.name, original, {ORIGINAL: path}, path, spec_name)
    known = ref.spec or open_backend(ref, runtime)[0]  # else the spec stored in the file
    if isinstance(known, LandmarkSpec):  # an exported landmark model: model-only rows on its runtime
        return _Model(path.stem, path.stem, known, {runtime: path}, None)
    detector = load(ref, backend=runtime)  # the loader, and the file's outputs checked against the spec
    spec = detector.spec
    if original is not None:  # one of Google's files: it runs as the original, and torch converts it on load
        return _Model(original.name, original.name, spec, {ORIGINAL: path}, path, spec_name)
    meta = getattr(detector.backend, "metadata", None) or (tflite_metadata(path) if runtime == "tflite" else {})
    return _Model(path.stem, path.stem, spec, {runtime: path}, None, weights=meta.get("blazeport.weights"))


def _wanted(m: _Model, backends: set[str]) -> tuple[list[str], list[str]]:
    """(backends to run in BACKENDS order, those of them made from the PyTorch module)."""
    wanted = set(backends)
    if "tflite" in wanted and ORIGINAL in m.files:
        wanted.add(ORIGINAL)  # `tflite` on an original means the original and the re-export
    made = ("torch", *blazeport.export.FORMATS) if m.torch_model is not None else ()
    runnable = [b for b in BACKENDS if b in wanted and (b in m.files or b in made)]
    if not runnable:
        can = sorted({*m.files, *made})
        raise BlazeportError(f"{m.label}: runs on {', '.join(can)}, not on {', '.join(sorted(backends))}")
    return runnable, [b for b in runnable if b not in m.files]


def _from_torch(m: _Model, backend: str, cache: Path, notes: list[str], log: Any, trust_code: bool = False) -> Path | None:
    """The file a backend runs that is made from the module: its weights (torch) or a cached export."""
    if backend == "torch":
        return m.source
    try:
        return cached_export(m.source, backend, cache, m.stem, log, trust_code)
    except BlazeportError as exc:
        notes.append(f"{m.label}: {backend} skipped: {exc}")
        return None


def _model_targets(m: _Model, backends: set[str], cache: Path, has_torch: bool, notes: list[str],
                   log: Any, trust_code: bool = False) -> list[Target]:
    runnable, made = _wanted(m, backends)
    if made and has_torch and m.module is None:
        # the loader's error if weights are missing
        m.module, m.spec, m.source = open_module(m.torch_model, m.spec_arg, trust_code)
    counts: Counts = module_counts(m.module, m.spec) if m.module is not None else graph_counts(m.files.values())
    out = []
    for backend in runnable:
        if backend in made and not has_torch:
            notes.append(f"{m.label}: torch skipped (torch is not importable here)" if backend == "torch"
                         else f"{m.label}: {backend} export skipped (exporting needs torch)")
            continue
        path = _from_torch(m, backend, cache, notes, log, trust_code) if backend in made else m.files[backend]
        if path is None:
            continue
        t = Target(m.label, backend, str(path), m.spec, reference_of(m.spec), params=counts[0], macs=counts[1],
                   weights=m.weights if backend in m.files else None, trust_code=trust_code)
        if backend == "torch" and path.suffix == ".tflite":
            t.extra["note"] = "converted from the .tflite on load"
        out.append(t)
    return out


def resolve_targets(models: list[str], backends: set[str], cache: Path, spec_name: str | None,
                    notes: list[str], log: Any, trust_code: bool = False) -> list[Target]:
    """Turn MODEL arguments and ``--backend`` into targets, exporting on the fly where needed.
    ``spec_name`` (``--spec``) is the spec of a model file, and the teacher of an untrained student.
    ``trust_code`` (``--trust-code``): a student file whose backbone is the user's own module may
    import it, here and in every measuring child."""
    has_torch = torch_available()
    targets: list[Target] = []
    for arg in models:
        targets += _model_targets(_describe(arg, spec_name, cache, has_torch, notes, trust_code), backends, cache,
                                  has_torch, notes, log, trust_code)
    if not targets:
        raise BlazeportError("nothing to benchmark (see the notes above)")
    return targets


def add_baselines(targets: list[Target], e2e: bool, mediapipe_python: str | None, notes: list[str]) -> list[Target]:
    """The original ``.tflite`` of every reference (LiteRT, XNNPACK), and MediaPipe for e2e."""
    have = {t.key() for t in targets}
    out = list(targets)
    refs = {t.reference.name: t.reference for t in targets if t.reference is not None}
    for ref in refs.values():
        original = original_file(ref)
        if original is None or not original.is_file():
            notes.append(f"baseline {ref.name}: {original or 'no original .tflite'} not found, no original to compare with")
        elif (ORIGINAL, str(original.resolve())) not in have:
            params, macs = tflite_counts(original)
            out.append(Target(ref.name, ORIGINAL, str(original), ref, ref, baseline=True, params=params, macs=macs))
        if e2e and isinstance(ref, ModelSpec):  # a landmark model is timed model only
            out += mediapipe_baseline(ref, mediapipe_python, notes)
    return out


def mediapipe_baseline(ref: ModelSpec, python: str | None, notes: list[str]) -> list[Target]:
    selection = ref.mediapipe_model_selection
    if selection is None:
        runs = ", ".join(s.name for s in SPECS.values() if s.mediapipe_model_selection is not None)
        notes.append(f"baseline {ref.name}: no MediaPipe baseline: no MediaPipe pipeline runs {ref.tflite or 'it'} "
                     f"(its spec names no mediapipe_model_selection; MediaPipe's run {runs})")
        return []
    if python is None:
        return []
    return [Target(ref.name, MEDIAPIPE, None, ref, ref, baseline=True,
                   extra={"model_selection": selection, "python": python})]
