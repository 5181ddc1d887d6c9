"""The measured child: one configuration (model x runtime x threads x mode) in a fresh process.

``python -m blazeport.bench.child`` reads the configuration as JSON on stdin and writes one line,
``BLAZEPORT_BENCH_RESULT {...}``, on stdout; :func:`spawn` starts it from the parent. The runtime's
own import is timed (``import``), then opening the file through the one loader,
:func:`blazeport.modelfiles.loader.open_backend` (``init``). Only a torch configuration imports torch: a
board with LiteRT or onnxruntime alone runs this module.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from typing import Any

import cv2

from blazeport.bench.folder_measure import measure_folder, measure_mediapipe_folder
from blazeport.bench.mediapipe import MEDIAPIPE, measure_mediapipe
from blazeport.bench.spawn import RESULT_TAG
from blazeport.bench.timing import measure, ms, process_facts
from blazeport.modelfiles.loader import open_backend
from blazeport.pipeline.detector import Detector
from blazeport.pipeline.postprocess import compiled_available, postprocess
from blazeport.pipeline.preprocess import letterbox, read_image
from blazeport.specs import LandmarkSpec, spec_from_dict

STAGES = ("read", "preprocess", "infer", "postprocess")
# what each runtime of blazeport.modelfiles.backends.RUNTIMES imports: timed apart from opening the file
RUNTIME_LIBRARIES = {"torch": "torch", "onnx": "onnxruntime", "tflite": "ai_edge_litert.interpreter",
                     "executorch": "executorch.runtime"}


class LandmarkModel:
    """A landmark model in the bench (model only): ``preprocess`` letterboxes the photo to its input (the
    content does not change the work), ``backend`` is the runtime's call that returns every output."""

    def __init__(self, spec: LandmarkSpec, backend: Any):
        self.spec, self.backend = spec, backend.raw

    def preprocess(self, images: list[Any]) -> tuple[Any, None]:
        import numpy as np

        return np.stack([letterbox(img, self.spec.input_size, self.spec.normalization)[0] for img in images]), None


def open_timed(cfg: dict[str, Any]) -> tuple[Detector | LandmarkModel, float, float]:
    """(detector or landmark model, import ms, init ms): the runtime's library imported, then the file opened on it."""
    runtime, threads = cfg["runtime"], int(cfg["threads"])
    t0 = time.perf_counter_ns()
    library = importlib.import_module(RUNTIME_LIBRARIES[runtime])
    t1 = time.perf_counter_ns()
    if runtime == "torch":
        library.set_num_interop_threads(1)
    spec, backend, _ = open_backend(cfg["path"], runtime, spec_from_dict(cfg["spec"]), threads,
                                    cfg.get("device", "cpu"), bool(cfg.get("trust_code", False)))
    t2 = time.perf_counter_ns()
    if isinstance(spec, LandmarkSpec):
        return LandmarkModel(spec, backend), ms(t1 - t0), ms(t2 - t1)
    return Detector(spec, backend, post=cfg.get("postprocess", "auto")), ms(t1 - t0), ms(t2 - t1)


def measure_model(detector: Detector | LandmarkModel, image: str, runs: int, warmup: int) -> dict[str, Any]:
    """Model only: the backend call on a ready letterboxed input."""
    batch, _ = detector.preprocess([read_image(image)])
    return measure(lambda: detector.backend(batch), runs, warmup)


def measure_e2e(detector: Detector, image: str, runs: int, warmup: int) -> dict[str, Any]:
    """End to end: :meth:`Detector.detect` on the file, with a clock between its stages."""
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
        dets = postprocess(raw_boxes, raw_scores, detector.anchors, detector.spec, pads, detector.score_threshold,
                           detector.post)
        t4 = time.perf_counter_ns()
        for s, a, b in zip(STAGES, (t0, t1, t2, t3), (t1, t2, t3, t4), strict=True):
            stage_ns[s].append(b - a)
        faces[:] = dets[0]

    out = measure(e2e, runs, warmup, stage_ns)
    compiled = detector.post == "numba" or (detector.post == "auto" and compiled_available())
    return {**out, "faces": len(faces), "detections": [d.to_dict() for d in faces],
            "postprocess": "numba" if compiled else "numpy"}


def run_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """Measure one configuration in this process (called in a fresh child)."""
    cv2.setNumThreads(int(cfg["threads"]))
    out: dict[str, Any] = {"pid": os.getpid()}
    if cfg["mode"] == "video":  # bench --video: frames/s over a video (blazeport.bench.video)
        from blazeport.bench.video import measure_mediapipe_video, measure_video

        if cfg["runtime"] == MEDIAPIPE:
            return {**out, **measure_mediapipe_video(cfg)}
        detector, import_ms, init_ms = open_timed(cfg)
        return {**out, "import_ms": import_ms, "init_ms": init_ms, **measure_video(detector, cfg)}
    if cfg["mode"] == "folder":  # bench --folder: images/s over a folder (blazeport.bench.folder)
        if cfg["runtime"] == MEDIAPIPE:
            return {**out, **measure_mediapipe_folder(cfg)}
        detector, import_ms, init_ms = open_timed(cfg)
        return {**out, "import_ms": import_ms, "init_ms": init_ms, **measure_folder(detector, cfg)}
    if cfg["runtime"] == MEDIAPIPE:
        return {**out, **measure_mediapipe(cfg)}
    detector, import_ms, init_ms = open_timed(cfg)
    loop = measure_model if cfg["mode"] == "model" else measure_e2e
    out.update(import_ms=import_ms, init_ms=init_ms)
    out.update(loop(detector, cfg["image"], int(cfg["runs"]), int(cfg["warmup"])))
    return {**out, **process_facts()}


def main() -> int:
    cfg = json.loads(sys.stdin.read())
    os.chdir(cfg.get("cwd", "."))
    result = run_child(cfg)
    sys.stdout.write(RESULT_TAG + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
