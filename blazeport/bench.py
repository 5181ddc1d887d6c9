"""Latency benchmarks a mobile engineer can trust: ``blazeport bench``.

What is measured, and how:

- **Every configuration in its own process** (model x backend x threads x mode): a child of the
  chosen interpreter (``python -m blazeport.bench --child``, config on stdin, one JSON line back).
  Peak RSS and thread settings are then the configuration's own, and nothing a previous runtime
  loaded or spun up stays around. Peak RSS is ``VmHWM`` (Linux; ``ru_maxrss`` survives ``exec``
  and would report the parent's peak) or ``getrusage(RUSAGE_SELF).ru_maxrss`` elsewhere; both are in
  the JSON. The child sets ``OMP_NUM_THREADS``/``cv2.setNumThreads`` and the runtime's thread count
  (LiteRT ``num_threads``, onnxruntime ``intra_op_num_threads``, ``torch.set_num_threads``) to N.
  ``--rounds R`` splits the runs over R processes per configuration, run round-robin with every
  other round reversed, so a slow spell of a shared host hits every configuration alike.
- **Times**: ``time.perf_counter_ns``. ``import`` (the runtime module), ``init`` (load the file and
  allocate: interpreter / session / module ready), ``first`` (the first call), then ``--warmup``
  untimed calls, then ``--runs`` timed calls: min, p50, p90, p99, mean, std, max, and the raw
  per-run timings in the JSON. CPU time per run (user + system) shows how many cores a runtime
  really kept busy.
- **Model only** (default): the backend call of the pipeline on a ready letterboxed input
  ``(1, S, S, 3)`` float32 (set input, invoke, read outputs back as numpy), the same call for
  torch, onnxruntime and LiteRT.
- **End to end** (``--e2e``): exactly :meth:`blazeport.detector.Detector.detect` on an image
  *file*, with each stage timed inside the loop: ``read`` (file -> RGB with OpenCV),
  ``preprocess`` (MediaPipe letterbox), ``infer`` (backend), ``postprocess`` (decode, score
  threshold, weighted NMS, un-letterbox). Post-processing's share is ``p50(postprocess) /
  p50(infer)``.
- **Baselines in the same run**: Google's original ``.tflite`` in LiteRT with XNNPACK (backend
  ``tflite-original``) for every model that has one or descends from one (a student is compared
  with its teacher's original), and, with ``--e2e``, MediaPipe's own
  ``mp.solutions.face_detection.FaceDetection(model_selection=0|1).process(rgb)`` on the same
  file, reading the file included exactly as ours (``read_image``: ``cv2.imdecode`` + BGR->RGB).
  ``mp.solutions`` exposes no thread count: its InferenceCalculator uses XNNPACK with MediaPipe's
  default (1 thread off mobile; the CPU-time column shows it), so 1 thread is the stock object and
  N > 1 the same graph with ``xnnpack.num_threads`` set to N (:func:`mediapipe_face_detection`).
  MediaPipe runs in any interpreter that has it (``--mediapipe-python``, e.g. a separate venv with
  ``mediapipe==0.10.14``).

Backends (the ``--backend`` labels): ``torch`` (converted or student ``.safetensors``), ``onnx``
(the file ``blazeport export`` writes, made on the fly into ``--cache`` for a spec name),
``tflite`` (a re-export by ``blazeport export``; for an original file or a spec name with one,
``tflite`` also runs the original), ``tflite-original`` (Google's file only).

Only torch configurations import torch: ``blazeport bench x.tflite --backend tflite`` runs on a
board with numpy, OpenCV and ``ai-edge-litert`` alone (params and MACs are then counted from the
TFLite graph). ``--android`` prints the equivalent ``benchmark_model`` command lines instead.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import hashlib
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from blazeport.errors import BlazeportError
from blazeport.files import check_output, write_atomic
from blazeport.specs import SPECS, ModelSpec, get_spec

BACKENDS = ("torch", "onnx", "tflite", "tflite-original")
ORIGINAL = "tflite-original"
MEDIAPIPE = "mediapipe"
RUNTIMES = {"torch": "torch", "onnx": "onnx", "tflite": "tflite", ORIGINAL: "tflite", MEDIAPIPE: "mediapipe"}
# which mp.solutions.face_detection model runs the same task as an original (full range: the sparse file)
MEDIAPIPE_SELECTION = {"short_range": 0, "full_range": 1, "full_range_sparse": 1}
STAGES = ("read", "preprocess", "infer", "postprocess")
MP_STAGES = ("read", "process")
RESULT_TAG = "BLAZEPORT_BENCH_RESULT "
DEFAULT_CACHE = Path("runs") / "bench-cache"
LIBRARIES = {  # distribution names, read with importlib.metadata (nothing is imported)
    "torch": "torch", "onnxruntime": "onnxruntime", "ai-edge-litert": "ai-edge-litert", "numpy": "numpy",
    "opencv": ("opencv-python-headless", "opencv-python", "opencv-contrib-python"), "rich": "rich",
}
ANDROID_DIR = "/data/local/tmp"
ANDROID_TOOL = ("https://storage.googleapis.com/tensorflow-nightly-public/prod/tensorflow/release/lite/tools/nightly/"
                "latest/android_aarch64_benchmark_model")

# ----------------------------------------------------------------------------------------------
# What runs: targets (a model file on a backend) and configurations (target x threads x mode)


@dataclass
class Target:
    model: str  # the row's model label
    backend: str  # one of BACKENDS, or MEDIAPIPE
    path: str | None  # the file the runtime loads (None: MediaPipe's own)
    spec: ModelSpec
    reference: str | None  # the original spec this model is compared with
    baseline: bool = False  # added by the bench, not asked for
    params: int | None = None
    macs: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def runtime(self) -> str:
        return RUNTIMES[self.backend]

    def key(self) -> tuple[str, str | None]:
        return self.backend, self.path if self.path is None else str(Path(self.path).resolve())


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def reference_spec(spec: ModelSpec) -> ModelSpec | None:
    """The original this model stands in for: itself if it is one, else the original with the same
    input and anchors (a student distilled from short range -> short_range)."""
    if spec.tflite and spec.name in SPECS:
        return SPECS[spec.name]
    for s in SPECS.values():
        if s.tflite and s.input_size == spec.input_size and s.anchors == spec.anchors:
            return s
    return None


def _sha12(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def cached_export(source: Path, fmt: str, cache: Path, stem: str, log: Any) -> Path:
    """``blazeport export`` of ``source`` into ``cache``, named by the source's sha256 (reused when
    present; a new source, e.g. retrained weights, gets a new file). Raises BlazeportError."""
    from blazeport.export import export, get_format

    f = get_format(fmt)
    out = cache / f"{stem}-{_sha12(source)}{f.suffix}"
    if out.is_file():
        return out
    log(f"exporting {source} -> {out} ({fmt}, verified; once, then cached)")
    report = export(source, fmt, out)
    if not report["ok"]:
        out.unlink(missing_ok=True)
        raise BlazeportError(f"{out}: the exported file failed verification against PyTorch; not benchmarked")
    return out


def _untrained_student(name: str, cache: Path) -> Path:
    """A seeded, untrained student saved once to the cache (for timing: weights do not matter)."""
    import torch

    from blazeport.convert import save_safetensors
    from blazeport.models import build_student
    from blazeport.specs import SHORT_RANGE_RESNET

    out = cache / f"{name}-untrained.safetensors"
    if not out.is_file():
        torch.manual_seed(0)
        module = build_student(name).eval()
        spec = dataclasses.replace(SHORT_RANGE_RESNET, name=name, architecture=name,
                                   description=f"untrained {name} student (benchmark only)")
        save_safetensors(module, spec, out, extra={"untrained": "true"})
    return out


def tflite_counts(path: str | Path) -> tuple[int, int]:
    """(params, MACs) from a ``.tflite`` graph, counted like :mod:`blazeport.profile` counts a module:
    weights and biases of CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED (and PRELU slopes); MACs of
    those three ops. Needs no torch (a board with LiteRT only)."""
    from blazeport.tflite import read_tflite

    model = read_tflite(path)
    params = macs = 0
    for op in model.ops:
        if op.type not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "PRELU"):
            continue
        consts = [model.tensor(i) for i in op.inputs[1:] if i >= 0 and model.tensor(i).data is not None]
        params += sum(int(np.prod(t.shape)) for t in consts)
        if op.type == "PRELU" or not consts:
            continue
        w, out = model.tensor(op.inputs[1]), model.tensor(op.outputs[0])
        out_elems = int(np.prod(out.shape[1:]))
        if op.type == "CONV_2D":  # (O, kh, kw, I)
            macs += out_elems * int(np.prod(w.shape[1:]))
        elif op.type == "DEPTHWISE_CONV_2D":  # (1, kh, kw, C * M)
            macs += out_elems * int(w.shape[1] * w.shape[2])
        else:  # (O, I)
            macs += out_elems * int(w.shape[-1])
    return params, macs


def onnx_counts(path: str | Path) -> tuple[int | None, int | None]:
    """(params, MACs) of an ``.onnx`` file: initializer sizes, and Conv/Gemm MACs from inferred shapes."""
    try:
        import onnx
        from onnx import shape_inference
    except ImportError:
        return None, None
    model = shape_inference.infer_shapes(onnx.load(str(path)))
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    casts = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Cast" and n.input[0] in inits}
    shapes = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
              for v in [*model.graph.value_info, *model.graph.output]}
    params = sum(int(np.prod(d)) for d in inits.values())
    macs = 0
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2:
            continue
        w = inits.get(casts.get(n.input[1], n.input[1]))
        out = shapes.get(n.output[0])
        if w is None or not out:
            continue
        out_elems = int(np.prod(out[1:]))
        macs += out_elems * (int(np.prod(w[1:])) if n.op_type == "Conv" else int(w[0] if n.op_type == "MatMul" else w[-1]))
    return params, macs


def _module_counts(source: Path) -> tuple[int, int] | None:
    if not _torch_available():
        return None
    from blazeport.convert import load_tflite
    from blazeport.profile import count_macs, count_params
    from blazeport.weights import load_safetensors

    module, spec = (load_tflite(source)[0], None) if source.suffix == ".tflite" else load_safetensors(source)
    size = spec.input_size if spec is not None else _tflite_input_size(source)
    return count_params(module), count_macs(module, size)


def _tflite_input_size(path: Path) -> int:
    from blazeport.tflite import read_tflite

    m = read_tflite(path)
    return int(m.tensor(m.inputs[0]).shape[1])


def resolve_targets(models: list[str], backends: set[str], cache: Path, spec_name: str | None,
                    notes: list[str], log: Any) -> list[Target]:
    """Turn MODEL arguments and ``--backend`` into targets, exporting on the fly where needed."""
    from blazeport.detector import load
    from blazeport.specs import WEIGHTS_DIR, spec_for_file

    has_torch = _torch_available()
    students: tuple[str, ...] = ()
    if has_torch:
        from blazeport.models import STUDENTS

        students = tuple(STUDENTS)
    targets: list[Target] = []
    for arg in models:
        path = Path(arg)
        is_file_arg = path.suffix in (".onnx", ".tflite", ".safetensors")
        if is_file_arg and not path.is_file():
            raise BlazeportError(f"{path}: no such model file")
        own: dict[str, Path] = {}  # backend -> file the model itself runs as
        export_source: Path | None = None  # what onnx / tflite re-exports are made from
        label = stem = path.stem if is_file_arg else arg
        if path.suffix == ".onnx":
            spec = load(path, backend="onnx", spec=spec_name).spec
            own["onnx"] = path
        elif path.suffix == ".tflite":
            original = spec_for_file(path)
            if original is not None:
                spec, label, stem = original, original.name, original.name
                own[ORIGINAL] = own["torch"] = export_source = path
            else:
                spec = load(path, backend="tflite", spec=spec_name).spec
                own["tflite"] = path
        elif path.suffix == ".safetensors":
            if not has_torch:
                raise BlazeportError(f"{path}: a .safetensors model needs torch (pip install -e .)")
            from blazeport.weights import load_safetensors

            spec = load_safetensors(path)[1]
            own["torch"] = export_source = path
        elif arg in students and arg not in SPECS:
            if not has_torch:
                raise BlazeportError(f"{arg}: an untrained student needs torch (pip install -e .)")
            export_source = own["torch"] = _untrained_student(arg, cache)
            spec = dataclasses.replace(get_spec("short_range_resnet"), name=arg, architecture=arg)
            label = f"{arg} (untrained)"
            notes.append(f"{label}: freshly initialised weights (seed 0): latency only, it detects nothing")
        else:
            spec = get_spec(arg)
            weights = WEIGHTS_DIR / f"{spec.name}.safetensors"
            original = WEIGHTS_DIR / spec.tflite if spec.tflite else None
            if original is not None and original.is_file():
                own[ORIGINAL] = original
            if weights.is_file():
                own["torch"] = export_source = weights
            elif original is not None and original.is_file():
                own["torch"] = export_source = original  # converted on load
            else:
                hint = ("distill one (`blazeport distill`), or bench the untrained architecture `resnet`"
                        if spec.tflite is None else f"run `blazeport convert weights/{spec.tflite}`")
                raise BlazeportError(f"{weights}: weights for {spec.name} not found; {hint}")
        wanted = set(backends)
        if "tflite" in wanted and ORIGINAL in own:
            wanted.add(ORIGINAL)  # `tflite` on an original means the original and the re-export
        if export_source is not None:
            for fmt in ("onnx", "tflite"):
                if fmt in wanted and fmt not in own:
                    own[fmt] = export_source  # exported (and cached) in the loop below
        runnable = {b: p for b, p in own.items() if b in wanted}
        if not runnable:
            raise BlazeportError(f"{arg}: runs on {', '.join(sorted(own))}, not on {', '.join(sorted(backends))}")
        ref = reference_spec(spec)
        counts = None
        if export_source is not None:
            counts = _module_counts(export_source)
        if counts is None:
            for b in ("tflite", ORIGINAL, "onnx"):
                p = runnable.get(b) or own.get(b)
                if p is not None and p.suffix == ".tflite":
                    counts = tflite_counts(p)
                    break
                if p is not None and p.suffix == ".onnx":
                    counts = onnx_counts(p)
                    break
        for backend in BACKENDS:
            if backend not in runnable:
                continue
            p = runnable[backend]
            if backend == "torch" and not has_torch:
                notes.append(f"{label}: torch skipped (torch is not importable here)")
                continue
            if backend in ("onnx", "tflite") and p is export_source:
                if not has_torch:
                    notes.append(f"{label}: {backend} export skipped (exporting needs torch)")
                    continue
                try:
                    p = cached_export(export_source, backend, cache, stem, log)
                except BlazeportError as exc:
                    notes.append(f"{label}: {backend} skipped: {exc}")
                    continue
            t = Target(label, backend, str(p), spec, ref.name if ref else None, params=counts[0] if counts else None,
                       macs=counts[1] if counts else None)
            if backend == "torch" and p.suffix == ".tflite":
                t.extra["note"] = "converted from the .tflite on load"
            targets.append(t)
    if not targets:
        raise BlazeportError("nothing to benchmark (see the notes above)")
    return targets


def add_baselines(targets: list[Target], e2e: bool, mediapipe_python: str | None, notes: list[str]) -> list[Target]:
    """The original ``.tflite`` of every reference spec (LiteRT, XNNPACK), and MediaPipe for e2e."""
    from blazeport.specs import WEIGHTS_DIR

    have = {t.key() for t in targets}
    out = list(targets)
    refs = dict.fromkeys(t.reference for t in targets if t.reference)
    for ref in refs:
        spec = SPECS[ref]
        original = WEIGHTS_DIR / spec.tflite
        key = (ORIGINAL, str(original.resolve()))
        if not original.is_file():
            notes.append(f"baseline {ref}: {original} not found, no original to compare with")
        elif key not in have:
            params = macs = None
            src = next((t for t in targets if t.reference == ref and t.model == ref), None)
            if src is not None:
                params, macs = src.params, src.macs
            else:
                params, macs = tflite_counts(original)
            out.append(Target(ref, ORIGINAL, str(original), spec, ref, baseline=True, params=params, macs=macs))
            have.add(key)
        if e2e and ref in MEDIAPIPE_SELECTION:
            if mediapipe_python is None:
                continue
            sel = MEDIAPIPE_SELECTION[ref]
            if (MEDIAPIPE, ref) in {(t.backend, t.model) for t in out}:
                continue
            t = Target(ref, MEDIAPIPE, None, spec, ref, baseline=True)
            t.extra = {"model_selection": sel, "python": mediapipe_python}
            out.append(t)
    return out


def find_mediapipe_python(choice: str | None) -> tuple[str | None, str]:
    """The interpreter that runs the MediaPipe baseline, and why (or why not)."""
    if choice == "none":
        return None, "MediaPipe baseline off (--mediapipe-python none)"
    candidates = [choice] if choice else [sys.executable]
    for py in candidates:
        if not Path(py).exists():
            raise BlazeportError(f"{py}: --mediapipe-python is not an interpreter path")
        probe = subprocess.run([py, "-c", "import mediapipe, sys; print(mediapipe.__version__)"],
                               capture_output=True, text=True, timeout=120)
        if probe.returncode == 0:
            return py, f"MediaPipe {probe.stdout.strip()} via {py}"
        if choice:
            raise BlazeportError(f"{py} cannot import mediapipe: {probe.stderr.strip().splitlines()[-1:]}")
    return None, ("MediaPipe baseline skipped: mediapipe is not importable here; pass --mediapipe-python PATH "
                  "(an interpreter with mediapipe==0.10.14)")


# ----------------------------------------------------------------------------------------------
# The child: one configuration, measured in its own process


def _stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms, np.float64)
    if a.size == 0:
        return {}
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"min": float(a.min()), "p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(a.mean()),
            "std": float(a.std()), "max": float(a.max())}


def _ms(ns: int) -> float:
    return round(ns / 1e6, 5)


def _cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_rss_mb() -> tuple[float, float]:
    """(peak RSS of this process image, ``ru_maxrss``), MB.

    On Linux ``ru_maxrss`` survives ``execve``: a child spawned by a parent that had torch and an
    exporter loaded (800 MB) reports the parent's peak. ``VmHWM`` in ``/proc/self/status`` is the
    high-water mark of the current address space only, i.e. this configuration's own peak; it is
    used where it exists, ``ru_maxrss`` elsewhere (macOS: bytes, Linux: KiB)."""
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    peak = maxrss
    with contextlib.suppress(OSError, ValueError, IndexError):  # no /proc (macOS): ru_maxrss stands
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
                break
    return round(peak, 1), round(maxrss, 1)


def _build_backend(cfg: dict[str, Any]) -> tuple[Any, float, float]:
    """(backend, import ms, init ms) for torch / onnx / tflite."""
    runtime, path, threads = cfg["runtime"], Path(cfg["path"]), cfg["threads"]
    t0 = time.perf_counter_ns()
    if runtime == "torch":
        import torch

        from blazeport.convert import load_tflite
        from blazeport.weights import load_safetensors
    elif runtime == "onnx":
        import onnxruntime  # noqa: F401
    else:
        import ai_edge_litert.interpreter  # noqa: F401
    t1 = time.perf_counter_ns()
    from blazeport.backends import OnnxBackend, TFLiteBackend, TorchBackend

    if runtime == "torch":
        torch.set_num_interop_threads(1)
        module = load_tflite(path)[0] if path.suffix == ".tflite" else load_safetensors(path)[0]
        backend = TorchBackend(module, threads)
    elif runtime == "onnx":
        backend = OnnxBackend(path, threads)
    else:
        backend = TFLiteBackend(path, threads)
    t2 = time.perf_counter_ns()
    return backend, _ms(t1 - t0), _ms(t2 - t1)


def _timed_loop(step: Any, runs: int, warmup: int) -> tuple[float, list[int], float]:
    """first call (ns), per-run ns, CPU ms per run."""
    t0 = time.perf_counter_ns()
    step()
    first = time.perf_counter_ns() - t0
    for _ in range(warmup):
        step()
    gc.collect()
    times = []
    c0 = _cpu_seconds()
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        step()
        times.append(time.perf_counter_ns() - t0)
    cpu = (_cpu_seconds() - c0) / max(runs, 1) * 1e3
    return first, times, cpu


def run_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """Measure one configuration in this process (called in a fresh child)."""
    import cv2

    threads = int(cfg["threads"])
    cv2.setNumThreads(threads)
    runs, warmup, image = int(cfg["runs"]), int(cfg["warmup"]), cfg["image"]
    out: dict[str, Any] = {"pid": os.getpid()}
    if cfg["runtime"] == MEDIAPIPE:
        return {**out, **_run_mediapipe(cfg, runs, warmup)}

    from blazeport.detector import Detector
    from blazeport.postprocess import postprocess
    from blazeport.preprocess import read_image
    from blazeport.specs import ModelSpec

    backend, import_ms, init_ms = _build_backend(cfg)
    detector = Detector(ModelSpec.from_dict(cfg["spec"]), backend)
    out.update(import_ms=import_ms, init_ms=init_ms)
    if cfg["mode"] == "model":
        batch, _ = detector.preprocess([read_image(image)])
        first, times, cpu = _timed_loop(lambda: detector.backend(batch), runs, warmup)
        out.update(first_ms=_ms(first), runs_ms=[_ms(t) for t in times], cpu_ms_per_run=round(cpu, 4))
    else:
        stage_ns: dict[str, list[int]] = {s: [] for s in STAGES}
        faces: list[Any] = []

        def e2e() -> None:
            # Detector.detect_batch([path]), with a clock between the stages
            t0 = time.perf_counter_ns()
            img = read_image(image)
            t1 = time.perf_counter_ns()
            batch, pads = detector.preprocess([img])
            t2 = time.perf_counter_ns()
            raw_boxes, raw_scores = detector.backend(batch)
            t3 = time.perf_counter_ns()
            dets = postprocess(raw_boxes, raw_scores, detector.anchors, detector.spec, pads, detector.score_threshold)
            t4 = time.perf_counter_ns()
            for s, a, b in zip(STAGES, (t0, t1, t2, t3), (t1, t2, t3, t4), strict=True):
                stage_ns[s].append(b - a)
            faces[:] = dets[0]

        first, times, cpu = _timed_loop(e2e, runs, warmup)
        skip = 1 + warmup  # the first call and the warm-up are not in the stage timings either
        out.update(first_ms=_ms(first), runs_ms=[_ms(t) for t in times], cpu_ms_per_run=round(cpu, 4),
                   stages_ms={s: [_ms(t) for t in v[skip:]] for s, v in stage_ns.items()}, faces=len(faces),
                   detections=[d.to_dict() for d in faces])
    out["peak_rss_mb"], out["ru_maxrss_mb"] = _peak_rss_mb()
    out["torch_loaded"] = "torch" in sys.modules and sys.modules["torch"] is not None
    return out


def _run_mediapipe(cfg: dict[str, Any], runs: int, warmup: int) -> dict[str, Any]:
    """MediaPipe's own pipeline on the same file: read_image (as ours) then ``process(rgb)``."""
    from blazeport.preprocess import read_image

    image = cfg["image"]
    t0 = time.perf_counter_ns()
    import mediapipe as mp

    t1 = time.perf_counter_ns()
    fd = mediapipe_face_detection(int(cfg["model_selection"]), int(cfg["threads"]))
    t2 = time.perf_counter_ns()
    stage_ns: dict[str, list[int]] = {s: [] for s in MP_STAGES}
    faces: list[int] = []

    def e2e() -> None:
        a = time.perf_counter_ns()
        rgb = read_image(image)
        b = time.perf_counter_ns()
        res = fd.process(rgb)
        c = time.perf_counter_ns()
        stage_ns["read"].append(b - a)
        stage_ns["process"].append(c - b)
        faces.append(len(res.detections or []))

    first, times, cpu = _timed_loop(e2e, runs, warmup)
    skip = 1 + warmup
    fd.close()
    return {
        "import_ms": _ms(t1 - t0), "init_ms": _ms(t2 - t1), "first_ms": _ms(first), "runs_ms": [_ms(t) for t in times],
        "cpu_ms_per_run": round(cpu, 4), "stages_ms": {s: [_ms(t) for t in v[skip:]] for s, v in stage_ns.items()},
        "faces": faces[-1] if faces else None, **dict(zip(("peak_rss_mb", "ru_maxrss_mb"), _peak_rss_mb(), strict=True)),
        "torch_loaded": "torch" in sys.modules and sys.modules["torch"] is not None,
        "versions": {"mediapipe": mp.__version__},
    }


