"""A ``.tflite`` run by MediaPipe's own inference, as a reference where LiteRT cannot run the file.

``face_landmark_with_attention.tflite`` holds three MediaPipe custom ops (see
:mod:`blazeport.models.custom_ops`). LiteRT's Python interpreter can take custom op registerers
(``custom_op_registerers``: symbol names looked up in the process, or function pointers), but
MediaPipe's wheel offers neither: its one extension module, ``_framework_bindings.so``, exports a
single dynamic symbol (``PyInit__framework_bindings``); the ``Register*`` functions of
``mediapipe/util/tflite/operations`` are inlined away, and their kernels exist only as local
symbols of its own statically linked TFLite, whose structs need not match LiteRT's. So the file
is run where MediaPipe runs it: a five-node ``CalculatorGraph`` of the calculators
``face_landmark_cpu.pbtxt`` uses (``ImageToTensorCalculator`` -> ``InferenceCalculator`` with the
``TfLiteCustomOpResolverCalculator``'s op resolver and the XNNPACK delegate ->
``SplitTensorVectorCalculator`` -> one ``TensorsToFloatsCalculator`` per output), fed the model
input as an image of the model's size. ``ImageToTensorCalculator`` maps that image onto the tensor
one pixel to one element (the warp is the identity), so a ``uint8`` image ``u`` arrives as
``u * (hi - lo) / 255 + lo``: the inputs given here must be on that grid (every crop the landmark
pipeline makes is; :func:`blazeport.modelfiles.verify.verification_inputs` draws its random input on it when
asked).

Needs the ``parity`` extra (``mediapipe==0.10.14``); used by ``blazeport convert`` and the tests as
the oracle of models with MediaPipe's custom ops.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from blazeport.errors import BlazeportError
from blazeport.extras import installed
from blazeport.tflite import read_tflite

__all__ = ["MediaPipeModel", "available"]


def available() -> bool:
    """Whether MediaPipe (the ``parity`` extra) is installed."""
    return installed("mediapipe")


def _graph_config(model: Path, size: int, lo: float, hi: float, n_outputs: int) -> str:
    """The graph, as text: the calculators and options ``face_landmark_cpu.pbtxt`` runs the model with."""
    ranges = " ".join(f"ranges {{ begin: {i} end: {i + 1} }}" for i in range(n_outputs))
    split_outputs = " ".join(f'output_stream: "tensor{i}"' for i in range(n_outputs))
    floats = "\n".join(f'node {{ calculator: "TensorsToFloatsCalculator" input_stream: "TENSORS:tensor{i}" '
                       f'output_stream: "FLOATS:floats{i}" }}' for i in range(n_outputs))
    outputs = "\n".join(f'output_stream: "floats{i}"' for i in range(n_outputs))
    return f'''
input_stream: "image"
{outputs}
node {{ calculator: "ImageToTensorCalculator" input_stream: "IMAGE:image" output_stream: "TENSORS:input_tensors"
  options {{ [mediapipe.ImageToTensorCalculatorOptions.ext] {{ output_tensor_width: {size} output_tensor_height: {size}
    output_tensor_float_range {{ min: {lo!r} max: {hi!r} }} }} }} }}
node {{ calculator: "TfLiteCustomOpResolverCalculator" output_side_packet: "OP_RESOLVER:op_resolver" }}
node {{ calculator: "InferenceCalculator" input_stream: "TENSORS:input_tensors"
  input_side_packet: "OP_RESOLVER:op_resolver" output_stream: "TENSORS:output_tensors"
  options {{ [mediapipe.InferenceCalculatorOptions.ext] {{ model_path: "{model}" delegate {{ xnnpack {{}} }} }} }} }}
node {{ calculator: "SplitTensorVectorCalculator" input_stream: "output_tensors" {split_outputs}
  options {{ [mediapipe.SplitVectorCalculatorOptions.ext] {{ {ranges} }} }} }}
{floats}
'''


class MediaPipeModel:
    """``raw(batch)``, like a backend's: every output of the file, in its order, as ``(B, floats)``,
    computed by MediaPipe 0.10.14's ``InferenceCalculator`` (CPU, XNNPACK, MediaPipe's custom ops).

    ``normalization`` is the model's input range (the spec's); inputs must be ``uint8 / 255`` mapped
    onto it (see the module docstring), else :class:`BlazeportError`.
    """

    name = "mediapipe"

    def __init__(self, path: str | Path, normalization: tuple[float, float] = (0.0, 1.0)):
        if not available():
            raise BlazeportError(f"{path}: running it in MediaPipe needs the parity extra: pip install -e '.[parity]'")
        self.path = Path(path).resolve()
        model = read_tflite(self.path)  # checked before MediaPipe's TFLite sees it
        shape = model.tensor(model.inputs[0]).shape
        self.input_size, self.n_outputs = int(shape[1]), len(model.outputs)
        self.lo, self.hi = (float(v) for v in normalization)
        self._graph: Any = None
        self._results: dict[str, list[float]] = {}
        self._timestamp = 0

    def _start(self) -> Any:
        os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's INFO lines on stderr are not ours
        from google.protobuf import text_format
        from mediapipe.framework import calculator_pb2
        from mediapipe.python import packet_getter
        from mediapipe.python._framework_bindings import calculator_graph

        text = _graph_config(self.path, self.input_size, self.lo, self.hi, self.n_outputs)
        graph = calculator_graph.CalculatorGraph(graph_config=text_format.Parse(text, calculator_pb2.CalculatorGraphConfig()))
        def keep(stream: str, packet: Any) -> None:
            self._results[stream] = packet_getter.get_float_list(packet)

        for i in range(self.n_outputs):
            graph.observe_output_stream(f"floats{i}", keep)
        graph.start_run()
        return graph

    def _as_image(self, x: np.ndarray) -> np.ndarray:
        """The uint8 image whose tensor is ``x`` (HWC), or a refusal for an input off the 1/255 grid."""
        u = (np.asarray(x, np.float64) - self.lo) * (255.0 / (self.hi - self.lo))
        image = np.clip(np.round(u), 0, 255)
        if np.abs(u - image).max() > 1e-3:
            raise BlazeportError("MediaPipe's reference takes images: an input is not uint8 / 255 in the model's range")
        return np.ascontiguousarray(image.astype(np.uint8))

    def raw(self, batch: np.ndarray) -> list[np.ndarray]:
        from mediapipe.python import packet_creator
        from mediapipe.python._framework_bindings import image_frame

        if self._graph is None:
            self._graph = self._start()
        outputs: list[list[np.ndarray]] = [[] for _ in range(self.n_outputs)]
        for x in batch:
            self._results.clear()
            self._timestamp += 1
            packet = packet_creator.create_image_frame(image_format=image_frame.ImageFormat.SRGB, data=self._as_image(x))
            self._graph.add_packet_to_input_stream("image", packet.at(self._timestamp))
            self._graph.wait_until_idle()
            if len(self._results) != self.n_outputs:
                raise BlazeportError(f"{self.path}: MediaPipe returned {len(self._results)} of {self.n_outputs} outputs")
            for i in range(self.n_outputs):
                outputs[i].append(np.asarray(self._results[f"floats{i}"], np.float32))
        return [np.stack(o) for o in outputs]

    def close(self) -> None:
        if self._graph is not None:
            self._graph.close()
            self._graph = None

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order
        with contextlib.suppress(Exception):
            self.close()
