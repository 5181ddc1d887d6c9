"""Students from any backbone: the teacher's SSD head on a backbone's feature maps.

A *backbone* (:mod:`blazeport.models.backbones`: registered, timm or the user's own) returns a
list of NCHW feature maps, shallow to deep (timm's ``features_only`` contract). :func:`plan`
probes it once at the teacher's input size for each map's channels and stride; :class:`Student`
then attaches a top-down neck (1x1 lateral adapters where channels differ, nearest upsampling and
addition, as in FPN) and the teacher's SSD head at the strides of the teacher's anchors
(:func:`blazeport.pipeline.anchors.head_layout`). A module that already meets the head contract
(``(B, 3, S, S)`` in [-1, 1] -> regressors ``(B, N, 16)``, classificators ``(B, N, 1)``) is used
as is. Either way the anchor count is checked against the spec before any training step.

:class:`StudentConfig` records the backbone's source, so a student's ``.safetensors`` reloads
from the file alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blazeport.errors import BlazeportError
from blazeport.models.backbones import (
    REGISTERED,
    BackboneSource,
    backbone_families,
    imported_backbone,
    make_backbone,
    parse_student,
    timm_backbone,
)
from blazeport.models.blocks import SSDHead
from blazeport.models.resnet import STUDENTS, ConvBN, ResNetBlazeFace
from blazeport.pipeline.anchors import head_layout
from blazeport.specs import ModelSpec

__all__ = ["NECK_CHANNELS", "Student", "StudentConfig", "build_student", "plan"]

NECK_CHANNELS = 64  # width of the neck and of the head's inputs for timm and imported backbones


@dataclass(frozen=True)
class StudentConfig:
    """A student: its backbone's source, which backbone maps feed the neck, and the head layout."""

    input_size: int
    backbone: BackboneSource
    head_strides: tuple[int, ...]
    head_anchors: tuple[int, ...]
    taps: tuple[int, ...] = ()  # indices of the backbone's maps the neck reads, shallow to deep
    tap_channels: tuple[int, ...] = ()
    tap_strides: tuple[int, ...] = ()
    neck_channels: int = NECK_CHANNELS
    as_is: bool = False  # the backbone meets the head contract itself
    num_coords: int = 16

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StudentConfig:
        d = json.loads(text)
        src = d.pop("backbone")
        if not isinstance(src, dict) or not isinstance(src.get("kwargs", {}), dict):
            raise BlazeportError("student config: backbone must be an object with kind, name, config, kwargs")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(backbone=BackboneSource(**src), **d)


def _probe(module: nn.Module, size: int, what: str) -> Any:
    """One zero input through ``module`` (eval mode, no gradients), with its failure as one message."""
    was = module.training
    try:
        with torch.no_grad():
            return module.eval()(torch.zeros(1, 3, size, size))
    except Exception as exc:
        raise BlazeportError(f"{what}: its forward failed on a (1, 3, {size}, {size}) input "
                             f"({type(exc).__name__}: {exc})") from None
    finally:
        module.train(was)


def _as_maps(out: Any) -> list[torch.Tensor] | None:
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)) and out and all(isinstance(t, torch.Tensor) and t.ndim == 4 for t in out):
        return list(out)
    return None


