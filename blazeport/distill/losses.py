"""The distillation loss: each ``--loss`` term of :mod:`blazeport.distill.loss_terms`, in torch.

:class:`DistillLoss` computes the terms a :class:`LossConfig` names, each by the function
registered under its name with :func:`_term` (a name missing from the table, or a table entry
without a function, stops the import), and their weighted total. The terms:

- ``kl``: the write-up's class term: logits clamped to +-100, softmax over *anchors* at
  temperature T for teacher and student, ``KL(teacher || student) * T^2``.
- ``score``: BCE between student and teacher sigmoid scores per anchor (``score_l1`` for L1).
- ``box``: L1 (or MSE) between student and teacher boxes and keypoints *decoded with the
  anchors*, in input pixels, weighted per anchor by the teacher's score so background anchors'
  meaningless regressions do not dominate. Comparing raw regressors worked poorly in the
  write-up.
- ``recipe``: ``alpha * kl + (1 - alpha) * score + box`` (alpha 0.6), the write-up's mix
  (expanded into those three terms when ``--loss`` is parsed).
- ``hinton``: per-anchor Hinton KD on the sigmoid: BCE(sigmoid(z_s / T), sigmoid(z_t / T)) * T^2.
- ``mgd``: Masked Generative Distillation (Yang et al., ECCV 2022) on one feature level: mask
  ~65% of the (channel-aligned) student map, regenerate the teacher's with two 3x3 convs,
  summed squared error / batch, times ``mgd_alpha``.
- ``hard``: SSD-style loss on the teacher's post-NMS detections as hard pseudo-labels: anchors
  matched by IoU of their SSD-sized boxes (best anchor per face plus IoU >= 0.5), BCE on logits
  with 3:1 hard-negative mining, L1 on decoded coordinates of positives (:func:`ssd_loss`).

With ``--boxes`` (hand-drawn faces, :mod:`blazeport.distill.labels`) the loss is mixed per sample as
in Hinton's KD: a labelled sample weighs the terms above by ``1 - alpha`` and adds ``alpha`` times
:func:`ssd_loss` against its own boxes (logged as ``labels``); an unlabelled one keeps weight 1 and no
``labels`` term. Every term therefore reduces per sample first (``Outputs.weight``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from blazeport.distill.loss_terms import ELEMENTARY, LossConfig
from blazeport.errors import BlazeportError
from blazeport.pipeline.anchors import generate_anchors
from blazeport.pipeline.postprocess import decode_boxes, nms

__all__ = ["DistillLoss", "LossConfig", "ssd_anchor_boxes", "ssd_loss"]


def ssd_anchor_boxes(anchors: np.ndarray, opts: object) -> np.ndarray:
    """xyxy boxes of the anchors at their SSD scale (used only to match pseudo-labels).

    The face models use ``fixed_anchor_size`` (w = h = 1 in the table), which says nothing about
    which anchor should own a face; the SSD scales of the same options do.
    """
    sized = generate_anchors(dataclasses.replace(opts, fixed_anchor_size=False))
    xc, yc, w, h = sized.T
    assert np.allclose(sized[:, :2], anchors[:, :2])
    return np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], 1).astype(np.float32)


def _iou_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


@dataclass
class Outputs:
    """One batch of student and teacher outputs, in the forms the terms share."""

    s_reg: torch.Tensor  # (B, N, 16) float32 raw regressors
    t_reg: torch.Tensor
    zs: torch.Tensor  # (B, N) float32 logits clamped to the spec's score clip
    zt: torch.Tensor
    pt: torch.Tensor  # (B, N) teacher sigmoid scores
    s_feats: list[torch.Tensor] | None  # the head's input maps (terms that need_features)
    t_feats: list[torch.Tensor] | None
    weight: torch.Tensor | None = None  # (B,) each sample's weight in the distillation terms (--boxes), None: 1

    def batch(self, per_sample: torch.Tensor) -> torch.Tensor:
        """A term's per-sample values (B,) -> the batch's: their mean, each sample weighted."""
        return (per_sample * self.weight).mean() if self.weight is not None else per_sample.mean()

    def per_anchor(self, values: torch.Tensor) -> torch.Tensor:
        """(B, N) values with each sample's weight applied (for terms normalized over the whole batch)."""
        return values * self.weight[:, None] if self.weight is not None else values


TermFn = Callable[["DistillLoss", Outputs], torch.Tensor]
_IMPLEMENTATIONS: dict[str, TermFn] = {}


def _term(name: str) -> Callable[[TermFn], TermFn]:
    """Register ``fn`` as the implementation of the elementary term ``name`` of the table."""

    def register(fn: TermFn) -> TermFn:
        if name not in ELEMENTARY:
            raise ValueError(f"{name!r} is not an elementary loss term of blazeport.distill.loss_terms.TERMS")
        _IMPLEMENTATIONS[name] = fn
        return fn

    return register