def mediapipe_face_detection(model_selection: int, threads: int, min_detection_confidence: float = 0.5) -> Any:
    """``mp.solutions.face_detection.FaceDetection``; with ``threads`` > 1, the same graph with its
    InferenceCalculator's XNNPACK ``num_threads`` set to N (the Python API has no such argument; its
    default off mobile is 1, so ``threads == 1`` is the stock object, unmodified)."""
    import mediapipe as mp
    from mediapipe.python.solutions import face_detection as fdm

    if threads <= 1:
        return fdm.FaceDetection(model_selection=model_selection, min_detection_confidence=min_detection_confidence)
    from mediapipe.calculators.tensor import inference_calculator_pb2
    from mediapipe.framework import calculator_pb2
    from mediapipe.modules.face_detection import face_detection_pb2
    from mediapipe.python import solution_base
    from mediapipe.python._framework_bindings import validated_graph_config

    root = Path(mp.__file__).resolve().parent.parent  # as SolutionBase resolves its graphs
    graph = fdm._FULL_RANGE_GRAPH_FILE_PATH if model_selection == 1 else fdm._SHORT_RANGE_GRAPH_FILE_PATH
    validated = validated_graph_config.ValidatedGraphConfig()
    validated.initialize(binary_graph_path=str(root / graph))
    config = calculator_pb2.CalculatorGraphConfig()
    config.ParseFromString(validated.binary_config)
    changed = 0
    for node in config.node:
        for opt in node.node_options:
            if opt.type_url.endswith("mediapipe.InferenceCalculatorOptions"):
                options = inference_calculator_pb2.InferenceCalculatorOptions.FromString(opt.value)
                options.delegate.xnnpack.num_threads = threads
                opt.value = options.SerializeToString()
                changed += 1
    if changed != 1:
        raise RuntimeError(f"expected one InferenceCalculator in {graph}, found {changed}")
    fd = fdm.FaceDetection.__new__(fdm.FaceDetection)
    solution_base.SolutionBase.__init__(
        fd, graph_config=config, outputs=["detections"],
        graph_options=fd.create_graph_options(face_detection_pb2.FaceDetectionOptions(),
                                              {"min_score_thresh": min_detection_confidence}))
    return fd


