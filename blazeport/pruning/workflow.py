"""``blazeport prune``'s workflow: a student file in, a verified pruned file out, and how far the
pruned student's detections moved. The algorithm (ranking, plans, :func:`~blazeport.pruning.prune.prune`,
the width replay a loader needs) lives in :mod:`blazeport.pruning.prune`, which imports nothing of
the pipeline: :mod:`blazeport.modelfiles.weights` replays a pruned file's widths through it, and this module,
which opens, evaluates and writes files, sits above both.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blazeport.errors import BlazeportError
from blazeport.export import protected_inputs
from blazeport.files import check_output, staged
from blazeport.modelfiles.backends import TorchBackend
from blazeport.modelfiles.loader import open_module
from blazeport.modelfiles.weights import load_safetensors, save_safetensors
from blazeport.pipeline.detector import Detector
from blazeport.pipeline.evaluate import agreement_with_teacher
from blazeport.pipeline.photos import sample_images
from blazeport.pruning.prune import batchnorms, prune, smallest_ratio

__all__ = ["prune_file"]


def prune_file(model: str, out: str, *, ratio: float | None = None, macs: float | None = None, round_to: int = 8,
               images: list[Any] | None = None, trust_code: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Prune a student file into ``out``, verified: the written file must reload into the pruned
    network with identical outputs before it replaces anything. The report adds how far the pruned
    (not yet fine-tuned) student's detections are from the unpruned one's (COCO AP50 / AP on real
    photos, the unpruned detections as references): what fine-tuning has to recover. ``trust_code`` as
    :func:`blazeport.load`; ``overwrite`` replaces an existing ``out`` (else refused before any work)."""
    module, spec, source = open_module(model, trust_code=trust_code)
    if Path(out).suffix != ".safetensors":
        raise BlazeportError(f"{out}: a pruned student is written as .safetensors; choose another -o name")
    check_output(out, protected_inputs(source, spec), "pruned student", overwrite)
    if not batchnorms(module):
        raise BlazeportError(f"{source}: {spec.name} has no BatchNorm layers to rank channels by; prune a student from "
                             "`blazeport distill` (ideally trained with --sparsity 1e-4)")
    pruned, report = prune(module, spec.input_size, ratio=ratio, macs=macs, round_to=round_to)
    if report["channels_removed"] == 0:  # the file would be the source under a new name
        _refuse_no_change(module, spec.input_size, ratio, macs, round_to, report["channels_prunable"])
    tag = f"{round(ratio * 100)}" if ratio is not None else f"{report['macs_after'] / 1e6:.0f}M"
    p_spec = replace(spec, name=f"{spec.name}_pruned{tag}",
                     description=f"{spec.description}; channels pruned by BatchNorm |gamma| ({tag}), before fine-tuning")
    with staged(out, overwrite) as stage:
        save_safetensors(pruned, p_spec, stage.path, extra={"teacher": spec.teacher or "", "prune": _provenance(report, source)})
        _check_reload(stage.path, pruned, spec.input_size, trust_code)
        stage.commit()
    images = images if images is not None else sample_images()  # (TorchBackend makes the modules channels-last)
    agreement = agreement_with_teacher(Detector(spec, TorchBackend(pruned)), Detector(spec, TorchBackend(module)), images)
    # AP is nan when the unpruned student finds no face (no references): null in JSON, not NaN (not JSON at all)
    measured = {k: None if math.isnan(agreement[k]) else agreement[k] for k in ("AP50", "AP")}
    return {"source": str(source), "output": str(out), "spec": p_spec.name, **report,
            "agreement_with_unpruned": {**measured, "references": agreement["references"]}, "images": len(images)}


def _refuse_no_change(module: nn.Module, size: int, ratio: float | None, macs: float | None, round_to: int,
                      prunable: int) -> None:
    """A request that removes no channel is a mistake (``--ratio 1e-9``): say so, and which ratio
    would remove one, before a ``_pruned0`` copy of the source is written."""
    asked = f"--ratio {ratio:g}" if ratio is not None else f"--macs {macs:,.0f}"
    least = smallest_ratio(module, size, round_to)
    hint = (f"the smallest --ratio that removes any is {least:.3f}" if least is not None
            else "no ratio removes any here; lower --round-to")
    raise BlazeportError(f"{asked} removes none of the {prunable} prunable channels: rounded up to a multiple of "
                         f"{round_to}, every layer keeps its full width; {hint}. Nothing written.")


def _provenance(report: dict[str, Any], source: Any) -> str:
    keep = ("ratio_requested", "macs_requested", "round_to", "ratio_achieved", "macs_before", "macs_after")
    return json.dumps({"from": str(source), **{k: report[k] for k in keep}}, sort_keys=True)


def _check_reload(path: Any, pruned: nn.Module, size: int, trust_code: bool = False) -> None:
    reloaded, _ = load_safetensors(path, trust_code)
    x = torch.linspace(-1, 1, 3 * size * size).reshape(1, 3, size, size)
    with torch.no_grad():
        same = all(torch.equal(a, b) for a, b in zip(reloaded(x), pruned.eval()(x), strict=True))
    if not same:
        raise BlazeportError(f"{path}: the written pruned student does not reload into the same network; nothing written")
