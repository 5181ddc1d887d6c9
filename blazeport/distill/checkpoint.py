"""The distillation checkpoint: what ``last.pt`` / ``best.pt`` hold, how they are written, read and refused.

A checkpoint holds the student + loss-module weights (``model``), optimizer, scheduler, AMP
scaler and RNG states, the epoch just finished (or, for a checkpoint written inside an epoch, the
epoch in progress and a ``position`` in it: :mod:`blazeport.distill.midepoch`), the per-epoch
history, the best held-out AP50 and the run's :class:`~blazeport.distill.config.TrainConfig`
(:func:`checkpoint_state` builds it, :func:`restore` puts it back). :func:`save_checkpoint`
serializes it in memory and writes it with :func:`blazeport.files.write_atomic` (temp file +
rename), so a kill mid-write leaves the previous file whole.

**Format: ``torch.save``, read only with ``torch.load(weights_only=True)``.** A checkpoint is a
file a user hands us (``--resume`` reads whatever ``last.pt`` is in ``--out``), and a full
unpickle of it would run any code a crafted file names. torch's weights-only unpickler (torch >=
2.6; the project pins 2.13) builds nothing but tensors and plain containers of numbers and
strings, and refuses any other global *before* calling it, so a pickle with a malicious
``__reduce__`` is rejected without running. We keep torch's format rather than moving to
safetensors + JSON because a checkpoint must stay ONE file written by ONE rename (two files
cannot be replaced atomically together, and a kill between them would pair a new model with an
old optimizer), and because optimizer and scheduler states are nested dicts that
``weights_only`` reads as they are, where safetensors would need them flattened and rebuilt. The
price is that everything stored must be a tensor or plain data: the Python and numpy RNG states
are stored as lists and tensors (:func:`rng_state`), not as the tuples and numpy arrays their
``getstate`` functions return.

Whatever :func:`read_checkpoint` cannot read, or reads but does not recognise as a checkpoint of
this very run (truncated, corrupted, a foreign pickle, zip or safetensors file, a dict without
our keys, another student or teacher), and a checkpoint :func:`restore` cannot load into this
run's modules (another ``--loss``), ends in one :class:`BlazeportError` naming the file and the
fix; the file is never modified, moved or deleted. :func:`checkpoint_to_resume` makes those
checks before the run loads its teacher or creates its folder.
"""

from __future__ import annotations

import io
import pickle
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from blazeport import files
from blazeport.distill.config import TrainConfig
from blazeport.distill.midepoch import Position
from blazeport.errors import BlazeportError
from blazeport.specs import spec_named

CHECKPOINT_MARK = "blazeport distill checkpoint"  # the "format" key of every checkpoint we write
CHECKPOINT_VERSION = 3  # 3 adds "position" (mid-epoch checkpoints); 2 is read as an epoch-end one
READABLE_VERSIONS = (2, 3)  # 1: RNG states as tuples / numpy arrays, readable only by a full unpickle
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "rng", "epoch", "history", "best", "config")


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as lists, numbers and tensors, so that a checkpoint
    holding them loads under ``torch.load(weights_only=True)`` (numpy arrays would not)."""
    version, key, gauss = random.getstate()
    name, mt, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {"python": [version, list(key), gauss],
            "numpy": {"name": str(name), "key": torch.from_numpy(mt.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` stored."""
    version, key, gauss = state["python"]
    random.setstate((version, tuple(key), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["key"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())


def checkpoint_state(model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any, epoch: int,
                     history: list[dict[str, Any]], best: float, cfg: TrainConfig,
                     position: Position | None = None) -> dict[str, Any]:
    """Everything a checkpoint holds (but its format mark), at the end of ``epoch`` (0-based), or, with
    ``position``, inside it (``epoch`` is then the epoch in progress)."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": rng_state(), "epoch": epoch, "history": history, "best": best,
            "config": asdict(cfg), "position": position.to_dict() if position is not None else None}


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Serialize in memory, then write with the package's one atomic writer (temp + rename), so a
    kill mid-write leaves the previous checkpoint whole."""
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_MARK, "version": CHECKPOINT_VERSION, **state}, buf)
    files.write_atomic(path, buf.getvalue())  # looked up at call time: tests spy on the one writer


def checkpoint_to_resume(cfg: TrainConfig, out: Path, device: torch.device) -> dict[str, Any] | None:
    """``out/last.pt`` read and checked when ``cfg.resume``, else None; refuses to start over a run.

    ``best.pt`` is checked too, so an epoch never overwrites a foreign one.
    """
    last_path, best_path = out / "last.pt", out / "best.pt"
    if not cfg.resume:
        for held in (last_path, best_path):
            if held.exists():
                raise BlazeportError(f"{out} already holds a run ({held.name}); pass --resume to continue it or choose "
                                     "another --out")
        return None
    ckpt = None
    if last_path.exists():
        ckpt = read_checkpoint(last_path, cfg, device)
    elif best_path.exists():
        raise BlazeportError(f"cannot resume {out}: it has best.pt but no last.pt; choose another --out, or move "
                             f"{best_path} away to start over")
    if best_path.exists():
        read_checkpoint(best_path, cfg)
    return ckpt