def _child_main() -> int:
    cfg = json.loads(sys.stdin.read())
    os.chdir(cfg.get("cwd", "."))
    result = run_child(cfg)
    sys.stdout.write(RESULT_TAG + json.dumps(result) + "\n")
    return 0


def spawn(cfg: dict[str, Any], python: str, timeout: float = 900) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter; a failure comes back as ``{"error": ...}``."""
    threads = str(cfg["threads"])
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
               TF_CPP_MIN_LOG_LEVEL="3", GLOG_minloglevel="3", PYTHONHASHSEED="0")
    root = str(Path(__file__).resolve().parent.parent)  # importable from another interpreter (MediaPipe's venv)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run([python, "-m", "blazeport.bench", "--child"], input=json.dumps(cfg), capture_output=True,
                              text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
    return {"error": f"exit status {proc.returncode}: {lines[-1] if lines else 'no output'}"}


# ----------------------------------------------------------------------------------------------
# Host, ratios, targets


def _version(dist: str | tuple[str, ...]) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    for name in (dist,) if isinstance(dist, str) else dist:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


def host_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):  # no /proc (macOS): platform's name stands
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    from blazeport import __version__

    return {
        "cpu": cpu, "machine": platform.machine(), "cores": os.cpu_count(), "usable_cores": usable,
        "os": platform.platform(), "python": platform.python_version(), "blazeport": __version__,
        "libraries": {k: _version(v) for k, v in LIBRARIES.items()},
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def host_line(host: dict[str, Any]) -> str:
    libs = ", ".join(f"{k} {v}" for k, v in host["libraries"].items() if v and k != "rich")
    mp = f", mediapipe {host['mediapipe']}" if host.get("mediapipe") else ""
    return (f"{host['cpu']} ({host['usable_cores']} of {host['cores']} cores), {host['os']}, Python {host['python']}; "
            f"{libs}{mp}")


def _p50(r: dict[str, Any]) -> float | None:
    return r.get("stats", {}).get("p50")


def add_ratios(results: list[dict[str, Any]]) -> None:
    """``vs_original``: p50 / p50 of the reference's original tflite (same threads and mode);
    ``vs_mediapipe`` (e2e): p50 / MediaPipe's p50 (same threads, same file)."""
    index = {(r["backend"], r["reference"], r["threads"], r["mode"]): r for r in results if r.get("stats")}
    for r in results:
        if not r.get("stats"):
            continue
        ratios = {}
        orig = index.get((ORIGINAL, r["reference"], r["threads"], r["mode"]))
        if orig is not None and _p50(orig):
            ratios["vs_original"] = _p50(r) / _p50(orig)
        mp = index.get((MEDIAPIPE, r["reference"], r["threads"], "e2e"))
        if r["mode"] == "e2e" and mp is not None and _p50(mp):
            ratios["vs_mediapipe"] = _p50(r) / _p50(mp)
        r["ratios"] = ratios


