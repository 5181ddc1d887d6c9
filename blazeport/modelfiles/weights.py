"""blazeport's weights files: safetensors with the spec and the module's config in the header.

A ``.safetensors`` written here rebuilds its module from the file alone (family + config JSON)
and says how to feed and decode it (the spec JSON). Nothing in it is executed: safetensors holds
tensors and strings only, every field is checked before it is trusted, and a student's backbone
that names the user's own module is imported only with ``trust_code=True``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from blazeport.errors import BlazeportError
from blazeport.files import sha256_of, write_atomic
from blazeport.pipeline.anchors import anchors_for
from blazeport.specs import LandmarkSpec, ModelSpec, spec_from_dict

__all__ = ["load_safetensors", "read_weights", "save_safetensors"]


def save_safetensors(module: Any, spec: ModelSpec | LandmarkSpec, out: str | Path, source: str | Path | None = None,
                     extra: dict[str, str] | None = None) -> Path:
    """Write weights plus the metadata needed to rebuild the module (family, config, spec).

    ``source`` is the .tflite a conversion came from (name and sha256 recorded); ``extra`` adds
    string metadata (a student records its teacher and training summary). Written atomically and
    byte for byte reproducibly: the same module and metadata give the same file (and sha256).
    """
    from safetensors.torch import save

    out = Path(out)
    meta = {
        "format": "blazeport",
        "spec": json.dumps(spec.to_dict()),
        "family": module.family,
        "config": module.config.to_json(),
        **({"source": Path(source).name, "source_sha256": sha256_of(source)} if source else {}),
        # a pruned student: its config builds the unpruned network, the tensors' shapes give the widths
        **({"pruned": "true"} if getattr(module, "pruned", False) else {}),
        **(extra or {}),
    }
    data = save({k: v.detach().contiguous() for k, v in module.state_dict().items()}, metadata=meta)
    write_atomic(out, _canonical_header(data))
    return out


def _canonical_header(data: bytes) -> bytes:
    """The safetensors file with its JSON header's keys sorted.

    safetensors 0.8 writes ``__metadata__`` in Rust hash-map order, which changes from run to run,
    so two conversions of one file differed in bytes. The header is a JSON map whose tensor
    entries carry their own offsets, so reordering its keys leaves the data as it is; it is
    padded with spaces to a multiple of 8 bytes, as safetensors pads it.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-(8 + len(header)) % 8)
    return len(header).to_bytes(8, "little") + header + data[8 + n :]


def _prune_to(module: Any, state: dict[str, Any], path: Path, spec: Any) -> None:
    """A pruned file's network: the unpruned one its config builds, cut to its tensors' widths."""
    from blazeport.pruning.prune import apply_widths  # torch-pruning: only a pruned file needs it

    try:
        apply_widths(module, state, spec.input_size)
    except BlazeportError as exc:
        raise BlazeportError(f"{path}: a pruned student whose network cannot be rebuilt ({exc})") from None


_FIX = "Re-run `blazeport convert` (or `blazeport distill`) to write it again."


def _read(path: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """The header metadata and the tensors, or one error saying why the file cannot be read."""
    from safetensors import safe_open

    if not path.exists():
        raise BlazeportError(f"{path}: no such weights file. Run `blazeport convert` on the original .tflite first.")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise BlazeportError(f"{path}: cannot read the weights file ({exc.strerror or exc}).") from None
    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - no __iter__
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError) on damaged files
        raise BlazeportError(f"{path}: not a readable safetensors file ({exc}). {_FIX}") from None


def read_weights(path: str | Path) -> tuple[dict[str, str], ModelSpec | LandmarkSpec, dict[str, Any]]:
    """``(metadata, spec, tensors)`` of a blazeport safetensors file, checked, without building its
    module: what ``distill --init`` needs, and nothing a file names is imported."""
    path = Path(path)
    meta, state = _read(path)
    if meta.get("format") != "blazeport" or "config" not in meta or "spec" not in meta:
        raise BlazeportError(f"{path}: safetensors without blazeport metadata (format, spec, config); "
                             "convert the original with `blazeport convert`.")
    try:
        stored = json.loads(meta["spec"])
        if isinstance(stored, dict) and stored.get("kind") != "landmarks":  # files written before specs carried
            # these say them beside the spec
            stored.setdefault("family", meta.get("family", "blazeface"))
            stored.setdefault("teacher", meta.get("teacher"))
        spec = spec_from_dict(stored)
    except (ValueError, BlazeportError) as exc:  # JSONDecodeError is a ValueError
        raise BlazeportError(f"{path}: its spec metadata is not usable ({exc}). {_FIX}") from None
    try:
        if isinstance(spec, ModelSpec):  # a landmark model has no anchors
            anchors_for(spec)
    except BlazeportError as exc:
        raise BlazeportError(f"{path}: {exc}. {_FIX}") from None
    return meta, spec, state


def load_safetensors(path: str | Path, trust_code: bool = False) -> tuple[Any, ModelSpec | LandmarkSpec]:
    """Rebuild a module and its spec from a blazeport safetensors file.

    Everything in the file is checked before it is trusted, and each problem is one
    :class:`BlazeportError` naming the file: unreadable, not safetensors, no blazeport metadata,
    a spec or config that is not valid JSON or not complete, and tensors missing, unexpected or of
    the wrong shape for the model the config describes. safetensors holds tensors and strings, so
    reading runs nothing; a student whose backbone is the user's own code names a module, and that
    module is imported only with ``trust_code=True`` (:mod:`blazeport.models.backbones`): without it
    the file is refused before any import, naming the module and ``--trust-code``.
    """
    from blazeport.models import from_config  # imports torch, which a runtime-only install may lack

    path = Path(path)
    fix = _FIX
    meta, spec, state = read_weights(path)
    family = meta.get("family", "blazeface")
    try:
        module = from_config(family, meta["config"], trust_code)
    except BlazeportError as exc:  # a student's own backbone names its fix (an import path that moved)
        raise BlazeportError(f"{path}: {exc}" + ("" if family == "student" else f". {fix}")) from None
    except Exception as exc:  # a config is user data: any way it fails to build is the same problem
        raise BlazeportError(f"{path}: its config metadata does not describe a {family} model "
                             f"({type(exc).__name__}: {exc}). {fix}") from None
    if meta.get("pruned") == "true":
        _prune_to(module, state, path, spec)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise BlazeportError(f"{path}: tensors do not match its config: missing {missing[:4]}, unexpected {extra[:4]}. {fix}")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise BlazeportError(f"{path}: tensor {name} has shape {tuple(state[name].shape)}, its config wants {shape}. {fix}")
    module.load_state_dict(state, strict=True)
    if getattr(module.config, "input_size", spec.input_size) != spec.input_size:
        raise BlazeportError(f"{path}: the model takes {module.config.input_size}px but its spec says "
                             f"{spec.input_size}px. {fix}")
    return module.eval(), spec