def plan(src: BackboneSource, backbone: nn.Module, spec: ModelSpec, neck_channels: int = NECK_CHANNELS) -> StudentConfig:
    """Probe ``backbone`` and lay the neck and head over its maps; every way it cannot meet the
    teacher's head is one :class:`BlazeportError` naming what it has and what is needed."""
    size, what = spec.input_size, src.describe()
    layout = head_layout(spec.anchors)
    strides, anchors = tuple(s for s, _ in layout), tuple(a for _, a in layout)
    out = _probe(backbone, size, what)
    if isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) and t.ndim == 3 for t in out):
        reg, cls = out
        if reg.shape[1:] != (spec.num_anchors, spec.num_coords) or cls.shape[1:] != (spec.num_anchors, 1):
            raise BlazeportError(f"{what}: returns regressors {tuple(reg.shape)} and classificators {tuple(cls.shape)}; "
                                 f"teacher {spec.name} has {spec.num_anchors} anchors: (1, {spec.num_anchors}, "
                                 f"{spec.num_coords}) and (1, {spec.num_anchors}, 1) are needed")
        return StudentConfig(size, src, strides, anchors, as_is=True, num_coords=spec.num_coords)
    maps = _as_maps(out)
    if maps is None:
        got = type(out).__name__ if not isinstance(out, torch.Tensor) else f"one tensor {tuple(out.shape)}"
        raise BlazeportError(f"{what}: returned {got}; a backbone returns a list of (B, C, H, W) feature maps, shallow to "
                             "deep, or meets the head contract (regressors (B, N, 16), classificators (B, N, 1))")
    found: dict[int, int] = {}  # stride -> index of the deepest map at that stride
    for i, m in enumerate(maps):
        if m.shape[-1] == 0 or size % m.shape[-1] or m.shape[-2] != m.shape[-1]:
            continue
        found[size // m.shape[-1]] = i
    missing = [s for s in strides if s not in found]
    if missing:
        raise BlazeportError(f"{what}: teacher {spec.name} needs feature maps at stride {', '.join(map(str, strides))} of a "
                             f"{size}px input, the backbone has {', '.join(map(str, sorted(found))) or 'none'} "
                             f"(missing {', '.join(map(str, missing))})")
    tap_strides = [s for s in sorted(found) if s >= min(strides)]
    # the top-down path doubles sizes: stop at the first deeper map that is not an exact multiple
    kept = [tap_strides[0]]
    for s in tap_strides[1:]:
        if s % kept[-1] or math.ceil(size / kept[-1]) != math.ceil(size / s) * (s // kept[-1]):
            break
        kept.append(s)
    if not set(strides) <= set(kept):
        raise BlazeportError(f"{what}: its maps at strides {kept} and {tap_strides[len(kept)]} do not line up for "
                             "upsampling by a whole factor")
    taps = tuple(found[s] for s in kept)
    return StudentConfig(size, src, strides, anchors, taps, tuple(maps[i].shape[1] for i in taps), tuple(kept), neck_channels,
                         num_coords=spec.num_coords)


class Student(nn.Module):
    """backbone -> top-down neck (1x1 adapters, upsample + add, depthwise 3x3) -> the teacher's SSD head."""

    family = "student"

    def __init__(self, config: StudentConfig, backbone: nn.Module | None = None, trust_code: bool = False):
        """``backbone``: the instance to use; else it is rebuilt from ``config``, which for the user's own
        code needs ``trust_code`` (:func:`~blazeport.models.backbones.make_backbone`)."""
        super().__init__()
        self.config = config
        self.backbone = backbone if backbone is not None else make_backbone(config.backbone, trust_code)
        if config.as_is:
            return
        c = config.neck_channels
        self.lateral = nn.ModuleList(nn.Identity() if ch == c else ConvBN(ch, c, 1) for ch in config.tap_channels)
        self.smooth = nn.ModuleList(ConvBN(c, c, 3, groups=c) for _ in config.head_strides)
        self.head = SSDHead((c,) * len(config.head_strides), config.head_anchors, config.num_coords)

    @property
    def feature_channels(self) -> tuple[int, ...]:
        if self.config.as_is:
            return tuple(getattr(self.backbone, "feature_channels", ()))
        return tuple(conv.in_channels for conv in self.head.cls)  # the config's neck width, or a pruned one

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The head's input maps, one per head stride (the ``mgd`` loss reads these)."""
        if self.config.as_is:
            return self.backbone.features(x)
        out = self.backbone(x)
        maps = list(out.values()) if isinstance(out, dict) else out
        cfg = self.config
        taps = [maps[i] for i in cfg.taps]
        p = self.lateral[-1](taps[-1])  # (B, C, S/s_max, S/s_max)
        levels = {cfg.tap_strides[-1]: p}
        for i in range(len(taps) - 2, -1, -1):
            up = cfg.tap_strides[i + 1] // cfg.tap_strides[i]
            p = F.interpolate(p, scale_factor=up, mode="nearest") + self.lateral[i](taps[i])  # (B, C, 2H, 2W)
            levels[cfg.tap_strides[i]] = p
        return [F.relu(smooth(levels[s])) for smooth, s in zip(self.smooth, cfg.head_strides, strict=True)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.as_is:
            return self.backbone(x)
        return self.head(self.features(x))


def _registered(name: str, spec: ModelSpec) -> nn.Module:
    family, neck = REGISTERED[name]
    if family == "resnet" and spec.input_size == 128 and head_layout(spec.anchors) == [(8, 2), (16, 6)]:
        return ResNetBlazeFace(STUDENTS[name])  # short range: the shipped students' own layout (head on stages 2, 3)
    _, backbone_cls, variants = backbone_families()[family]
    config = variants[name]
    src = BackboneSource("registered", family, config.to_json())
    backbone = backbone_cls(config)
    return Student(plan(src, backbone, spec, neck), backbone)


def build_student(arg: str, spec: ModelSpec, backbone: nn.Module | None = None) -> nn.Module:
    """The student ``arg`` names (see the module docstring), with ``spec``'s head, checked: it runs on
    a zero input, its anchor count is the teacher's, and its outputs are finite. ``backbone``: the
    instance ``arg`` (its :func:`module_path`) builds, to start from its weights (Python API)."""
    kind, name, kwargs = parse_student(arg)
    if kind == "registered":
        module = _registered(name, spec)
    else:
        src = BackboneSource(kind, name, "", {k: v for k, v in kwargs.items() if not (kind == "timm" and k == "checkpoint")})
        if backbone is None:
            backbone = timm_backbone(name, kwargs) if kind == "timm" else imported_backbone(name, kwargs)
        module = Student(plan(src, backbone, spec), backbone)
    reg, cls = _probe(module, spec.input_size, arg)
    if reg.shape[1:] != (spec.num_anchors, spec.num_coords) or cls.shape[1:] != (spec.num_anchors, 1):
        raise BlazeportError(f"{arg}: the student gives {reg.shape[1]} anchors, teacher {spec.name} has {spec.num_anchors}")
    if not (torch.isfinite(reg).all() and torch.isfinite(cls).all()):
        raise BlazeportError(f"{arg}: the untrained student's outputs are NaN or infinite on a zero input; check its "
                             "initialisation and forward before distilling")
    return module
