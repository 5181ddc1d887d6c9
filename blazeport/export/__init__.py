"""Export any blazeport model to ONNX, TFLite or ExecuTorch, then verify the written file before reporting.

One table, :data:`FORMATS`, is the single source of truth for what can be exported (like the
Ultralytics exporter): format name, file suffix, exporter function, the runtime backend that
reads the file back (:mod:`blazeport.backends`), its op counter and the install hint. The CLI's
``--format`` choices, the default output names and the verification all come from it. Each format's
exporter lives in its own module: :mod:`blazeport.export.to_onnx`, :mod:`blazeport.export.to_tflite`,
:mod:`blazeport.export.to_executorch` (``.pte``, XNNPACK delegate; its spec travels in a constant method).

**Input layout: NHWC.** Every exported file takes ``input`` as a float32 ``(B, S, S, 3)`` batch
in the spec's range (RGB in [-1, 1], letterboxed) and returns ``regressors (B, N, 16)`` and
``classificators (B, N, 1)``: the same contract as Google's ``.tflite`` and as every backend of
the pipeline. The NCHW transpose for the PyTorch module sits inside the graph, so a file drops
into a MediaPipe-style pipeline (or :class:`blazeport.backends.OnnxBackend` /
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
and within the same tolerance (:func:`blazeport.verify.verify`, the check ``convert`` makes too).
Students are exported with their BatchNorm folded into the convs (:func:`blazeport.models.fold_batchnorm`)
and checked against the unfolded module. Float16 weights are reported, not gated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from blazeport.backends import RUNTIMES, TorchBackend
from blazeport.errors import BlazeportError
from blazeport.export.to_executorch import EXECUTORCH_INSTALL, executorch_op_counts, export_executorch
from blazeport.export.to_onnx import ONNX_OPSET, export_onnx, onnx_op_counts
from blazeport.export.to_tflite import EXPORT_EXTRA, export_tflite, tflite_op_counts
from blazeport.files import check_output, same_file, staged
from blazeport.loader import open_module
from blazeport.metadata import LAYOUT, file_metadata
from blazeport.photos import sample_images
from blazeport.specs import SPECS, WEIGHTS_DIR, ModelSpec
from blazeport.verify import verify


@dataclass(frozen=True)
class ExportFormat:
    """One row of the format table."""

    name: str
    suffix: str
    exporter: Callable[..., None]  # (module, spec, out, *, fp16, dynamic_batch, metadata) -> None
    backend: str  # blazeport.detector.load(..., backend=...) that runs the file
    op_counter: Callable[[Path], dict[str, int]]
    dynamic_batch: bool  # whether --dynamic-batch is supported
    install: str  # what to install when the exporter's packages are missing
    opset: int | None = None  # the ONNX opset the exporter targets


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("onnx", ".onnx", export_onnx, "onnx", onnx_op_counts, True, "pip install -e .", ONNX_OPSET),
        ExportFormat("tflite", ".tflite", export_tflite, "tflite", tflite_op_counts, False, EXPORT_EXTRA),
        ExportFormat("executorch", ".pte", export_executorch, "executorch", executorch_op_counts, False, EXECUTORCH_INSTALL),
    )
}


def get_format(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise BlazeportError(f"unknown export format {name!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[name]


# ----------------------------------------------------------------------------------------------
# Source model, verification, the report


def default_output(model: str | Path, spec: ModelSpec, fmt: ExportFormat, fp16: bool) -> Path:
    """``NAME[_fp16].SUFFIX`` in the current directory (NAME: the spec or the source file's stem).

    Exporting ``face_detection_short_range.tflite`` to TFLite from inside ``weights/`` would name
    the original itself: then the name gets ``_export`` so the default never lands on an input.
    """
    path = Path(model)
    stem = path.stem if path.suffix in (".safetensors", ".tflite") else spec.name
    out = Path(f"{stem}{'_fp16' if fp16 else ''}{fmt.suffix}")
    if any(same_file(out, p) for p in protected_inputs(path, spec)):
        out = out.with_name(f"{out.stem}_export{out.suffix}")
    return out


def protected_inputs(source: Path, spec: ModelSpec) -> list[Path]:
    """Files an export must never overwrite: its source and Google's bundled originals."""
    originals = [WEIGHTS_DIR / s.tflite for s in SPECS.values() if s.tflite]
    return [source, *originals, *([WEIGHTS_DIR / spec.tflite] if spec.tflite else [])]


def export(model: str | Path, fmt: str = "onnx", out: str | Path | None = None, *, fp16: bool = False,
           dynamic_batch: bool = False, images: list[np.ndarray] | None = None) -> dict[str, Any]:
    """Export, verify, and return the report (the CLI's ``--json``).

    ``ok`` is the float32 gate (:func:`blazeport.verify.verify`: raw outputs, decoded outputs and
    detections); float16 weights are reported, and ``ok`` only requires finite outputs.
    """
    from blazeport.models import fold_batchnorm  # imports torch, which export needs anyway

    f = get_format(fmt)
    if dynamic_batch and not f.dynamic_batch:
        raise BlazeportError(f"--dynamic-batch is not supported for {f.name}; it is for "
                             f"{', '.join(x.name for x in FORMATS.values() if x.dynamic_batch)}")
    module, spec, source = open_module(model)
    out = Path(out) if out else default_output(model, spec, f, fp16)
    if out.suffix != f.suffix:
        raise BlazeportError(f"{out}: {f.name} files end in {f.suffix}; choose another -o name")
    check_output(out, protected_inputs(source, spec), f"{f.name} export")
    images = images if images is not None else sample_images()
    with staged(out) as stage:
        t0 = time.perf_counter()
        # students' BatchNorm folded into their convs (plain convs with bias, like Google's files);
        # the written file is then checked against the unfolded module, which checks the folding too
        f.exporter(fold_batchnorm(module), spec, stage.path, fp16=fp16, dynamic_batch=dynamic_batch,
                   metadata=file_metadata(spec, source, fp16, dynamic_batch))
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        written = RUNTIMES[f.backend].backend(stage.path)
        if written.input_size != spec.input_size:
            raise BlazeportError(f"{out}: input is {written.input_size}px, spec {spec.name} expects {spec.input_size}px")
        check = verify(written, TorchBackend(module), spec, images)
        verify_seconds = time.perf_counter() - t1
        size, op_counts = stage.path.stat().st_size, f.op_counter(stage.path)
        ok = check["passes_gate"] if not fp16 else check["finite"]
        if ok:  # a file that fails its check never replaces a previous export
            stage.commit()
    report: dict[str, Any] = {
        "format": f.name,
        "spec": spec.name,
        "source": str(source),
        "output": str(out),
        "runtime": f.backend,
        "layout": LAYOUT,
        "input_shape": ["batch" if dynamic_batch else 1, spec.input_size, spec.input_size, 3],
        "weights": "float16" if fp16 else "float32",
        "opset": f.opset,
        "size_bytes": size,
        "written": ok,
        "seconds": round(seconds, 3),
        "verify_seconds": round(verify_seconds, 3),
        **{k: check[k] for k in ("max_abs_diff", "max_scaled_diff", "tolerance_used", "decoded_diff", "detections",
                                 "images", "random_inputs", "tolerance", "passes_gate")},
        "gated": not fp16,
        "ok": ok,
        "op_counts": op_counts,
    }
    return {**report, **_original_facts(spec)}


def _original_facts(spec: ModelSpec) -> dict[str, Any]:
    """Google's original beside the export, for the size and op-count comparison."""
    original = WEIGHTS_DIR / spec.tflite if spec.tflite else None
    if original is None or not original.is_file():
        return {"original": None, "original_op_counts": None}
    return {"original": str(original), "original_op_counts": tflite_op_counts(original),
            "original_size_bytes": original.stat().st_size}
