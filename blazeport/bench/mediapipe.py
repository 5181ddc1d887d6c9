"""MediaPipe's own pipeline as the end-to-end baseline.

- :func:`find_mediapipe_python`: the interpreter that has ``mediapipe`` (this one, or
  ``--mediapipe-python PATH``, e.g. a separate venv with ``mediapipe==0.10.14``);
- :func:`mediapipe_face_detection`: ``mp.solutions.face_detection.FaceDetection``, with N > 1
  threads the same graph with its InferenceCalculator's XNNPACK ``num_threads`` set to N (graph
  surgery: the Python API has no thread argument);
- :func:`measure_mediapipe`: the child's timed loop, ``read_image`` (as ours) then ``process(rgb)``.

Which MediaPipe pipeline runs a model's file is a fact of its spec
(``ModelSpec.mediapipe_model_selection``); a spec without one gets no MediaPipe baseline.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from blazeport.bench.timing import measure, ms, process_facts
from blazeport.errors import BlazeportError
from blazeport.pipeline.preprocess import read_image

MEDIAPIPE = "mediapipe"  # the baseline's backend label and runtime
MP_STAGES = ("read", "process")


def find_mediapipe_python(choice: str | None) -> tuple[str | None, str]:
    """The interpreter that runs the MediaPipe baseline (``choice``, else this one), and why (or why not)."""
    if choice == "none":
        return None, "MediaPipe baseline off (--mediapipe-python none)"
    py = choice or sys.executable
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


def mediapipe_face_detection(model_selection: int, threads: int, min_detection_confidence: float = 0.5) -> Any:
    """``mp.solutions.face_detection.FaceDetection``; with ``threads`` > 1, the same graph with its
    InferenceCalculator's XNNPACK ``num_threads`` set to N (the Python API has no such argument; its
    default off mobile is 1, so ``threads == 1`` is the stock object, unmodified)."""
    from mediapipe.python.solutions import face_detection as fdm

    if threads <= 1:
        return fdm.FaceDetection(model_selection=model_selection, min_detection_confidence=min_detection_confidence)
    from mediapipe.modules.face_detection import face_detection_pb2
    from mediapipe.python import solution_base

    fd = fdm.FaceDetection.__new__(fdm.FaceDetection)
    solution_base.SolutionBase.__init__(
        fd, graph_config=_graph_with_threads(model_selection, threads), outputs=["detections"],
        graph_options=fd.create_graph_options(face_detection_pb2.FaceDetectionOptions(),
                                              {"min_score_thresh": min_detection_confidence}))
    return fd


def _graph_with_threads(model_selection: int, threads: int) -> Any:
    """The face detection graph ``FaceDetection`` loads, its one InferenceCalculator set to ``threads``."""
    import mediapipe as mp
    from mediapipe.calculators.tensor import inference_calculator_pb2
    from mediapipe.framework import calculator_pb2
    from mediapipe.python._framework_bindings import validated_graph_config
    from mediapipe.python.solutions import face_detection as fdm

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
    return config


def measure_mediapipe(cfg: dict[str, Any]) -> dict[str, Any]:
    """MediaPipe's own pipeline on the same file, in the child: read_image (as ours) then ``process(rgb)``."""
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

    timings = measure(e2e, int(cfg["runs"]), int(cfg["warmup"]), stage_ns)
    fd.close()
    return {"import_ms": ms(t1 - t0), "init_ms": ms(t2 - t1), **timings, "faces": faces[-1] if faces else None,
            **process_facts(), "versions": {"mediapipe": mp.__version__}}
