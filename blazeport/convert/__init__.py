"""Convert a BlazeFace ``.tflite`` into the PyTorch module, by walking its graph, and verify it.

The walk is done by the extractor registered for the model's family (:data:`EXTRACTORS`:
:mod:`~blazeport.convert.blazeface` for BlazeFace graphs, :mod:`~blazeport.convert.graph` for any
other graph of known ops, run by GraphNet); :func:`load_tflite` builds the module and checks every
shape; :func:`convert` saves, reads back, verifies and only then writes the output.

Verification runs the original file in LiteRT and the converted module on real photos and a
random input, and reports the worst absolute difference per output.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from blazeport.convert.blazeface import extract
from blazeport.convert.graph import extract_graph
from blazeport.convert.walker import ConversionError, Mapping, check_ops
from blazeport.errors import BlazeportError
from blazeport.files import check_output, in_source_checkout, sha256_of, staged
from blazeport.modelfiles.backends import TFLiteBackend, TorchBackend
from blazeport.modelfiles.metadata import spec_from_metadata, tflite_metadata
from blazeport.modelfiles.ref import resolve
from blazeport.modelfiles.verify import verify, verify_landmarks
from blazeport.modelfiles.weights import load_safetensors, save_safetensors
from blazeport.pipeline.photos import sample_images
from blazeport.specs import SPECS, WEIGHTS_DIR, LandmarkSpec, ModelSpec
from blazeport.tflite import TFLiteModel, read_tflite

__all__ = ["EXTRACTORS", "ConversionError", "Mapping", "check_ops", "convert", "extract", "extract_graph", "load_tflite",
           "source_tflite"]

# module family -> the walk that reads its config and weights out of a .tflite graph (tried in this
# order for a file whose family is not known)
EXTRACTORS: dict[str, Callable[[TFLiteModel], Mapping]] = {"blazeface": extract, "graph": extract_graph}


def _first_walk(model: TFLiteModel) -> tuple[Mapping, str]:
    """The first registered walk that reads the graph (the readable BlazeFace module before GraphNet)."""
    errors = []
    for family, walk in EXTRACTORS.items():
        try:
            return walk(model), family
        except ConversionError as exc:
            errors.append(exc)
    raise errors[-1]


def build_module(family: str, config: Any) -> Any:
    from blazeport.models import FAMILIES  # imports torch: only when a module is built

    return FAMILIES[family][1](config)


def load_tflite(path: str | Path, family: str | None = None, model: TFLiteModel | None = None) -> tuple[Any, Mapping]:
    """Build the module for a ``.tflite`` file and load its weights, checking every shape.

    ``family`` names the walk (:data:`EXTRACTORS`: ``blazeface``, the readable BlazeFace module, or
    ``graph``, :class:`GraphNet`); the caller knows it for a known file (its
    :class:`~blazeport.modelfiles.ref.ModelRef`), and an unknown file gets the first walk that reads it.
    ``model``: the file already parsed (``convert`` reads it once).
    """
    import torch

    model = model if model is not None else read_tflite(path)
    if family is None:
        mapping, family = _first_walk(model)
    elif family in EXTRACTORS:
        mapping = EXTRACTORS[family](model)
    else:
        raise ConversionError(f"{path}: no .tflite walk for the {family} family; known: {', '.join(EXTRACTORS)}")
    mapping.family = family
    module = build_module(family, mapping.config).eval()
    state = module.state_dict()
    missing = sorted(set(state) - set(mapping.params))
    extra = sorted(set(mapping.params) - set(state))
    if missing or extra:
        raise ConversionError(f"{path}: graph and module disagree: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, arr in mapping.params.items():
        if tuple(state[name].shape) != arr.shape:
            raise ConversionError(
                f"{path}: {mapping.sources[name]} has shape {arr.shape}, module parameter {name} wants {tuple(state[name].shape)}"
            )
    module.load_state_dict({k: torch.from_numpy(v) for k, v in mapping.params.items()}, strict=True)
    return module, mapping


def convert(
    src: str | Path,
    out: str | Path | None = None,
    spec: ModelSpec | LandmarkSpec | None = None,
    images: list[np.ndarray] | None = None,
    crops: list[np.ndarray] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert, verify and save one file; return the report (the CLI's ``--json``).

    The weights go to a temporary file that is read back and verified against LiteRT; only a
    file that passes the gate replaces ``out`` (``report["written"]``). A failed conversion
    leaves any previous ``out`` untouched and writes nothing.

    A landmark model (:class:`LandmarkSpec`: face mesh, iris) is verified the same way on its raw
    outputs (:func:`blazeport.modelfiles.verify.verify_landmarks`), also on ``crops`` (model inputs the
    landmark pipeline made from real photos) when given.

    An existing ``out`` is replaced only with ``overwrite``, or when it is this command's own earlier
    output for the same original (:func:`_reconverts`: a blazeport file whose recorded source sha256
    is ``src``'s), which is how ``blazeport convert weights/X.tflite`` refreshes ``weights/``; any
    other file there is refused before any work.
    """
    t0 = time.perf_counter()
    src = source_tflite(src)
    if out is not None:
        out = Path(out)
        if out.suffix != ".safetensors":
            raise ConversionError(f"{out}: converted weights are a .safetensors file; choose an -o name ending in .safetensors")
        check_output(out, [src], "converted weights", overwrite=True)  # names and places; existing files below
    ref = resolve(src, spec)
    model = read_tflite(src)  # parsed once: the walk below and the reference reuse it
    module, mapping = load_tflite(src, ref.family, model)
    spec = ref.spec or spec_from_metadata(tflite_metadata(src), src)
    if spec is None:
        fits = ", ".join(s.name for s in SPECS.values() if s.input_size == mapping.config.input_size) or "none"
        raise ConversionError(f"{src}: not one of Google's original files and no blazeport.spec metadata: pass --spec "
                              f"NAME to say how to feed and decode it (specs with its {mapping.config.input_size}px "
                              f"input: {fits})")
    if mapping.config.input_size != spec.input_size:
        raise ConversionError(f"{src}: input is {mapping.config.input_size}px but spec {spec.name} expects {spec.input_size}px")
    out = Path(out) if out else default_output(spec)
    replace = overwrite or _reconverts(out, src)
    check_output(out, [src], "converted weights", overwrite=replace)
    images = images if images is not None else sample_images()
    with staged(out, replace) as stage:
        # verify what was written, read back from disk, against LiteRT (XNNPACK, as MediaPipe runs
        # it), and only then replace the previous output
        save_safetensors(module, spec, stage.path, src)
        written, _ = load_safetensors(stage.path)
        reference = _reference(src, model, spec)
        if isinstance(spec, LandmarkSpec):
            check = verify_landmarks(TorchBackend(written, optimize=False).raw, reference.raw, spec, images, crops,
                                     image_grid=reference.name == "mediapipe")
        else:
            check = verify(TorchBackend(written), reference, spec, images)
        ok = check["passes_gate"]
        if ok:
            stage.commit()
    report: dict[str, Any] = {
        "spec": spec.name,
        "source": str(src),
        "sha256": sha256_of(src),
        "output": str(out),
        "written": ok,
        "params": int(sum(p.numel() for p in module.parameters())),
        "tflite_ops": model.op_counts(),
        "reference": REFERENCES[reference.name],
        **check,
        "ok": ok,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return report


# what verified a conversion, by the reference's name (the CLI says "verified against ...")
REFERENCES = {"tflite": "LiteRT", "mediapipe": "MediaPipe 0.10.14's InferenceCalculator (its custom ops, XNNPACK)"}


def _reference(src: Path, model: TFLiteModel, spec: ModelSpec | LandmarkSpec) -> Any:
    """What the converted module is compared with: the file in LiteRT (XNNPACK, as MediaPipe runs
    it), or, for a file with MediaPipe's custom ops, which LiteRT has no kernels for, the file in
    MediaPipe's own inference (:class:`blazeport.modelfiles.mediapipe_model.MediaPipeModel`, the ``parity`` extra)."""
    if not model.custom_ops():
        return TFLiteBackend(src)
    from blazeport.modelfiles import mediapipe_model

    names = ", ".join(model.custom_ops())
    if not isinstance(spec, LandmarkSpec):
        raise ConversionError(f"{src}: a detector with custom ops ({names}) has no reference to verify against")
    if not mediapipe_model.available():
        raise ConversionError(f"{src}: LiteRT cannot run MediaPipe's custom ops ({names}), so the reference for this "
                              "file is MediaPipe itself, which is not installed: pip install -e '.[parity]' "
                              f"(the converted {spec.name}.safetensors ships with blazeport)")
    return mediapipe_model.MediaPipeModel(src, spec.normalization)


def source_tflite(src: str | Path) -> Path:
    """The ``.tflite`` to convert: a path, or a model name whose original ships inside blazeport (what an
    installed package has instead of a clone's ``weights/``)."""
    path = Path(src)
    if path.suffix != ".tflite" and not path.exists():
        try:
            named = resolve(str(src)).named
        except BlazeportError:
            named = None  # the reader's "no such file" names it
        if named is not None:
            if named.tflite is None:
                raise BlazeportError(f"{named.name} is distilled, not converted: it has no original .tflite")
            return WEIGHTS_DIR / named.tflite
    if path.suffix != ".tflite" and path.is_file():
        raise ConversionError(f"{path}: convert reads a .tflite file; a {path.suffix or 'file without a suffix'} is "
                              "not one (a .safetensors is already converted)")
    return path


def default_output(spec: ModelSpec | LandmarkSpec) -> Path:
    """Where ``convert`` writes without ``-o``: ``weights/NAME.safetensors`` in a clone (as it always
    has), else ``NAME.safetensors`` in the current folder: never into an installed package."""
    return (WEIGHTS_DIR if in_source_checkout() else Path.cwd()) / f"{spec.name}.safetensors"


def _reconverts(out: Path, src: Path) -> bool:
    """Whether ``out`` is blazeport's own conversion of ``src`` (its header records ``src``'s sha256),
    read from the safetensors JSON header alone."""
    try:
        with open(out, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 0 < n < 1 << 24:
                return False
            meta = json.loads(fh.read(n)).get("__metadata__") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return meta.get("format") == "blazeport" and meta.get("source_sha256") == sha256_of(src)
