"""Run your BlazeFace student inside MediaPipe's own face detection pipeline (the guide
docs/guides/student-in-mediapipe.md walks through it; tests/test_student_in_mediapipe.py runs it).

MediaPipe's ``mp.solutions.face_detection.FaceDetection(model_selection=0)`` runs the graph
``mediapipe/modules/face_detection/face_detection_short_range_cpu.binarypb``: ImageToTensor (the
letterbox), InferenceCalculator (the ``.tflite``), SsdAnchors, TensorsToDetections, weighted NMS,
DetectionProjection. The model file is one field of that graph, ``InferenceCalculatorOptions.model_path``
(``mediapipe/modules/face_detection/face_detection_short_range.tflite``). A student exported by
``blazeport export --format tflite`` has the original's input (1x128x128x3 float, RGB in [-1, 1]) and
outputs (``regressors`` 1x896x16 then ``classificators`` 1x896x1) on the same anchors, so the rest of
the graph takes it as it is: this file only rewrites that one field (graph surgery, as
``blazeport/bench/mediapipe.py`` does for the thread count) and builds ``FaceDetection`` on the result.

Plain MediaPipe, no blazeport import: copy it into your app. Tested with mediapipe 0.10.14.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def short_range_graph(model_path: str | Path, model_selection: int = 0) -> Any:
    """MediaPipe's face detection graph (``CalculatorGraphConfig``) with its model file replaced by ``model_path``."""
    import mediapipe as mp
    from mediapipe.calculators.tensor import inference_calculator_pb2
    from mediapipe.framework import calculator_pb2
    from mediapipe.python._framework_bindings import validated_graph_config
    from mediapipe.python.solutions import face_detection as fdm

    path = Path(model_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
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
                options.model_path = str(path)  # an absolute path is read as it is (MediaPipe's resource_util)
                opt.value = options.SerializeToString()
                changed += 1
    if changed != 1:
        raise RuntimeError(f"expected one InferenceCalculator in {graph}, found {changed}")
    return config


def face_detection_with_model(model_path: str | Path, model_selection: int = 0,
                              min_detection_confidence: float = 0.5) -> Any:
    """``FaceDetection(model_selection=...)`` running ``model_path`` instead of Google's file; use it as the
    original (``process(rgb).detections``, ``with ... as fd:``)."""
    from mediapipe.modules.face_detection import face_detection_pb2
    from mediapipe.python import solution_base
    from mediapipe.python.solutions import face_detection as fdm

    fd = fdm.FaceDetection.__new__(fdm.FaceDetection)
    solution_base.SolutionBase.__init__(
        fd, graph_config=short_range_graph(model_path, model_selection), outputs=["detections"],
        graph_options=fd.create_graph_options(face_detection_pb2.FaceDetectionOptions(),
                                              {"min_score_thresh": min_detection_confidence}))
    return fd
