"""Students from any backbone: a registered family, a timm model, or the user's own ``nn.Module``.

``--student`` (and :func:`build_student`) takes one of

- a registered name: ``resnet``, ``resnet_slim``, ``resnet_large`` (:mod:`blazeport.models.resnet`)
  and ``mobilenet``, ``mobilenet_slim``, ``mobilenet_large`` (:mod:`blazeport.models.mobilenet`);
- ``timm:NAME[,key=value...]``: ``timm.create_model(NAME, features_only=True, pretrained=False)``
  (nothing downloads; ``checkpoint=PATH`` loads a local file);
- ``package.module:factory[,key=value...]``: the user's own class or function, importable from
  the current directory or the environment, called with the keyword arguments.

A *backbone* returns a list of NCHW feature maps, shallow to deep (timm's ``features_only``
contract). :class:`Student` probes it once at the teacher's input size for each map's channels
and stride, then attaches a top-down neck (1x1 lateral adapters where channels differ, nearest
upsampling and addition, as in FPN) and the teacher's SSD head at the strides of the teacher's
anchors (:func:`blazeport.anchors.head_layout`). A module that already meets the head contract
(``(B, 3, S, S)`` in [-1, 1] -> regressors ``(B, N, 16)``, classificators ``(B, N, 1)``) is used
as is. Either way the anchor count is checked against the spec before any training step.

:class:`StudentConfig` records how to rebuild the backbone (family + config, timm name + kwargs,
import path + kwargs), so a student's ``.safetensors`` reloads from the file alone. Reloading a
user's import path imports that module, and calls only an ``nn.Module`` subclass or a function
annotated ``-> nn.Module`` (a subclass), defined in that module and not in the standard library,
with the JSON values stored beside it: a crafted file cannot make it call ``os:system`` or some
package's ``rmtree``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import re
import sys
import typing
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blazeport.anchors import head_layout
from blazeport.errors import BlazeportError
from blazeport.models.blocks import SSDHead
from blazeport.models.resnet import RESNET_BACKBONES, STUDENTS, ConvBN, ResNetBackbone, ResNetBackboneConfig, ResNetBlazeFace
from blazeport.specs import ModelSpec

__all__ = ["REGISTERED", "BackboneSource", "Student", "StudentConfig", "build_student", "module_path", "parse_student"]

NECK_CHANNELS = 64  # width of the neck and of the head's inputs for timm and imported backbones


def _mobilenet() -> tuple[Any, Any, dict[str, Any]]:
    from blazeport.models.mobilenet import MOBILENETS, MobileNetBackbone, MobileNetConfig

    return MobileNetConfig, MobileNetBackbone, MOBILENETS


def backbone_families() -> dict[str, tuple[Any, Any, dict[str, Any]]]:
    """family -> (config class, backbone class, named configs)."""
    return {"resnet": (ResNetBackboneConfig, ResNetBackbone, RESNET_BACKBONES), "mobilenet": _mobilenet()}


# registered student name -> (backbone family, neck width)
REGISTERED: dict[str, tuple[str, int]] = {
    "resnet": ("resnet", 64), "resnet_slim": ("resnet", 32), "resnet_large": ("resnet", 96),
    "mobilenet": ("mobilenet", 64), "mobilenet_slim": ("mobilenet", 32), "mobilenet_large": ("mobilenet", 96),
}


@dataclass(frozen=True)
class BackboneSource:
    """How to build a backbone again: ``registered`` (family + config JSON), ``timm`` (model name +
    kwargs) or ``import`` (``package.module:factory`` + kwargs)."""

    kind: str
    name: str
    config: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        opts = "".join(f",{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in self.kwargs.items())
        return {"registered": f"{self.name} (registered)", "timm": f"timm:{self.name}{opts}"}.get(self.kind, f"{self.name}{opts}")


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


def parse_student(arg: str) -> tuple[str, str, dict[str, Any]]:
    """``--student`` -> (kind, name, kwargs); values are read as JSON where they parse (numbers,
    true/false, null), else kept as strings."""
    if not isinstance(arg, str) or not arg.strip():
        raise BlazeportError("--student: give a registered name, timm:NAME or package.module:factory")
    head, *pairs = arg.strip().split(",")
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip().isidentifier():
            raise BlazeportError(f"--student {arg}: options are key=value pairs after the name, got {pair!r}")
        try:
            kwargs[key.strip()] = json.loads(value)
        except ValueError:
            kwargs[key.strip()] = value
    if head.startswith("timm:"):
        return "timm", head[5:], kwargs
    if ":" in head:
        return "import", head, kwargs
    if head not in REGISTERED:
        raise BlazeportError(f"unknown student {head!r}; known: {', '.join(REGISTERED)}, timm:NAME, or "
                             "package.module:factory for your own backbone")
    if kwargs:
        raise BlazeportError(f"--student {arg}: registered students take no options (got {', '.join(kwargs)})")
    return "registered", head, kwargs


def _timm_backbone(name: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        import timm
    except Exception as exc:  # ImportError, or torchvision's RuntimeError against a CPU-only torch
        raise BlazeportError(
            f"timm:{name}: timm cannot be imported here ({type(exc).__name__}: {exc}). timm needs torchvision, and no "
            "torchvision on PyPI runs with blazeport's torch 2.13.0 CPU build (0.28.0 fails with 'operator "
            "torchvision::nms does not exist'); use a registered student or your own package.module:factory") from None
    kwargs = dict(kwargs)
    checkpoint = kwargs.pop("checkpoint", None)
    if not timm.is_model(name):
        close = timm.list_models(f"*{name[:6]}*")[:6]
        raise BlazeportError(f"timm:{name}: timm has no model of that name{'; similar: ' + ', '.join(close) if close else ''}")
    pretrained = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(checkpoint)}} if checkpoint else {}
    try:
        return timm.create_model(name, features_only=True, **{"pretrained": False, **pretrained, **kwargs})
    except Exception as exc:
        raise BlazeportError(f"timm:{name}: building it failed ({type(exc).__name__}: {exc})") from None


def _resolve(target: str) -> Any:
    """The class or function ``package.module:name`` names, refusing anything but the user's own code."""
    modname, _, attr = target.partition(":")
    if not all(part.isidentifier() for part in modname.split(".")) or not attr.isidentifier():
        raise BlazeportError(f"{target}: write your backbone as package.module:factory (e.g. mybackbones:tiny_net)")
    if modname.split(".")[0] in sys.stdlib_module_names or modname.split(".")[0] == "builtins":
        raise BlazeportError(f"{target}: {modname} is a standard-library module, not a backbone")
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if exc.name and modname.startswith(exc.name):
            raise BlazeportError(f"{target}: cannot import {modname} (no module {exc.name!r}); run from the folder that "
                                 "holds it, or install it into this environment") from None
        raise BlazeportError(f"{target}: importing {modname} failed: it needs {exc.name!r}, which is not installed") from None
    except Exception as exc:
        raise BlazeportError(f"{target}: importing {modname} raised {type(exc).__name__}: {exc}") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    obj = getattr(module, attr, None)
    if obj is None:
        raise BlazeportError(f"{target}: {modname} has no {attr!r}")
    if not (inspect.isfunction(obj) or (inspect.isclass(obj) and issubclass(obj, nn.Module))):
        raise BlazeportError(f"{target}: {attr} is a {type(obj).__name__}; name an nn.Module class or a function returning one")
    if obj.__module__ != module.__name__:
        raise BlazeportError(f"{target}: {attr} is defined in {obj.__module__}; name it there ({obj.__module__}:{attr})")
    if inspect.isfunction(obj):
        try:
            returns = typing.get_type_hints(obj).get("return")
        except Exception:  # an annotation that does not resolve is no declaration
            returns = None
        if not (inspect.isclass(returns) and issubclass(returns, nn.Module)):
            raise BlazeportError(f"{target}: declare what {attr} returns (def {attr}(...) -> nn.Module): blazeport calls "
                                 "only classes and functions declared to build a module, so a weights file that names "
                                 "a function cannot make it run anything else")
    return obj


