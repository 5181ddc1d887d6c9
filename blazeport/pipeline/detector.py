"""The one detection pipeline: letterbox -> backend -> decode -> NMS -> un-letterbox.

Only the backend changes between the converted module, the original ``.tflite`` and exported
files, so their detections are comparable. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from blazeport.errors import BlazeportError
from blazeport.modelfiles.loader import ModelRef, open_backend
from blazeport.pipeline.anchors import anchors_for
from blazeport.pipeline.postprocess import Detection, check_postprocess, postprocess
from blazeport.pipeline.preprocess import as_rgb, letterbox, read_image
from blazeport.specs import ModelSpec
from blazeport.video.frames import Frame, FrameSource, VideoReadError, frames_of
from blazeport.video.smoothing import DetectionSmoother

Backend = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class Detector:
    """A spec plus a backend. ``detect(image)`` returns MediaPipe-style normalized detections."""

    spec: ModelSpec
    backend: Backend
    score_threshold: float | None = None
    post: str = "auto"  # decode + NMS: "numba" (compiled), "numpy", or "auto" (numba when installed); same floats

    def __post_init__(self) -> None:
        self.anchors = anchors_for(self.spec)

    def preprocess(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[Any]]:
        done = [letterbox(img, self.spec.input_size, self.spec.normalization) for img in images]
        return np.stack([t for t, _ in done]), [p for _, p in done]

    def detect_batch(self, images: list[np.ndarray | str | Path]) -> list[list[Detection]]:
        arrays = [read_image(i) if isinstance(i, (str, Path)) else as_rgb(i) for i in images]
        batch, pads = self.preprocess(arrays)
        raw_boxes, raw_scores = self.backend(batch)
        return postprocess(raw_boxes, raw_scores, self.anchors, self.spec, pads, self.score_threshold, self.post)

    def detect(self, image: np.ndarray | str | Path) -> list[Detection]:
        """Detect faces in one RGB uint8 image (or an image file path)."""
        return self.detect_batch([image])[0]

    def detect_frames(self, frames: Iterable[Frame], smooth: bool | DetectionSmoother = False
                      ) -> Iterator[tuple[Frame, list[Detection]]]:
        """``(frame, detections)`` for each :class:`blazeport.video.frames.Frame`, in order: :meth:`detect` on
        every frame, as MediaPipe's FaceDetection runs on video (no tracking; it keeps no state between
        frames). ``smooth``: a :class:`blazeport.video.smoothing.DetectionSmoother` (``True``: MediaPipe's
        one-euro parameters) filters boxes and keypoints over time."""
        smoother = DetectionSmoother() if smooth is True else smooth or None
        for frame in frames:
            dets = self.detect(frame.rgb)
            if smoother is not None:
                dets = smoother(dets, frame.time_ms, frame.rgb.shape[1], frame.rgb.shape[0])
            yield frame, dets

    def detect_video(self, source: str | Path | int | FrameSource | Iterable[np.ndarray],
                     smooth: bool | DetectionSmoother = False,
                     fps: float | None = None) -> Iterator[tuple[int, float, list[Detection]]]:
        """``(frame_index, time_ms, detections)`` for every frame of a video file, URL, camera index
        (``int``), image sequence (``"frames/%04d.png"``) or an iterable of RGB uint8 arrays the caller
        decoded (timed at ``fps``, default 30); see :func:`blazeport.video.frames.open_frames`. Frames are decoded
        ahead in a reader thread while the detector runs. A file that ends early (truncated, damaged)
        raises :class:`blazeport.video.frames.VideoReadError` after its last good frame was yielded."""
        frames = frames_of(source, fps=fps)
        with frames:
            for frame, dets in self.detect_frames(frames, smooth):
                yield frame.index, frame.time_ms, dets
        if frames.error:
            raise VideoReadError(frames.error)

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


def load(model: str | Path | ModelRef = "short_range", backend: str | None = None, threads: int | None = None,
         score_threshold: float | None = None, spec: str | ModelSpec | None = None, postprocess: str = "auto",
         device: str = "cpu", trust_code: bool = False) -> Detector:
    """A ready :class:`Detector` for a spec name or a model file (resolved by :func:`blazeport.modelfiles.ref.resolve`).

    ``model`` is a spec name (``short_range``), a ``.safetensors`` written by ``blazeport convert``
    or ``distill``, a ``.tflite``, an ``.onnx`` or a ``.pte``. ``backend`` is a runtime of
    :data:`blazeport.modelfiles.runtimes.RUNTIMES`: ``torch`` (converted weights; a ``.tflite`` is converted on
    load), ``tflite`` (LiteRT), ``onnx`` (onnxruntime) or ``executorch``; by default torch, or the
    file's own runtime for an ``.onnx`` or ``.pte`` (:func:`blazeport.modelfiles.runtimes.default_runtime`).
    ``spec`` (a name or a :class:`ModelSpec`) says how to feed and decode a file; it overrides what
    the file says. The model must give one
    output row per anchor of its spec (:meth:`Detector.check`).

    ``trust_code``: a student ``.safetensors`` whose backbone is your own module (``distill --student
    mymod:build``) names that module, and rebuilding it imports it, running its code. That happens
    only with ``trust_code=True`` (the CLI's ``--trust-code``), as ``trust_remote_code`` in the Hugging
    Face ecosystem; without it such a file is refused before anything is imported. blazeport's own
    models and students never need it.
    """
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise BlazeportError(f"threads must be a whole number >= 1, got {threads!r}")
    check_postprocess(postprocess)
    resolved, runner, _ = open_backend(model, backend, spec, threads, device, trust_code)
    if not isinstance(resolved, ModelSpec):
        raise BlazeportError(f"{model}: {resolved.name} is a landmark model, not a face detector; run it with "
                             "`blazeport landmarks` (blazeport.load_landmarks in Python)")
    return Detector(resolved, runner, score_threshold, postprocess).check(model)
