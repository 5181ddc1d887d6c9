"""The loss terms ``--loss`` accepts, as one table, and :class:`LossConfig` parsed against it.

:data:`TERMS` is the single list of loss terms: ``--loss`` parsing, its error for an unknown
name, :meth:`LossConfig.describe` and the term list in ``blazeport distill --help`` all read it,
and :mod:`blazeport.distill.losses` implements each elementary term under its name here (it
refuses to import if one is missing). This module imports no torch, so the CLI builds its help
on a board that has only a runtime backend.

``--loss`` takes a ``+``-joined list of terms with optional weights (``recipe``, ``hinton+box``,
``recipe+mgd=0.5``). A composite term (``recipe``) expands into elementary terms at parse time,
its weight multiplying theirs; a term named twice adds up.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from blazeport.errors import BlazeportError


@dataclass(frozen=True)
class Term:
    """One ``--loss`` term: its name, what it computes, and, for a composite, what it stands for."""

    name: str
    meaning: str  # one line
    parts: Callable[[float], dict[str, float]] | None = None  # a composite's terms and weights, given alpha
    needs_features: bool = False  # reads the head's input feature maps of teacher and student


# In the order DistillLoss computes them (which fixes how the weighted total is summed).
TERMS: dict[str, Term] = {t.name: t for t in (
    Term("recipe", "alpha * kl + (1 - alpha) * score + box (alpha 0.6), the write-up's mix",
         parts=lambda alpha: {"kl": alpha, "score": 1 - alpha, "box": 1.0}),
    Term("kl", "softmax over anchors at temperature T, KL(teacher || student) * T^2"),
    Term("score", "BCE between student and teacher sigmoid scores per anchor"),
    Term("score_l1", "L1 between student and teacher sigmoid scores per anchor"),
    Term("score_faces", "BCE per anchor weighted 1 + 20 * max(teacher, student score): the anchors where either sees a "
         "face, not the ~98% background, decide it"),
    Term("hinton", "per-anchor Hinton KD on the sigmoid at temperature T, times T^2"),
    Term("box", "L1 on boxes and keypoints decoded with the anchors, in input pixels, weighted by the teacher's score"),
    Term("mgd", "Masked Generative Distillation on one feature level of the head's inputs", needs_features=True),
    Term("hard", "SSD loss on the teacher's post-NMS detections as pseudo-labels"),
)}

ELEMENTARY = tuple(name for name, term in TERMS.items() if term.parts is None)


@dataclass
class LossConfig:
    terms: dict[str, float] = field(default_factory=lambda: {"kl": 0.6, "score": 0.4, "box": 1.0})
    temperature: float = 2.0
    box_metric: str = "l1"  # or "mse"
    mgd_ratio: float = 0.65
    mgd_alpha: float = 2e-5
    mgd_level: int = -1  # which head level's feature map
    hard_threshold: float = 0.5
    hard_iou: float = 0.5

    @classmethod
    def parse(cls, text: str, **kwargs: float) -> LossConfig:
        """``recipe``, ``hinton+box``, ``kl=0.6+score=0.4+box=1+mgd=0.5`` -> LossConfig."""
        alpha = float(kwargs.pop("alpha", 0.6))
        terms: dict[str, float] = {}
        for part in filter(None, re.split(r"[+,]", text.replace(" ", ""))):
            name, _, weight = part.partition("=")
            try:
                w = float(weight) if weight else 1.0
            except ValueError:
                w = math.nan
            if not (math.isfinite(w) and w >= 0):  # a NaN or negative weight would train on nonsense or diverge
                raise BlazeportError(f"loss term {part!r} in {text!r}: the weight must be a finite number >= 0")
            if name not in TERMS:
                raise BlazeportError(f"unknown loss term {name!r} in {text!r}; terms: {', '.join(TERMS)}")
            parts = TERMS[name].parts
            for k, v in (parts(alpha) if parts else {name: 1.0}).items():
                terms[k] = terms.get(k, 0.0) + v * w
        if not any(terms.values()):
            raise BlazeportError(f"--loss {text!r} names no loss term with a weight above 0")
        return cls(terms=terms, **kwargs)

    @property
    def needs_features(self) -> bool:
        """Whether a term reads feature maps (the trainer then runs features() and head() apart)."""
        return any(TERMS[name].needs_features for name in self.terms)

    def describe(self) -> str:
        return "+".join(f"{k}={v:g}" for k, v in self.terms.items())
