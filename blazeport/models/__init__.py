"""Networks: the BlazeFace family, the generic TFLite GraphNet, and students from any backbone.

Every network meets the head contract of :mod:`blazeport.models.blazeface`. A *family* names a
(config class, module class) pair; safetensors files record the family and the config as JSON,
so any of them is rebuilt from its weights file alone. Students: :mod:`blazeport.models.student`
(``build_student``: registered ResNet and MobileNet variants, timm models, user modules).
"""

from __future__ import annotations

from typing import Any

from blazeport.errors import BlazeportError
from blazeport.models.backbones import REGISTERED, architecture_name
from blazeport.models.blazeface import VARIANTS, BlazeFace, BlazeFaceConfig, BlockConfig
from blazeport.models.graph import GraphConfig, GraphNet
from blazeport.models.resnet import ResNetBlazeFace, ResNetConfig, fold_batchnorm
from blazeport.models.student import Student, StudentConfig, build_student

__all__ = ["FAMILIES", "REGISTERED", "VARIANTS", "BlazeFace", "BlazeFaceConfig", "BlockConfig", "architecture_name",
           "build_student", "fold_batchnorm", "from_config"]

FAMILIES: dict[str, tuple[Any, Any]] = {
    "blazeface": (BlazeFaceConfig, BlazeFace),
    "graph": (GraphConfig, GraphNet),
    "resnet": (ResNetConfig, ResNetBlazeFace),
    "student": (StudentConfig, Student),
}


def from_config(family: str, config_json: str, trust_code: bool = False) -> Any:
    """Rebuild a module from a family name and its JSON config (as stored beside the weights).
    ``trust_code``: a student whose backbone is the user's own code may import it (see
    :mod:`blazeport.models.backbones`); the other families are blazeport's own code."""
    if family not in FAMILIES:
        raise BlazeportError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    config_cls, module_cls = FAMILIES[family]
    config = config_cls.from_json(config_json)
    return Student(config, trust_code=trust_code) if module_cls is Student else module_cls(config)

