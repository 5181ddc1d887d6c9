"""The spec inside a model file, so the file alone says how to feed and decode it.

``blazeport export`` writes :meth:`ModelSpec.to_dict` as JSON under :data:`SPEC_KEY` (ONNX
``metadata_props``; TFLite ``Model.metadata`` entries pointing at buffers; ExecuTorch: the whole
dict as JSON, returned by the program's constant method :data:`METADATA_METHOD`), beside the layout, the
weight precision and the source; the loader reads it back for files that are not Google's
originals. (Safetensors files carry their spec in their own header: :mod:`blazeport.modelfiles.weights`.)
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from blazeport.errors import BlazeportError
from blazeport.specs import LandmarkSpec, ModelSpec, spec_from_dict
from blazeport.version import __version__

SPEC_KEY = "blazeport.spec"
# ExecuTorch: a .pte has no metadata table; the dict below travels as the JSON string this
# constant method of the program returns (see blazeport.export.to_executorch)
METADATA_METHOD = "blazeport_metadata"
LAYOUT = "NHWC"

__all__ = ["LAYOUT", "METADATA_METHOD", "SPEC_KEY", "file_metadata", "spec_from_metadata", "tflite_metadata"]


def file_metadata(spec: ModelSpec | LandmarkSpec, source: str | Path, fp16: bool, dynamic_batch: bool,
                  weights: str | None = None) -> dict[str, str]:
    """``weights`` overrides the precision ``fp16`` implies (``int8``, ``int8-dynamic``)."""
    return {
        SPEC_KEY: json.dumps(spec.to_dict()),
        "blazeport.layout": LAYOUT,
        "blazeport.modelfiles.weights": weights or ("float16" if fp16 else "float32"),
        "blazeport.batch": "dynamic" if dynamic_batch else "1",
        "blazeport.source": Path(source).name,
        "blazeport.version": __version__,
    }


def tflite_metadata(path: str | Path) -> dict[str, str]:
    """``Model.metadata`` entries of a ``.tflite`` whose buffers hold UTF-8 text (others skipped)."""
    import tflite

    data = Path(path).read_bytes()
    out: dict[str, str] = {}
    try:
        model = tflite.Model.GetRootAsModel(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            buf = model.Buffers(entry.Buffer())
            if buf is None or buf.DataLength() == 0:
                continue
            with contextlib.suppress(UnicodeDecodeError):
                out[entry.Name().decode()] = buf.DataAsNumpy().tobytes().decode("utf-8")
    except Exception as exc:  # a corrupt flatbuffer: the backend's own check names the problem
        raise BlazeportError(f"{path}: cannot read the TFLite metadata ({exc})") from None
    return out


def spec_from_metadata(meta: dict[str, str], path: str | Path) -> ModelSpec | LandmarkSpec | None:
    """The :class:`ModelSpec` (or a landmark model's :class:`LandmarkSpec`) stored in a file's
    metadata, or None when there is none."""
    text = meta.get(SPEC_KEY)
    if text is None:
        return None
    try:
        return spec_from_dict(json.loads(text))
    except (ValueError, TypeError, KeyError) as exc:
        raise BlazeportError(f"{path}: unreadable {SPEC_KEY} metadata ({exc}); pass --spec NAME") from None