def check_targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, from this run's ratios: e2e onnx <= 1.0x MediaPipe, postprocess <= 10% of
    model time, re-exported tflite <= 1.1x the original."""
    out = []
    for r in results:
        if not r.get("stats") or (r.get("baseline") and r["backend"] == MEDIAPIPE):
            continue
        where = f"{r['model']} {r['backend']} {r['threads']}t"
        ratio = r.get("ratios", {})
        if r["mode"] == "e2e" and r["backend"] == "onnx" and "vs_mediapipe" in ratio:
            out.append({"target": "e2e onnx <= 1.0x MediaPipe", "where": where, "value": ratio["vs_mediapipe"],
                        "limit": 1.0, "met": ratio["vs_mediapipe"] <= 1.0})
        if r["mode"] == "e2e" and r["backend"] != MEDIAPIPE and r.get("postprocess_share_pct") is not None:
            out.append({"target": "decode + NMS <= 10% of model time", "where": where,
                        "value": r["postprocess_share_pct"], "limit": 10.0, "met": r["postprocess_share_pct"] <= 10.0})
        if r["mode"] == "model" and r["backend"] == "tflite" and "vs_original" in ratio:
            out.append({"target": "re-exported tflite <= 1.1x original", "where": where, "value": ratio["vs_original"],
                        "limit": 1.1, "met": ratio["vs_original"] <= 1.1})
    return out


# ----------------------------------------------------------------------------------------------
# Reports: terminal table, JSON, chart, Android command lines


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _count(x: int | None, unit: float, digits: int) -> str:
    return "-" if x is None else f"{x / unit:.{digits}f}"


def table_rows(results: list[dict[str, Any]], mode: str) -> tuple[list[str], list[list[str]]]:
    rows = []
    if mode == "model":
        head = ["model", "backend", "thr", "file MB", "params k", "MMACs", "import", "init", "first", "min", "p50", "p90",
                "p99", "mean", "std", "cpu/run", "RSS MB", "x orig"]
    else:
        head = ["model", "backend", "thr", "first", "p50", "p90", "p99", "read", "pre", "infer", "post", "post %",
                "faces", "cpu/run", "RSS MB", "x orig", "x MP"]
    for r in results:
        if r["mode"] != mode:
            continue
        name = r["model"] + (" *" if r.get("baseline") else "")
        if r.get("error"):
            rows.append([name, r["backend"], str(r["threads"]), f"failed: {r['error']}"] + [""] * (len(head) - 4))
            continue
        s, ratio = r["stats"], r.get("ratios", {})
        vs_orig = _fmt(ratio.get("vs_original"), 2)
        if mode == "model":
            rows.append([name, r["backend"], str(r["threads"]), _count(r.get("file_bytes"), 1e6, 2),
                         _count(r.get("params"), 1e3, 1), _count(r.get("macs"), 1e6, 1), _fmt(r.get("import_ms"), 0),
                         _fmt(r.get("init_ms"), 1), _fmt(r.get("first_ms")), *(_fmt(s[k]) for k in ("min", "p50", "p90",
                         "p99", "mean", "std")), _fmt(r.get("cpu_ms_per_run")), _fmt(r.get("peak_rss_mb"), 0), vs_orig])
        else:
            st = r.get("stage_stats", {})

            def stage(name: str, st: dict[str, Any] = st) -> str:
                return _fmt(st.get(name, {}).get("p50"))

            pre = stage("preprocess") if r["backend"] != MEDIAPIPE else "-"
            infer = stage("infer") if r["backend"] != MEDIAPIPE else stage("process")
            post = stage("postprocess") if r["backend"] != MEDIAPIPE else ""
            rows.append([name, r["backend"], str(r["threads"]), _fmt(r.get("first_ms")), _fmt(s["p50"]), _fmt(s["p90"]),
                         _fmt(s["p99"]), stage("read"), pre, infer, post, _fmt(r.get("postprocess_share_pct"), 1),
                         _fmt(r.get("faces")), _fmt(r.get("cpu_ms_per_run")), _fmt(r.get("peak_rss_mb"), 0), vs_orig,
                         _fmt(ratio.get("vs_mediapipe"), 2)])
    return head, rows


TITLES = {
    "model": "model only: the backend call on a ready (1, S, S, 3) input, ms",
    "e2e": "end to end: image file -> detections (read, letterbox, infer, decode + NMS), p50 per stage, ms",
}


def print_report(report: dict[str, Any], file: Any = None) -> None:
    """Rich tables on the terminal (plain text when rich is not installed)."""
    file = file or sys.stdout
    results = report["results"]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # a board with the runtime only
        Console = None
    console = Console(file=file, width=max(200, Console(file=file).width)) if Console else None
    for mode in ("model", "e2e"):
        head, rows = table_rows(results, mode)
        if not rows:
            continue
        if console is not None:
            table = Table(title=TITLES[mode], title_justify="left", header_style="bold")
            for i, h in enumerate(head):
                table.add_column(h, justify="left" if i < 2 else "right", no_wrap=True)
            for row in rows:
                table.add_row(*row)
            console.print(table)
        else:
            widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
            print(TITLES[mode], file=file)
            for row in [head, *rows]:
                print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths,
                                                                                              strict=True))), file=file)
    lines = ["* baseline added by the bench. x orig: p50 / p50 of the original .tflite in LiteRT (same threads, mode); "
             "x MP: e2e p50 / MediaPipe's p50 (read + FaceDetection.process(rgb); its infer column is the whole "
             "process() call), file read included in both. cpu/run: CPU ms per run, all threads.",
             f"runs {report['settings']['runs']} ({report['settings']['rounds']} round(s), round-robin A-Z, Z-A, ...) after "
             f"{report['settings']['warmup']} warm-up, each configuration in its own process; image "
             f"{report['settings']['image']}",
             "host: " + host_line(report["host"])]
    lines += [f"note: {n}" for n in report["notes"]]
    for t in report["targets"]:
        unit = "%" if t["limit"] == 10.0 else "x"
        lines.append(f"target {t['target']}: {t['where']} {t['value']:.2f}{unit} -> {'met' if t['met'] else 'MISSED'}")
    for line in lines:
        print(line, file=file)


def write_plot(report: dict[str, Any], out: Path) -> None:
    """p50 bars with a whisker to p90, one panel per mode (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in ("model", "e2e") if any(r["mode"] == m and r.get("stats") for r in report["results"])]
    if not modes:
        raise BlazeportError("nothing was measured: no chart to draw")
    groups = {m: [r for r in report["results"] if r["mode"] == m and r.get("stats")] for m in modes}
    height = max(3.0, 0.32 * sum(len(g) for g in groups.values()) + 1.5 * len(modes))
    fig, axes = plt.subplots(len(modes), 1, figsize=(10, height), squeeze=False,
                             gridspec_kw={"height_ratios": [len(groups[m]) + 1 for m in modes]})
    colours = {"torch": "#ee4c2c", "onnx": "#4a90d9", "tflite": "#f5a623", ORIGINAL: "#7b7b7b", MEDIAPIPE: "#2ca02c"}
    for ax, mode in zip(axes[:, 0], modes, strict=True):
        rows = groups[mode]
        labels = [f"{r['model']} · {r['backend']} · {r['threads']}t" for r in rows]
        p50 = np.array([r["stats"]["p50"] for r in rows])
        p90 = np.array([r["stats"]["p90"] for r in rows])
        y = np.arange(len(rows))[::-1]
        ax.barh(y, p50, color=[colours.get(r["backend"], "#999999") for r in rows],
                xerr=[np.zeros_like(p50), p90 - p50], capsize=3, error_kw={"elinewidth": 1})
        for yi, v, w in zip(y, p50, p90, strict=True):
            ax.text(w, yi, f"  {v:.2f}", va="center", fontsize=7)
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_xlabel("ms (bar: p50, whisker: p90)")
        ax.set_title({"model": "model only", "e2e": "end to end (file -> detections)"}[mode], fontsize=10, loc="left")
        ax.grid(axis="x", alpha=0.3)
    import textwrap

    fig.suptitle(textwrap.fill("blazeport bench  -  " + host_line(report["host"]), 160), fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=120, format=out.suffix.lstrip(".") or "png")
    plt.close(fig)
    write_atomic(out, buf.getvalue())