def _imported_backbone(target: str, kwargs: dict[str, Any]) -> nn.Module:
    factory = _resolve(target)
    try:
        module = factory(**kwargs)
    except Exception as exc:
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise BlazeportError(f"{target}: calling {factory.__name__}({args}) raised {type(exc).__name__}: {exc}") from None
    if not isinstance(module, nn.Module):
        raise BlazeportError(f"{target}: returned a {type(module).__name__}, not an nn.Module")
    return module


def make_backbone(src: BackboneSource) -> nn.Module:
    if src.kind == "registered":
        families = backbone_families()
        if src.name not in families:
            raise BlazeportError(f"unknown backbone family {src.name!r}; known: {', '.join(families)}")
        config_cls, module_cls, _ = families[src.name]
        return module_cls(config_cls.from_json(src.config))
    if src.kind == "timm":
        return _timm_backbone(src.name, src.kwargs)
    if src.kind == "import":
        return _imported_backbone(src.name, src.kwargs)
    raise BlazeportError(f"unknown backbone source {src.kind!r}; known: registered, timm, import")


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

    def __init__(self, config: StudentConfig, backbone: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.backbone = backbone if backbone is not None else make_backbone(config.backbone)
        if config.as_is:
            return
        c = config.neck_channels
        self.lateral = nn.ModuleList(nn.Identity() if ch == c else ConvBN(ch, c, 1) for ch in config.tap_channels)
        self.smooth = nn.ModuleList(ConvBN(c, c, 3, groups=c) for _ in config.head_strides)
        self.head = SSDHead(self.feature_channels, config.head_anchors, config.num_coords)

    @property
    def feature_channels(self) -> tuple[int, ...]:
        if self.config.as_is:
            return tuple(getattr(self.backbone, "feature_channels", ()))
        return (self.config.neck_channels,) * len(self.config.head_strides)

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


def module_path(module: nn.Module) -> str:
    """``package.module:Class`` for a backbone handed over as an instance (the Python API), once it is
    known that ``Class()`` rebuilds it: its file must say how to build it again."""
    cls = type(module)
    target = f"{cls.__module__}:{cls.__qualname__}"
    if cls.__module__ == "__main__" or "." in cls.__qualname__ or "<" in cls.__qualname__:
        raise BlazeportError(f"{target}: a student's file must say how to rebuild its backbone, and a class defined in a "
                             "script or a function cannot be imported again: move it into a module")
    rebuilt = _imported_backbone(target, {})
    mine, again = module.state_dict(), rebuilt.state_dict()
    if {k: v.shape for k, v in mine.items()} != {k: v.shape for k, v in again.items()}:
        raise BlazeportError(f"{target}(): builds other tensors than the instance given; pass the student as "
                             "'package.module:factory,key=value' with the arguments that build it")
    return target


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
            backbone = _timm_backbone(name, kwargs) if kind == "timm" else _imported_backbone(name, kwargs)
        module = Student(plan(src, backbone, spec), backbone)
    reg, cls = _probe(module, spec.input_size, arg)
    if reg.shape[1:] != (spec.num_anchors, spec.num_coords) or cls.shape[1:] != (spec.num_anchors, 1):
        raise BlazeportError(f"{arg}: the student gives {reg.shape[1]} anchors, teacher {spec.name} has {spec.num_anchors}")
    if not (torch.isfinite(reg).all() and torch.isfinite(cls).all()):
        raise BlazeportError(f"{arg}: the untrained student's outputs are NaN or infinite on a zero input; check its "
                             "initialisation and forward before distilling")
    return module


def architecture_name(arg: str) -> str:
    """A spec-friendly name for a student argument (``examples.mnv3_backbone:mnv3_small`` ->
    ``mnv3_small``)."""
    kind, name, _ = parse_student(arg)
    base = name.rpartition(":")[2] if kind == "import" else name
    return re.sub(r"[^A-Za-z0-9_]+", "_", base).strip("_") or "student"
