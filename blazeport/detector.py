"""The one detection pipeline: letterbox -> backend -> decode -> NMS -> un-letterbox.

Only the backend changes between the converted module, the original ``.tflite`` and exported
files, so their detections are comparable. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from blazeport.anchors import anchors_for
from blazeport.errors import BlazeportError
from blazeport.postprocess import Detection, postprocess
from blazeport.preprocess import as_rgb, letterbox, read_image
from blazeport.specs import WEIGHTS_DIR, ModelSpec, get_spec

BACKENDS = ("torch", "tflite", "onnx")

Backend = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class Detector:
    """A spec plus a backend. ``detect(image)`` returns MediaPipe-style normalized detections."""

    spec: ModelSpec
    backend: Backend
    score_threshold: float | None = None

    def __post_init__(self) -> None:
        self.anchors = anchors_for(self.spec)

    def preprocess(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[Any]]:
        done = [letterbox(img, self.spec.input_size, self.spec.normalization) for img in images]
        return np.stack([t for t, _ in done]), [p for _, p in done]

    def detect_batch(self, images: list[np.ndarray | str | Path]) -> list[list[Detection]]:
        arrays = [read_image(i) if isinstance(i, (str, Path)) else as_rgb(i) for i in images]
        batch, pads = self.preprocess(arrays)
        raw_boxes, raw_scores = self.backend(batch)
        return postprocess(raw_boxes, raw_scores, self.anchors, self.spec, pads, self.score_threshold)

    def detect(self, image: np.ndarray | str | Path) -> list[Detection]:
        """Detect faces in one RGB uint8 image (or an image file path)."""
        return self.detect_batch([image])[0]

    def check(self, source: str | Path) -> Detector:
        """Run one blank input and require one output row per anchor of the spec.

        A model paired with the wrong spec (``palm_detection_lite.tflite`` with ``--spec
        full_range``: 2016 rows against 2304 anchors) would otherwise run and decode junk.
        """
        s, n = self.spec.input_size, len(self.anchors)
        reg, cls = self.backend(np.zeros((1, s, s, 3), np.float32))
        if reg.shape != (1, n, self.spec.num_coords) or cls.shape != (1, n, 1):
            raise BlazeportError(
                f"{source}: the model outputs regressors {tuple(reg.shape)} and classificators {tuple(cls.shape)}, but "
                f"spec {self.spec.name} decodes {n} anchors x {self.spec.num_coords} coordinates. Pass the spec this "
                "model was made for (--spec NAME)."
            )
        return self


def resolve_weights(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.safetensors"


def load(model: str | Path = "short_range", backend: str = "torch", threads: int | None = None,
         score_threshold: float | None = None, spec: str | ModelSpec | None = None) -> Detector:
    """A ready :class:`Detector` for a spec name or a model file.

    ``model`` is a spec name (``short_range``), a ``.safetensors`` written by ``blazeport convert``
    or a ``.tflite`` file. ``backend`` is ``torch`` (converted weights) or ``tflite`` (LiteRT).
    An ``.onnx`` file runs on ``backend="onnx"`` (onnxruntime); it and a ``.tflite`` written by
    ``blazeport export`` carry their spec in their metadata; ``spec`` (a name or a
    :class:`ModelSpec`) names it for other ``.onnx``/``.tflite`` files.
    """
    if backend not in BACKENDS:
        raise BlazeportError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise BlazeportError(f"threads must be a whole number >= 1, got {threads!r}")
    return _open(model, backend, threads, score_threshold, spec).check(model)


def _open(model: str | Path, backend: str, threads: int | None, score_threshold: float | None,
          spec: str | ModelSpec | None) -> Detector:
    from blazeport.backends import TFLiteBackend, TorchBackend

    path = Path(model)
    if path.suffix == ".onnx" or (path.suffix == ".tflite" and backend == "tflite"):
        return _load_file(path, backend, threads, score_threshold, spec)
    if backend == "onnx":
        raise BlazeportError(f"the onnx backend runs a .onnx file; write one with `blazeport export {model} --format onnx`")
    if path.suffix in (".tflite", ".safetensors"):
        if path.suffix == ".tflite":
            from blazeport.convert import load_tflite, spec_for_file

            spec = spec_for_file(path) if path.is_file() else None
            if spec is None:
                raise BlazeportError(f"{path}: not one of the known original files; blazeport cannot tell its spec.")
            if backend == "tflite":
                return Detector(spec, TFLiteBackend(path, threads), score_threshold)
            module, _ = load_tflite(path)
            return Detector(spec, TorchBackend(module, threads), score_threshold)
        if backend != "torch":
            raise BlazeportError(f"{path}: a .safetensors file runs on the torch backend only")
        from blazeport.convert import load_safetensors

        module, spec = load_safetensors(path)
        return Detector(spec, TorchBackend(module, threads), score_threshold)

    spec = get_spec(str(model))
    if backend == "tflite":
        if spec.tflite is None:
            raise BlazeportError(f"{spec.name} has no original .tflite; use --backend torch")
        return Detector(spec, TFLiteBackend(WEIGHTS_DIR / spec.tflite, threads), score_threshold)
    from blazeport.convert import load_safetensors

    weights = resolve_weights(spec.name)
    if not weights.is_file():
        raise BlazeportError(
            f"{weights}: converted weights not found. Run `blazeport convert weights/{spec.tflite}` first."
        )
    module, _ = load_safetensors(weights)
    return Detector(spec, TorchBackend(module, threads), score_threshold)


def _load_file(path: Path, backend: str, threads: int | None, score_threshold: float | None,
               spec: str | ModelSpec | None) -> Detector:
    """An ``.onnx`` (onnx backend) or ``.tflite`` (tflite backend) file. Its spec is ``spec`` if
    given, else Google's original recognised by sha256, else the ``blazeport.spec`` metadata that
    ``blazeport export`` writes into the file."""
    from blazeport.backends import OnnxBackend, TFLiteBackend
    from blazeport.export import spec_from_metadata, tflite_metadata

    wanted = "onnx" if path.suffix == ".onnx" else "tflite"
    if backend != wanted:
        raise BlazeportError(f"{path}: a {path.suffix} file runs on the {wanted} backend (--backend {wanted})")
    if not path.is_file():
        raise BlazeportError(f"{path}: no such file")
    runner = OnnxBackend(path, threads) if wanted == "onnx" else TFLiteBackend(path, threads)
    if isinstance(spec, str):
        spec = get_spec(spec)
    if spec is None and wanted == "tflite":
        from blazeport.convert import spec_for_file

        spec = spec_for_file(path) or spec_from_metadata(tflite_metadata(path), path)
    elif spec is None:
        spec = spec_from_metadata(runner.metadata, path)
    if spec is None:
        raise BlazeportError(f"{path}: no blazeport.spec metadata and not a known original file; "
                             "pass --spec NAME (e.g. short_range) to say how to feed and decode it")
    if runner.input_size != spec.input_size:
        raise BlazeportError(f"{path}: input is {runner.input_size}px but spec {spec.name} expects {spec.input_size}px")
    return Detector(spec, runner, score_threshold)