class DistillLoss(nn.Module):
    """Computes the configured terms; owns the trainable MGD aligner and generator."""

    def __init__(self, cfg: LossConfig, anchors: np.ndarray, spec: object,
                 student_channels: list[int] | tuple[int, ...] | None = None,
                 teacher_channels: list[int] | tuple[int, ...] | None = None, labels_alpha: float | None = None):
        super().__init__()
        self.cfg = cfg
        self.labels_alpha = labels_alpha  # --boxes-alpha when --boxes is given
        self.size = float(spec.input_size)
        self.clip = float(spec.score_clip)
        self.nms_threshold = float(spec.nms.min_suppression_threshold)
        self.register_buffer("anchors", torch.from_numpy(anchors.astype(np.float32)), persistent=False)
        if "hard" in cfg.terms or labels_alpha is not None:
            self.register_buffer("anchor_boxes", torch.from_numpy(ssd_anchor_boxes(anchors, spec.anchors)), persistent=False)
        if "mgd" in cfg.terms:
            if not student_channels or not teacher_channels:
                raise BlazeportError("the mgd loss needs feature maps from both teacher and student (BlazeFace-family teacher)")
            cs, ct = student_channels[cfg.mgd_level], teacher_channels[cfg.mgd_level]
            self.align = nn.Conv2d(cs, ct, 1) if cs != ct else nn.Identity()
            self.generator = nn.Sequential(
                nn.Conv2d(ct, ct, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(ct, ct, 3, padding=1)
            )

    def decoded(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw regressors -> boxes and keypoints decoded with the anchors, (B, N, 16) in input pixels."""
        boxes, kps = decode_boxes(raw, self.anchors, self.size)
        return torch.cat([boxes, kps.flatten(-2)], -1) * self.size

    def forward(self, student: tuple[torch.Tensor, torch.Tensor], teacher: tuple[torch.Tensor, torch.Tensor],
                s_feats: list[torch.Tensor] | None = None, t_feats: list[torch.Tensor] | None = None,
                labels: list[torch.Tensor | None] | None = None) -> dict[str, torch.Tensor]:
        """Each configured term by name (in the table's order), and their weighted ``total``; with ``labels``
        (per sample: its hand-drawn faces as (M, 16) input pixels, or None) also the ``labels`` term."""
        (s_reg, s_cls), (t_reg, t_cls) = student, teacher
        zt = t_cls[..., 0].float().clamp(-self.clip, self.clip)
        o = Outputs(s_reg=s_reg.float(), t_reg=t_reg.float(), zs=s_cls[..., 0].float().clamp(-self.clip, self.clip),
                    zt=zt, pt=torch.sigmoid(zt), s_feats=s_feats, t_feats=t_feats)
        labelled = [i for i, faces in enumerate(labels or []) if faces is not None]
        if self.labels_alpha is not None and labels is not None:
            o.weight = torch.ones(len(o.zs), device=o.zs.device)
            o.weight[labelled] = 1.0 - self.labels_alpha  # Hinton: (1 - alpha) * soft where there are hard labels
        out = {name: _IMPLEMENTATIONS[name](self, o) for name in ELEMENTARY if name in self.cfg.terms}
        total = sum(self.cfg.terms[k] * v for k, v in out.items())
        if self.labels_alpha is not None:
            hard = [sum(ssd_loss(self, o.zs[b], self.decoded(o.s_reg[b : b + 1])[0], labels[b].float())) for b in labelled]
            out["labels"] = self.labels_alpha * sum(hard, o.zs.sum() * 0) / len(o.zs)  # per batch sample, as the others
            total = total + out["labels"]
        out["total"] = total
        return out

    @torch.no_grad()
    def pseudo_labels(self, t_reg: torch.Tensor, pt: torch.Tensor) -> list[torch.Tensor]:
        """Teacher detections after threshold + weighted NMS, as (M, 16) normalized targets."""
        boxes, kps = decode_boxes(t_reg, self.anchors, self.size)
        labels = []
        for b in range(t_reg.shape[0]):
            keep = (pt[b] >= self.cfg.hard_threshold).nonzero()[:, 0]
            bx, kp, _ = nms(boxes[b, keep].cpu().numpy(), kps[b, keep].cpu().numpy(), pt[b, keep].cpu().numpy(),
                            self.nms_threshold)
            flat_kp = kp.reshape(kp.shape[0], kp.shape[1] * kp.shape[2])  # (M, 12), M may be 0
            labels.append(torch.from_numpy(np.concatenate([bx, flat_kp], 1)).to(t_reg.device))
        return labels


@_term("kl")
def _kl(loss: DistillLoss, o: Outputs) -> torch.Tensor:
    T = loss.cfg.temperature
    per = F.kl_div(F.log_softmax(o.zs / T, -1), F.log_softmax(o.zt / T, -1), log_target=True, reduction="none")
    return o.batch(per.sum(-1)) * T * T


@_term("score")
def _score(loss: DistillLoss, o: Outputs) -> torch.Tensor:
    return o.batch(F.binary_cross_entropy_with_logits(o.zs, o.pt, reduction="none").mean(-1))


@_term("score_faces")
def _score_faces(loss: DistillLoss, o: Outputs) -> torch.Tensor:
    # A plain mean over anchors gives a borderline face (teacher 0.5-0.8, where students disagree
    # most) about 1/900 of an image's weight; weighting by either model's score puts it on the faces
    # the teacher keeps and on the student's false ones.
    weight = 1.0 + 20.0 * torch.maximum(o.pt, torch.sigmoid(o.zs).detach())
    bce = F.binary_cross_entropy_with_logits(o.zs, o.pt, reduction="none")
    return (o.per_anchor(bce * weight)).sum() / weight.sum()


@_term("score_l1")
def _score_l1(loss: DistillLoss, o: Outputs) -> torch.Tensor:
    return o.batch((torch.sigmoid(o.zs) - o.pt).abs().mean(-1))


@_term("hinton")
def _hinton(loss: DistillLoss, o: Outputs) -> torch.Tensor:
    T = loss.cfg.temperature
    return o.batch(F.binary_cross_entropy_with_logits(o.zs / T, torch.sigmoid(o.zt / T), reduction="none").mean(-1)) * T * T


@_term("box")
def _box(loss: DistillLoss, o: Outputs) -> torch.Tensor:
    diff = loss.decoded(o.s_reg) - loss.decoded(o.t_reg)
    per_anchor = diff.abs().mean(-1) if loss.cfg.box_metric == "l1" else diff.pow(2).mean(-1)
    return (o.per_anchor(per_anchor * o.pt)).sum() / o.pt.sum().clamp(min=1.0)


@_term("mgd")
def _mgd(loss: DistillLoss, o: Outputs) -> torch.Tensor:
    cfg = loss.cfg
    fs, ft = loss.align(o.s_feats[cfg.mgd_level].float()), o.t_feats[cfg.mgd_level].float()
    keep = (torch.rand(fs.shape[0], 1, *fs.shape[2:], device=fs.device) >= cfg.mgd_ratio).to(fs.dtype)
    return o.batch((loss.generator(fs * keep) - ft).pow(2).flatten(1).sum(-1)) * cfg.mgd_alpha


@_term("hard")
def _hard(loss: DistillLoss, o: Outputs) -> torch.Tensor:
    labels = loss.pseudo_labels(o.t_reg, o.pt)
    decoded = loss.decoded(o.s_reg)
    cls_losses, box_losses = [], []
    for b, gt in enumerate(labels):
        cls, box = ssd_loss(loss, o.zs[b], decoded[b], gt * loss.size)
        w = o.weight[b] if o.weight is not None else 1.0
        cls_losses.append(cls * w)
        if len(gt):
            box_losses.append(box * w)
    box = torch.stack(box_losses).mean() if box_losses else o.zs.sum() * 0
    return torch.stack(cls_losses).mean() + box


def ssd_loss(loss: DistillLoss, logits: torch.Tensor, decoded: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                          torch.Tensor]:
    """SSD's loss of one sample against its faces (SSD, Liu et al., ECCV 2016): (classification, box).

    ``logits`` (N,), ``decoded`` (N, 16) the student's boxes and keypoints decoded with the anchors, and
    ``faces`` (M, 16) in input pixels (keypoints NaN where unknown). Matching as MediaPipe's SSD detectors
    were trained (TF Object Detection API's ``ArgMaxMatcher`` with ``force_match_for_each_row``): on the
    spec's anchors at their SSD scales (:func:`ssd_anchor_boxes`; the face models' fixed anchor size says
    nothing about which anchor owns a face), an anchor is positive where its IoU with a face is >= 0.5, and
    every face gets its best anchor. Classification: BCE on the logits, positives and the hardest
    negatives at 3:1 (at least 8), normalized by their count. Box: L1 between decoded coordinates and the
    face's, in input pixels, over the positives and the known keypoints: what the ``box`` term compares
    with the teacher."""
    target = torch.zeros_like(logits)
    box = logits.sum() * 0
    if len(faces):
        iou = _iou_matrix(loss.anchor_boxes, faces[:, :4] / loss.size)  # (N, M)
        best_iou, owner = iou.max(1)
        positive = best_iou >= loss.cfg.hard_iou
        positive[iou.argmax(0)] = True  # every face gets its best anchor
        owner[iou.argmax(0)] = torch.arange(len(faces), device=faces.device)
        target[positive] = 1.0
        want = faces[owner[positive]]
        known = ~torch.isnan(want)
        box = (decoded[positive] - torch.nan_to_num(want)).abs()[known].mean()
    n_pos = int(target.sum())
    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    n_neg = min(max(3 * n_pos, 8), int((target == 0).sum()))
    hard_neg = per.masked_fill(target > 0, -1.0).topk(n_neg).values
    return (per[target > 0].sum() + hard_neg.sum()) / max(n_pos + n_neg, 1), box


if set(_IMPLEMENTATIONS) != set(ELEMENTARY):  # the table and the implementations must name the same terms
    raise ImportError(f"loss terms without an implementation: {sorted(set(ELEMENTARY) - set(_IMPLEMENTATIONS))}")