def android_commands(targets: list[Target], threads: list[int], runs: int, warmup: int) -> str:
    """The same measurement with TFLite's own ``benchmark_model`` on an Android phone (adb)."""
    lines = ["# TFLite's benchmark_model on an Android device (arm64), the same files, threads and runs:",
             f"#   get the tool: {ANDROID_TOOL}",
             f"adb push android_aarch64_benchmark_model {ANDROID_DIR}/benchmark_model",
             f"adb shell chmod +x {ANDROID_DIR}/benchmark_model"]
    seen = set()
    for t in targets:
        if t.runtime != "tflite" or t.path in seen:
            continue
        seen.add(t.path)
        remote = f"{ANDROID_DIR}/{Path(t.path).name}"
        lines.append(f"# {t.model} ({t.backend})")
        lines.append(f"adb push {shlex.quote(t.path)} {remote}")
        for n in threads:
            lines.append(f"adb shell {ANDROID_DIR}/benchmark_model --graph={remote} --num_threads={n} "
                         f"--num_runs={runs} --warmup_runs={warmup} --use_xnnpack=true")
    if not seen:
        raise BlazeportError("--android: no .tflite among the models (use --backend tflite)")
    lines.append("# add --enable_op_profiling=true for a per-op breakdown; on an aarch64 Linux board run "
                 "`blazeport bench FILE.tflite --backend tflite` itself (LiteRT, numpy and OpenCV suffice)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The command


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _backend_list(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    bad = [v for v in values if v not in BACKENDS]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"unknown backend {', '.join(bad) or text!r}; choose from {', '.join(BACKENDS)}")
    return values


def add_bench_parser(sub: Any, formatter_class: Any = argparse.RawDescriptionHelpFormatter) -> argparse.ArgumentParser:
    b = sub.add_parser(
        "bench", help="latency of models on torch / onnx / tflite, with the original and MediaPipe as baselines",
        description="Measure init, first-call and steady-state latency (min, p50, p90, p99, mean, std), peak RSS, "
        "size, params and MACs of each MODEL on each backend and thread count, every configuration in its own "
        "process. Google's original .tflite (LiteRT, XNNPACK) runs alongside as the baseline, and with --e2e "
        "MediaPipe's own FaceDetection.process() on the same file. A spec name is exported to ONNX / TFLite on the "
        "fly (cached in --cache). Backends: torch, onnx, tflite (the re-export, and the original for an original "
        "model), tflite-original.", formatter_class=formatter_class,
        epilog="examples:\n  blazeport bench short_range full_range_sparse --threads 1,2 --e2e --json runs/bench.json\n"
        "  blazeport bench face_detection_short_range.tflite --backend tflite     # on a board: LiteRT only\n"
        "  blazeport bench short_range --backend tflite --threads 1,4 --android   # benchmark_model command lines")
    b.add_argument("models", nargs="+", metavar="MODEL",
                   help="spec name (short_range, back, full_range, full_range_sparse, short_range_resnet), a student "
                   "architecture to time untrained (resnet, ...), a .safetensors, .onnx or .tflite file")
    b.add_argument("--backend", type=_backend_list, default=["torch", "onnx", "tflite"],
                   help="comma-separated: torch, onnx, tflite, tflite-original (default: torch,onnx,tflite)")
    b.add_argument("--threads", type=_int_list, default=[1], help="comma-separated thread counts (default: 1)")
    b.add_argument("--runs", type=int, default=200, help="timed runs per configuration (default: 200)")
    b.add_argument("--warmup", type=int, default=20, help="untimed runs before timing (default: 20)")
    b.add_argument("--rounds", type=int, default=1,
                   help="split the runs over this many rounds, every configuration once per round (round-robin, "
                   "every other round reversed), so a slow spell of a shared or throttling host hits all of them alike "
                   "(default: 1)")
    b.add_argument("--e2e", action="store_true", help="also measure end to end on --image (file -> detections), "
                   "stage by stage, with MediaPipe as a baseline")
    b.add_argument("--image", help="photo for the input and --e2e (default: scikit-image's astronaut)")
    b.add_argument("--json", metavar="OUT", help="write the full report (raw timings included) to this JSON file")
    b.add_argument("--plot", metavar="OUT.png", help="write a chart: p50 bars with p90 whiskers")
    b.add_argument("--mediapipe-python", metavar="PATH",
                   help="interpreter with mediapipe for the baseline (default: this one if it has mediapipe; 'none': off)")
    b.add_argument("--no-baselines", action="store_true", help="do not add the original .tflite and MediaPipe baselines")
    b.add_argument("--spec", help="spec of a .onnx/.tflite file that carries none (files from `blazeport export` do)")
    b.add_argument("--cache", default=str(DEFAULT_CACHE), help=f"folder for on-the-fly exports (default: {DEFAULT_CACHE})")
    b.add_argument("--android", action="store_true",
                   help="print the equivalent TFLite benchmark_model command lines (adb) for the .tflite files and exit")
    b.set_defaults(func=cmd_bench)
    return b


def merge_rounds(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration's child results over rounds: timings pooled (in round order), one-off
    costs (import, init, first call) as the median of the rounds, peak RSS as the maximum."""
    failed = [p for p in parts if "error" in p]
    if failed:
        return {"error": failed[0]["error"]}
    out = dict(parts[-1])
    out["rounds"] = len(parts)
    out["runs_ms"] = [t for p in parts for t in p["runs_ms"]]
    if "stages_ms" in out:
        out["stages_ms"] = {s: [t for p in parts for t in p["stages_ms"][s]] for s in out["stages_ms"]}
    for key in ("import_ms", "init_ms", "first_ms"):
        out[key] = float(np.median([p[key] for p in parts]))
        if len(parts) > 1:
            out[f"{key}_rounds"] = [p[key] for p in parts]
    runs = [len(p["runs_ms"]) for p in parts]
    out["cpu_ms_per_run"] = float(np.average([p["cpu_ms_per_run"] for p in parts], weights=runs))
    for key in ("peak_rss_mb", "ru_maxrss_mb"):
        out[key] = max(p[key] for p in parts)
    return out


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (canonical form of the parsed arguments)."""
    parts = ["blazeport", "bench", *args.models, "--backend", ",".join(args.backend),
             "--threads", ",".join(map(str, args.threads)), "--runs", str(args.runs), "--warmup", str(args.warmup)]
    parts += ["--rounds", str(args.rounds)] if args.rounds > 1 else []
    parts += ["--e2e"] if args.e2e else []
    parts += ["--image", args.image] if args.image else []
    parts += ["--mediapipe-python", args.mediapipe_python] if args.mediapipe_python else []
    parts += ["--no-baselines"] if args.no_baselines else []
    parts += ["--json", args.json] if args.json else []
    parts += ["--plot", args.plot] if args.plot else []
    return " ".join(shlex.quote(p) for p in parts)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_bench(args: argparse.Namespace) -> int:
    from blazeport.preprocess import read_image

    if args.runs < 1 or args.warmup < 0:
        raise BlazeportError("--runs must be >= 1 and --warmup >= 0")
    if args.image:
        image = Path(args.image).resolve()
    else:
        try:
            from blazeport.data import sample_image_path

            image = sample_image_path("astronaut")
        except (ImportError, FileNotFoundError):
            raise BlazeportError("no default photo (scikit-image is not installed): pass --image PATH") from None
    read_image(image)  # one clear error for a missing or unreadable image, before anything runs
    inputs = [image, *(m for m in args.models if Path(m).is_file())]
    for out, what in ((args.json, "JSON report"), (args.plot, "chart")):
        if out:
            check_output(out, inputs, what)
    cache = Path(args.cache)
    notes: list[str] = []
    targets = resolve_targets(args.models, set(args.backend), cache, args.spec, notes, _log)
    if args.android:
        print(android_commands(targets, args.threads, args.runs, args.warmup))
        return 0
    mp_python = None
    if args.e2e and not args.no_baselines:
        mp_python, why = find_mediapipe_python(args.mediapipe_python)
        notes.append(why)
    if not args.no_baselines:
        targets = add_baselines(targets, args.e2e, mp_python, notes)
    modes = ["model", "e2e"] if args.e2e else ["model"]
    configs = []
    for mode in modes:
        for threads in args.threads:
            for t in targets:
                if t.backend == MEDIAPIPE and mode != "e2e":
                    continue
                configs.append((t, threads, mode))
    host = host_info()
    results: list[dict[str, Any]] = []
    rounds = max(1, min(args.rounds, args.runs))
    per_round = [args.runs // rounds + (1 if r < args.runs % rounds else 0) for r in range(rounds)]
    _log(f"{len(configs)} configurations x {rounds} round(s), {args.runs} runs each after {args.warmup} warm-up, "
         "one process per configuration and round")
    children: list[list[dict[str, Any]]] = [[] for _ in configs]
    for r in range(rounds):
        # round-robin, every other round in reverse (A B C, C B A, ...): a slow spell of the host, or
        # an order effect, hits every configuration alike instead of the ones that happen to run then
        for i in range(len(configs)) if r % 2 == 0 else reversed(range(len(configs))):
            t, threads, mode = configs[i]
            cfg = {"runtime": t.runtime, "path": str(Path(t.path).resolve()) if t.path else None, "threads": threads,
                   "mode": mode, "runs": per_round[r], "warmup": args.warmup, "image": str(image),
                   "spec": t.spec.to_dict(), "cwd": os.getcwd(), **t.extra}
            child = spawn({k: v for k, v in cfg.items() if k != "python"}, t.extra.get("python", sys.executable))
            children[i].append(child)
            summary = (f"p50 {np.median(child['runs_ms']):.3f} ms" if child.get("runs_ms")
                       else f"FAILED: {child.get('error')}")
            where = f"round {r + 1}/{rounds} " if rounds > 1 else ""
            _log(f"[{where}{i + 1}/{len(configs)}] {t.model} {t.backend} {threads}t {mode}: {summary}")
    for (t, threads, mode), parts in zip(configs, children, strict=True):
        child = merge_rounds(parts)
        row: dict[str, Any] = {
            "model": t.model, "backend": t.backend, "runtime": t.runtime, "threads": threads, "mode": mode,
            "path": t.path, "file_bytes": Path(t.path).stat().st_size if t.path else None, "params": t.params,
            "macs": t.macs, "spec": t.spec.name, "reference": t.reference, "baseline": t.baseline,
            "note": t.extra.get("note"), **child,
        }
        if t.backend == MEDIAPIPE:
            row["model_selection"] = t.extra["model_selection"]
            row["python"] = t.extra["python"]
            host["mediapipe"] = (child.get("versions") or {}).get("mediapipe")
        if "runs_ms" in row:
            row["stats"] = _stats(row["runs_ms"])
        if "stages_ms" in row:
            row["stage_stats"] = {s: _stats(v) for s, v in row["stages_ms"].items()}
            infer = row["stage_stats"].get("infer", {}).get("p50")
            post = row["stage_stats"].get("postprocess", {}).get("p50")
            row["postprocess_share_pct"] = 100.0 * post / infer if infer and post is not None else None
        results.append(row)
    host["load_average_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    add_ratios(results)
    report = {
        "blazeport_bench": 1,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(args),
        "host": host,
        "settings": {"runs": args.runs, "warmup": args.warmup, "rounds": rounds, "threads": args.threads, "e2e": args.e2e,
                     "image": str(image), "backends": args.backend, "mediapipe_python": mp_python,
                     "timer": "time.perf_counter_ns",
                     "rss": "peak RSS of the child's own image: VmHWM (Linux), else ru_maxrss"},
        "notes": notes,
        "results": results,
    }
    report["targets"] = check_targets(results)
    print_report(report)
    if args.json:
        out = write_atomic(args.json, json.dumps(report, indent=1).encode())
        _log(f"report: {out}")
    if args.plot:
        write_plot(report, Path(args.plot))
        _log(f"chart: {args.plot}")
    return 1 if any(r.get("error") for r in results) else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        sys.exit(_child_main())
    from blazeport.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