def restore(ckpt: dict[str, Any], path: Path, cfg: TrainConfig, model: nn.Module, optimizer: Any, scheduler: Any,
            scaler: Any) -> None:
    """Load a checkpoint read by :func:`read_checkpoint` into this run's modules and the RNGs;
    a checkpoint whose weights do not fit (another ``--loss``) is one error, the file kept."""
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise BlazeportError(
            f"{path} does not fit this run (saved with --loss {ckpt['config'].get('loss')!r}, this run has "
            f"--loss {cfg.loss!r}: {first}); it was left as it is: resume with the saved options, or choose another "
            f"--out") from None


def _spec_name(teacher: Any) -> str:
    """A teacher's canonical spec name (aliases resolved), or the text itself if unknown."""
    try:
        return spec_named(str(teacher), detectors_only=True).name
    except BlazeportError:
        return str(teacher)


def read_checkpoint(path: Path, cfg: TrainConfig, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load ``path`` without running anything in it, and check it is a checkpoint of this run.

    Raises one :class:`BlazeportError` naming the file and the fix for a file that is unreadable,
    truncated, corrupted, foreign, or written for another student or teacher. The file itself is
    only read: a refused checkpoint is left exactly as it was.
    """
    fix = f"it was left as it is: choose another --out, or move or delete {path} to start over"
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise BlazeportError(f"cannot read {path} ({exc.strerror or exc}); {fix}") from None
    except pickle.UnpicklingError as exc:
        # torch's weights-only unpickler refused it before building (let alone running) anything
        if "numpy" in str(exc) and "multiarray" in str(exc):  # version 1 stored numpy's RNG state as an array
            raise BlazeportError(
                f"{path} looks like a checkpoint of an older blazeport, which stored numpy arrays that cannot be read "
                f"without a full unpickle (nothing in it was run); {fix}") from None
        raise BlazeportError(
            f"{path} is not a blazeport checkpoint: it is corrupted or holds Python objects other than tensors and "
            f"plain values, which are refused unread (nothing in it was run); {fix}") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, ValueError... for broken archives
        raise BlazeportError(
            f"{path} is not a readable checkpoint (truncated or not a torch file: {type(exc).__name__}); {fix}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_MARK:
        raise BlazeportError(f"{path} is not a checkpoint written by `blazeport distill`; {fix}")
    if ckpt.get("version") not in READABLE_VERSIONS:
        raise BlazeportError(f"{path} is a checkpoint of format version {ckpt.get('version')!r}; this blazeport reads "
                             f"versions {', '.join(map(str, READABLE_VERSIONS))} only; {fix}")
    problem = _checkpoint_problem(ckpt)
    if problem:
        raise BlazeportError(f"{path} is a damaged checkpoint ({problem}); {fix}")
    saved = ckpt["config"]
    if saved.get("student") != cfg.student or _spec_name(saved.get("teacher")) != _spec_name(cfg.teacher):
        raise BlazeportError(
            f"{path} is a checkpoint of --student {saved.get('student')} --teacher {saved.get('teacher')}, not of "
            f"--student {cfg.student} --teacher {cfg.teacher}; resume with those, or {fix}")
    return ckpt


def _checkpoint_problem(ckpt: dict[str, Any]) -> str | None:
    """What is missing or of the wrong type in a loaded checkpoint, or None."""
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        return f"no {', '.join(missing)}"
    expected = {"model": dict, "optimizer": dict, "scheduler": dict, "scaler": dict, "rng": dict, "epoch": int,
                "history": list, "best": (int, float), "config": dict}
    for key, kind in expected.items():
        if not isinstance(ckpt[key], kind) or isinstance(ckpt[key], bool):
            return f"{key} is a {type(ckpt[key]).__name__}"
    if not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        return "model holds values that are not tensors"
    if not {"state", "param_groups"} <= ckpt["optimizer"].keys():
        return "optimizer state incomplete"
    rng = ckpt["rng"]
    if not ({"python", "numpy", "torch"} <= rng.keys() and isinstance(rng["torch"], torch.Tensor)
            and isinstance(rng["numpy"], dict) and isinstance(rng["numpy"].get("key"), torch.Tensor)):
        return "RNG state incomplete"
    if ckpt["epoch"] < 0 or not all(isinstance(h, dict) for h in ckpt["history"]):
        return "epoch or history malformed"
    return Position.problem(ckpt.get("position"))
