"""Validation: the teacher against its original before training, the student against the teacher each epoch.

- :func:`check_teacher` runs the converted teacher and its ``.tflite`` (LiteRT) on a real photo
  through :func:`blazeport.modelfiles.verify.verify`, the same gate as ``blazeport convert``, and refuses a
  teacher whose weights did not load.
- :func:`validate` measures the student against the teacher on the held-out images: MAE of raw
  regressors and sigmoid scores, and COCO AP50 / AP (pycocotools) of the student's detections
  with the teacher's as references. AP50 chooses ``best.pt``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from blazeport.errors import BlazeportError
from blazeport.modelfiles.backends import TFLiteBackend, TorchBackend
from blazeport.modelfiles.verify import verify
from blazeport.pipeline.evaluate import breakdown, coco_ap
from blazeport.pipeline.photos import sample_images
from blazeport.pipeline.postprocess import postprocess
from blazeport.pipeline.preprocess import Letterbox
from blazeport.specs import WEIGHTS_DIR, ModelSpec

__all__ = ["AP_PREDICTION_THRESHOLD", "breakdown", "check_teacher", "validate"]

# Student detections enter AP with a score threshold below the spec's, so the precision-recall
# curve is not cut short (COCO evaluates ranked detections); references use the spec's own.
AP_PREDICTION_THRESHOLD = 0.25


def check_teacher(spec: ModelSpec, module: nn.Module) -> dict[str, Any]:
    """Run the converted teacher and its original ``.tflite`` on a real photo; raise if they differ."""
    if spec.tflite is None:
        raise BlazeportError(f"teacher {spec.name} has no original .tflite to check it against; use a converted original")
    check = verify(TorchBackend(module), TFLiteBackend(WEIGHTS_DIR / spec.tflite), spec, sample_images(("astronaut",)))
    if not check["passes_gate"]:
        raise BlazeportError(
            f"teacher {spec.name} does not match {spec.tflite} on a real photo (max |diff| {check['max_abs_diff']}): its "
            f"weights did not load correctly. Re-run `blazeport convert weights/{spec.tflite}` and try again."
        )
    return check


@torch.no_grad()
def validate(student: nn.Module, teacher: nn.Module, batches: list[torch.Tensor], spec: ModelSpec,
             anchors: np.ndarray, prefix: str = "val_", by_size: bool = False) -> dict[str, Any]:
    """MAE of raw regressors and sigmoid scores against the teacher, and AP50/AP of the student's
    detections against the teacher's (pycocotools), on held-out images (keys start with ``prefix``:
    ``val_`` for the split that chooses ``best.pt``, ``test_`` for the one that never chooses).
    ``by_size`` adds :func:`breakdown` under ``PREFIX + "breakdown"``."""
    student.eval()
    reg_err, score_err, n = 0.0, 0.0, 0
    preds, refs = [], []
    for x in batches:
        s_reg, s_cls = (t.float() for t in student(x))
        t_reg, t_cls = (t.float() for t in teacher(x))
        reg_err += (s_reg - t_reg).abs().mean().item() * len(x)
        clip = spec.score_clip
        s_score, t_score = torch.sigmoid(s_cls.clamp(-clip, clip)), torch.sigmoid(t_cls.clamp(-clip, clip))
        score_err += (s_score - t_score).abs().mean().item() * len(x)
        n += len(x)
        pads = [Letterbox(0, 0, 0, 0)] * len(x)  # compared in the model's input frame
        preds += postprocess(s_reg.cpu().numpy(), s_cls.cpu().numpy(), anchors, spec, pads, AP_PREDICTION_THRESHOLD)
        refs += postprocess(t_reg.cpu().numpy(), t_cls.cpu().numpy(), anchors, spec, pads)
    ap = coco_ap(preds, [[d.box for d in dets] for dets in refs], [(spec.input_size, spec.input_size)] * len(preds))
    found = {"mae_regressors": reg_err / n, "mae_scores": score_err / n, "AP50": ap["AP50"], "AP": ap["AP"],
             "faces": ap["references"]}
    if by_size:
        found["breakdown"] = breakdown(preds, refs, spec.input_size)
    return {prefix + k: v for k, v in found.items()}
