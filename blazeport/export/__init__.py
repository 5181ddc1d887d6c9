"""Export any blazeport model to ONNX, TFLite or ExecuTorch, then verify the written file before reporting.

One table, :data:`FORMATS`, is the single source of truth for what can be exported (like the
Ultralytics exporter): format name, file suffix, exporter function, the runtime backend that
reads the file back (:mod:`blazeport.modelfiles.backends`), its op counter and the install hint. The CLI's
``--format`` choices, the default output names and the verification all come from it. Each format's
exporter lives in its own module: :mod:`blazeport.export.to_onnx`, :mod:`blazeport.export.to_tflite`,
:mod:`blazeport.export.to_executorch` (``.pte``, XNNPACK delegate; its spec travels in a constant method).

**Input layout: NHWC.** Every exported file takes ``input`` as a float32 ``(B, S, S, 3)`` batch
in the spec's range (RGB in [-1, 1], letterboxed) and returns ``regressors (B, N, 16)`` and
``classificators (B, N, 1)``: the same contract as Google's ``.tflite`` and as every backend of
the pipeline. The NCHW transpose for the PyTorch module sits inside the graph, so a file drops
into a MediaPipe-style pipeline (or :class:`blazeport.modelfiles.backends.OnnxBackend` /
``TFLiteBackend``) with no host-side transpose, and ONNX and TFLite files are interchangeable.
It costs one ``Transpose`` at the ONNX input; LiteRT's layout pass folds it away entirely.
(``OnnxBackend`` still accepts NCHW ONNX files from elsewhere and transposes on the host.)

**The spec travels with the file**: ``ModelSpec.to_dict()`` as JSON under the key
``blazeport.spec`` (ONNX ``metadata_props``; TFLite ``Model.metadata`` with a buffer), plus the
layout, the weight precision and the source, so the file alone says how to feed and decode it.
``blazeport.load(file, backend="onnx"|"tflite")`` reads it back.

Verification: the written file runs in its runtime (onnxruntime / LiteRT) on real photos,
letterboxed like the pipeline does, plus one random input; raw outputs are compared with the
PyTorch module by the conversion gate, and detections after decode and NMS must agree in count
and within the same tolerance (:func:`blazeport.modelfiles.verify.verify`, the check ``convert`` makes too).
Students are exported with their BatchNorm folded into the convs (:func:`blazeport.models.fold_batchnorm`)
and checked against the unfolded module. Float16 weights are reported, not gated.

**int8** (``--int8``) is an option of the same rows, not a format of its own: the row's exporter
writes the float file into a temporary folder, the row's ``quantizer``
(:mod:`blazeport.export.quantize`) writes the int8 file into the staging path, calibrated on
photos from ``--calibration`` (:mod:`blazeport.export.calibration`), and
:mod:`blazeport.export.fidelity` judges it by AP50 against the float model on held-out photos
(the float gate cannot apply); the row's ``layer_errors`` names the worst layers when it misses.
Every quantizer also receives the folded torch module the float file came from (``module=``):
ONNX and TFLite quantize the file and ignore it, ExecuTorch quantizes the graph before lowering
(PT2E) and needs it. One keyword, so all three rows keep this one path; a row's ``int8_flags``
says which of ``--dynamic`` / ``--int8-io`` its quantizer offers, refused before any export work.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from blazeport.errors import BlazeportError
from blazeport.export.calibration import DEFAULT_COUNT, MIN_CALIBRATION, MIN_VERIFY, Calibration, load_calibration
from blazeport.export.fidelity import onnx_layer_errors, tflite_layer_errors, verify_int8
from blazeport.export.quantize import quantize_onnx, quantize_tflite
from blazeport.export.to_executorch import (
    EXECUTORCH_INSTALL,
    executorch_layer_errors,
    executorch_op_counts,
    export_executorch,
    quantize_executorch,
)
from blazeport.export.to_onnx import ONNX_OPSET, export_onnx, onnx_op_counts
from blazeport.export.to_tflite import EXPORT_EXTRA, export_tflite, tflite_op_counts
from blazeport.files import check_output, same_file, staged
from blazeport.modelfiles.backends import TorchBackend
from blazeport.modelfiles.loader import open_module
from blazeport.modelfiles.metadata import LAYOUT, file_metadata
from blazeport.modelfiles.runtimes import RUNTIMES
from blazeport.modelfiles.verify import verification_inputs, verify, verify_landmarks
from blazeport.pipeline.photos import sample_images
from blazeport.specs import LANDMARK_SPECS, SPECS, WEIGHTS_DIR, LandmarkSpec, ModelSpec


@dataclass(frozen=True)
class ExportFormat:
    """One row of the format table."""

    name: str
    suffix: str
    exporter: Callable[..., None]  # (module, spec, out, *, fp16, dynamic_batch, metadata) -> None
    backend: str  # blazeport.pipeline.detector.load(..., backend=...) that runs the file
    op_counter: Callable[[Path], dict[str, int]]
    dynamic_batch: bool  # whether --dynamic-batch is supported
    install: str  # what to install when the exporter's packages are missing
    # --int8: (float file, out, calibration, *, dynamic, int8_io, metadata, module) -> facts; None: not offered.
    # module: the folded torch module the float file came from (ExecuTorch quantizes the graph, not the file)
    quantizer: Callable[..., dict[str, Any]] | None = None
    layer_errors: Callable[..., list[dict[str, Any]]] | None = None  # (float file, int8 file, inputs) -> worst layers
    opset: int | None = None  # the ONNX opset the exporter targets
    int8_flags: tuple[str, ...] = ("--dynamic", "--int8-io")  # the --int8 options the quantizer offers


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("onnx", ".onnx", export_onnx, "onnx", onnx_op_counts, True, "pip install -e .", quantize_onnx,
                     onnx_layer_errors, ONNX_OPSET),
        ExportFormat("tflite", ".tflite", export_tflite, "tflite", tflite_op_counts, False, EXPORT_EXTRA, quantize_tflite,
                     tflite_layer_errors),
        ExportFormat("executorch", ".pte", export_executorch, "executorch", executorch_op_counts, False, EXECUTORCH_INSTALL,
                     quantize_executorch, executorch_layer_errors, int8_flags=()),
    )
}


def get_format(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise BlazeportError(f"unknown export format {name!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[name]


# ----------------------------------------------------------------------------------------------
# Source model, verification, the report


def default_output(model: str | Path, spec: ModelSpec, fmt: ExportFormat, fp16: bool, precision: str = "") -> Path:
    """``NAME[_fp16|_int8|_int8_dynamic].SUFFIX`` in the current directory (NAME: the spec or the source file's stem).

    Exporting ``face_detection_short_range.tflite`` to TFLite from inside ``weights/`` would name
    the original itself: then the name gets ``_export`` so the default never lands on an input.
    """
    path = Path(model)
    stem = path.stem if path.suffix in (".safetensors", ".tflite") else spec.name
    tag = f"_{precision}" if precision else "_fp16" if fp16 else ""
    out = Path(f"{stem}{tag}{fmt.suffix}")
    if any(same_file(out, p) for p in protected_inputs(path, spec)):
        out = out.with_name(f"{out.stem}_export{out.suffix}")
    return out


def protected_inputs(source: Path, spec: ModelSpec) -> list[Path]:
    """Files an export must never overwrite: its source and Google's bundled originals."""
    originals = [WEIGHTS_DIR / s.tflite for s in (*SPECS.values(), *LANDMARK_SPECS.values()) if s.tflite]
    return [source, *originals, *([WEIGHTS_DIR / spec.tflite] if spec.tflite else [])]


def _int8_options(fp16: bool, int8: bool, dynamic: bool, int8_io: bool, calibration: str | Path | None) -> str:
    """Refuse flag combinations that cannot mean anything; returns the precision tag ('' for float)."""
    if not int8:
        for flag, given in (("--int8-io", int8_io), ("--dynamic", dynamic), ("--calibration", calibration is not None)):
            if given:
                raise BlazeportError(f"{flag} is an option of --int8; add --int8 (full-integer export) or drop {flag}")
        return ""
    if fp16:
        raise BlazeportError("--int8 and --fp16 are two precisions; choose one")
    if dynamic and (int8_io or calibration is not None):
        raise BlazeportError("--dynamic keeps float activations: it takes no --calibration and no --int8-io")
    if not dynamic and calibration is None:
        raise BlazeportError("--int8 needs --calibration DIR: a folder of real photos like the ones the model will see "
                             f"(at least {MIN_CALIBRATION + MIN_VERIFY}; a few hundred is best); "
                             "or --dynamic for int8 weights only")
    return "int8_dynamic" if dynamic else "int8"


def export(model: str | Path, fmt: str = "onnx", out: str | Path | None = None, *, fp16: bool = False,
           dynamic_batch: bool = False, images: list[np.ndarray] | None = None, int8: bool = False,
           dynamic: bool = False, int8_io: bool = False, calibration: str | Path | None = None,
           calibration_count: int = DEFAULT_COUNT, max_pixels: int | None = None, trust_code: bool = False,
           overwrite: bool = False) -> dict[str, Any]:
    """Export, verify, and return the report (the CLI's ``--json``).

    ``ok`` is the float32 gate (:func:`blazeport.modelfiles.verify.verify`: raw outputs, decoded outputs and
    detections); float16 weights are reported, and ``ok`` only requires finite outputs. With
    ``int8``, ``ok`` is the int8 target instead (:mod:`blazeport.export.fidelity`: AP50 of the int8
    file's detections against the float model's on photos the calibration did not see).
    ``trust_code``: as for :func:`blazeport.load` (a student whose backbone is the user's own module).
    ``overwrite``: replace an existing ``out`` (after verification); without it an existing file there is
    refused before any work.
    """
    from blazeport.models import fold_batchnorm  # imports torch, which export needs anyway

    f = get_format(fmt)
    if dynamic_batch and not f.dynamic_batch:
        raise BlazeportError(f"--dynamic-batch is not supported for {f.name}; it is for "
                             f"{', '.join(x.name for x in FORMATS.values() if x.dynamic_batch)}")
    precision = _int8_options(fp16, int8, dynamic, int8_io, calibration)
    if int8 and f.quantizer is None:
        raise BlazeportError(f"--int8 is not offered for {f.name} yet; it is for "
                             f"{', '.join(x.name for x in FORMATS.values() if x.quantizer)}")
    for flag, given in (("--dynamic", dynamic), ("--int8-io", int8_io)):
        if given and flag not in f.int8_flags:  # before the float export: a refusal should not cost a lowering
            raise BlazeportError(f"{flag} is not offered for {f.name} --int8; it is for "
                                 f"{', '.join(x.name for x in FORMATS.values() if flag in x.int8_flags)}")
    module, spec, source = open_module(model, trust_code=trust_code)
    if isinstance(spec, LandmarkSpec) and int8:
        raise BlazeportError(f"{spec.name} is a landmark model: --int8 is offered for detectors only (its fidelity is "
                             "judged by detection AP); export it in float32 or --fp16")
    out = Path(out) if out else default_output(model, spec, f, fp16, precision)
    if out.suffix != f.suffix:
        raise BlazeportError(f"{out}: {f.name} files end in {f.suffix}; choose another -o name")
    check_output(out, protected_inputs(source, spec), f"{f.name} export", overwrite)
    if int8:
        calib = None if dynamic else load_calibration(calibration, spec, calibration_count, images, max_pixels)
        return _export_int8(f, module, spec, source, out, calib, images, dynamic=dynamic, int8_io=int8_io,
                            dynamic_batch=dynamic_batch, replace=overwrite)
    images = images if images is not None else sample_images()
    with staged(out, overwrite) as stage:
        t0 = time.perf_counter()
        # students' BatchNorm folded into their convs (plain convs with bias, like Google's files);
        # the written file is then checked against the unfolded module, which checks the folding too
        f.exporter(fold_batchnorm(module), spec, stage.path, fp16=fp16, dynamic_batch=dynamic_batch,
                   metadata=file_metadata(spec, source, fp16, dynamic_batch))
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        written = _read_back(f, stage.path, out, spec)
        if isinstance(spec, LandmarkSpec):  # raw outputs by the same gate, no detections to match
            check = verify_landmarks(written.raw, TorchBackend(module, optimize=False).raw, spec, images)
        else:
            check = verify(written, TorchBackend(module), spec, images)
        verify_seconds = time.perf_counter() - t1
        size, op_counts = stage.path.stat().st_size, f.op_counter(stage.path)
        ok = check["passes_gate"] if not fp16 else check["finite"]
        if ok:  # a file that fails its check never replaces a previous export
            stage.commit()
    report: dict[str, Any] = {
        **_header(f, spec, source, out, dynamic_batch),
        "weights": "float16" if fp16 else "float32",
        "size_bytes": size,
        "written": ok,
        "seconds": round(seconds, 3),
        "verify_seconds": round(verify_seconds, 3),
        **{k: check[k] for k in ("max_abs_diff", "max_scaled_diff", "tolerance_used", "decoded_diff", "detections",
                                 "images", "random_inputs", "tolerance", "passes_gate") if k in check},
        "gated": not fp16,
        "ok": ok,
        "op_counts": op_counts,
    }
    return {**report, **_original_facts(spec)}


def _header(f: ExportFormat, spec: ModelSpec, source: Path, out: Path, dynamic_batch: bool) -> dict[str, Any]:
    return {"format": f.name, "spec": spec.name, "source": str(source), "output": str(out), "runtime": f.backend,
            "layout": LAYOUT, "input_shape": ["batch" if dynamic_batch else 1, spec.input_size, spec.input_size, 3],
            "opset": f.opset}


def _read_back(f: ExportFormat, path: Path, out: Path, spec: ModelSpec) -> Any:
    written = RUNTIMES[f.backend].backend(path)
    if written.input_size != spec.input_size:
        raise BlazeportError(f"{out}: input is {written.input_size}px, spec {spec.name} expects {spec.input_size}px")
    return written


def _export_int8(f: ExportFormat, module: Any, spec: ModelSpec, source: Path, out: Path, calib: Calibration | None,
                 images: list[np.ndarray] | None, *, dynamic: bool, int8_io: bool, dynamic_batch: bool,
                 replace: bool = False) -> dict[str, Any]:
    """Float file (temporary) -> the format's quantizer -> int8 file verified against the float model.

    Verification photos: those the calibration held out, or ``images`` (then excluded from calibration);
    with ``--dynamic`` (no calibration) ``images`` or the bundled samples."""
    from blazeport.models import fold_batchnorm  # torch: the torch-free bench imports blazeport.export

    verify_images = calib.verify_images if calib else images if images is not None else sample_images()
    weights = "int8-dynamic" if dynamic else "int8"
    with staged(out, replace) as stage, tempfile.TemporaryDirectory(prefix="blazeport-float-") as tmp:
        float_path = Path(tmp) / f"float{f.suffix}"
        t0 = time.perf_counter()
        meta = file_metadata(spec, source, False, dynamic_batch)
        folded = fold_batchnorm(module)
        f.exporter(folded, spec, float_path, fp16=False, dynamic_batch=dynamic_batch, metadata=meta)
        facts = f.quantizer(float_path, stage.path, calib, dynamic=dynamic, int8_io=int8_io,
                            metadata={**meta, "blazeport.modelfiles.weights": weights}, module=folded)
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        check = verify_int8(_read_back(f, stage.path, out, spec), TorchBackend(module), spec, verify_images)
        worst = [] if check["passes"] else f.layer_errors(
            float_path, stage.path, verification_inputs(spec, verify_images[:4])[0][:-1])
        verify_seconds = time.perf_counter() - t1
        size, float_size, op_counts = stage.path.stat().st_size, float_path.stat().st_size, f.op_counter(stage.path)
        ok = check["passes"]
        if ok:
            stage.commit()
    report: dict[str, Any] = {
        **_header(f, spec, source, out, dynamic_batch),
        "weights": weights,
        "quantization": {**facts, "io": "int8 input, float32 outputs" if int8_io else "float32",
                         **(calib.describe() if calib else {})},
        "size_bytes": size, "float_size_bytes": float_size, "size_vs_float": round(size / float_size, 4),
        "written": ok, "seconds": round(seconds, 3), "verify_seconds": round(verify_seconds, 3),
        **check, "worst_layers": worst, "gated": True, "ok": ok, "op_counts": op_counts,
    }
    return {**report, **_original_facts(spec)}


def _original_facts(spec: ModelSpec) -> dict[str, Any]:
    """Google's original beside the export, for the size and op-count comparison."""
    original = WEIGHTS_DIR / spec.tflite if spec.tflite else None
    if original is None or not original.is_file():
        return {"original": None, "original_op_counts": None}
    return {"original": str(original), "original_op_counts": tflite_op_counts(original),
            "original_size_bytes": original.stat().st_size}
