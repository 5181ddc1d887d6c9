"""Where a student's backbone comes from: a registered family, a timm model, or the user's own code.

``--student`` (and :func:`blazeport.models.student.build_student`) takes one of

- a registered name: ``resnet``, ``resnet_slim``, ``resnet_large`` (:mod:`blazeport.models.resnet`)
  and ``mobilenet``, ``mobilenet_slim``, ``mobilenet_large`` (:mod:`blazeport.models.mobilenet`);
- ``timm:NAME[,key=value...]``: ``timm.create_model(NAME, features_only=True, pretrained=False)``
  (nothing downloads; ``checkpoint=PATH`` loads a local file);
- ``package.module:factory[,key=value...]``: the user's own class or function, importable from
  the current directory or the environment, called with the keyword arguments.

A :class:`BackboneSource` records which, so a student's ``.safetensors`` rebuilds it from the file
alone. **A weights file is data, and trust is explicit and per use**, as ``trust_remote_code`` is
in the Hugging Face ecosystem: rebuilding an ``import`` backbone from a file imports the module it
names, which runs that module's top-level code, so :func:`make_backbone` refuses it, naming the
module and the flag, unless the caller passes ``trust_code=True`` (``--trust-code`` on the command
line). Nothing is imported before that check. Registered families are blazeport's own code and need
no trust; a timm backbone from a file is built by timm's registry with the file's options, and may
not name weights to load (the file holds them). A module the user names on the command line
(``--student mod:factory``) is trusted for that run: the user typed it.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from blazeport.errors import BlazeportError
from blazeport.models.mobilenet import MOBILENETS, MobileNetBackbone, MobileNetConfig
from blazeport.models.resnet import RESNET_BACKBONES, ResNetBackbone, ResNetBackboneConfig
from blazeport.options import TRUST_FLAG

__all__ = ["REGISTERED", "TRUST_FLAG", "BackboneSource", "architecture_name", "backbone_families", "check_trusted",
           "imported_backbone", "make_backbone", "module_path", "parse_student", "timm_backbone"]

# timm options that load weights from somewhere: a weights file holds its weights, and a file that
# named a checkpoint would have timm unpickle a path the file chose
_TIMM_WEIGHT_OPTIONS = {"checkpoint", "checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                        "cache_dir"}


def backbone_families() -> dict[str, tuple[Any, Any, dict[str, Any]]]:
    """family -> (config class, backbone class, named configs)."""
    return {"resnet": (ResNetBackboneConfig, ResNetBackbone, RESNET_BACKBONES),
            "mobilenet": (MobileNetConfig, MobileNetBackbone, MOBILENETS)}


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


def timm_backbone(name: str, kwargs: dict[str, Any]) -> nn.Module:
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
    """The class or function ``package.module:name`` names. Only called once the module is trusted
    (named on the command line, or ``trust_code=True``); the name is checked before the import, and
    what the factory returns is checked on its result (:func:`imported_backbone`)."""
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
    return obj


def imported_backbone(target: str, kwargs: dict[str, Any]) -> nn.Module:
    factory = _resolve(target)
    try:
        module = factory(**kwargs)
    except Exception as exc:
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise BlazeportError(f"{target}: calling {factory.__name__}({args}) raised {type(exc).__name__}: {exc}") from None
    if not isinstance(module, nn.Module):
        raise BlazeportError(f"{target}: returned a {type(module).__name__}, not an nn.Module")
    return module


def check_trusted(src: BackboneSource, trust_code: bool) -> None:
    """Refuse, before anything is imported, to rebuild a backbone that is the user's own code without
    the user's word for it. The message names the module and the flag."""
    if src.kind != "import" or trust_code:
        return
    module = src.name.partition(":")[0]
    raise BlazeportError(
        f"its student backbone is code, {src.name}: loading it would import the module {module!r}, which runs that "
        f"module's code. Nothing was imported. If you trust this file and {module}, pass {TRUST_FLAG} (Python: "
        "trust_code=True)")


def make_backbone(src: BackboneSource, trust_code: bool = False) -> nn.Module:
    """Rebuild a stored backbone. ``trust_code``: the caller's word that an ``import`` backbone's
    module may be imported (see the module docstring); without it such a backbone is refused."""
    check_trusted(src, trust_code)
    if src.kind == "registered":
        families = backbone_families()
        if src.name not in families:
            raise BlazeportError(f"unknown backbone family {src.name!r}; known: {', '.join(families)}")
        config_cls, module_cls, _ = families[src.name]
        return module_cls(config_cls.from_json(src.config))
    if src.kind == "timm":
        named = sorted(_TIMM_WEIGHT_OPTIONS & set(src.kwargs))
        if named:
            raise BlazeportError(f"its timm backbone {src.name} names weights to load ({', '.join(named)}); a weights file "
                                 "holds its own weights and may not point timm at another file")
        return timm_backbone(src.name, src.kwargs)
    if src.kind == "import":
        return imported_backbone(src.name, src.kwargs)
    raise BlazeportError(f"unknown backbone source {src.kind!r}; known: registered, timm, import")


def module_path(module: nn.Module) -> str:
    """``package.module:Class`` for a backbone handed over as an instance (the Python API), once it is
    known that ``Class()`` rebuilds it: its file must say how to build it again."""
    cls = type(module)
    target = f"{cls.__module__}:{cls.__qualname__}"
    if cls.__module__ == "__main__" or "." in cls.__qualname__ or "<" in cls.__qualname__:
        raise BlazeportError(f"{target}: a student's file must say how to rebuild its backbone, and a class defined in a "
                             "script or a function cannot be imported again: move it into a module")
    rebuilt = imported_backbone(target, {})
    mine, again = module.state_dict(), rebuilt.state_dict()
    if {k: v.shape for k, v in mine.items()} != {k: v.shape for k, v in again.items()}:
        raise BlazeportError(f"{target}(): builds other tensors than the instance given; pass the student as "
                             "'package.module:factory,key=value' with the arguments that build it")
    return target


def architecture_name(arg: str) -> str:
    """A spec-friendly name for a student argument (``examples.mnv3_backbone:mnv3_small`` ->
    ``mnv3_small``)."""
    kind, name, _ = parse_student(arg)
    base = name.rpartition(":")[2] if kind == "import" else name
    return re.sub(r"[^A-Za-z0-9_]+", "_", base).strip("_") or "student"
