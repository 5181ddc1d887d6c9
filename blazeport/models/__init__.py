"""Networks: the BlazeFace family converted from TFLite, and (later) students."""

from __future__ import annotations

from blazeport.errors import BlazeportError
from blazeport.models.blazeface import VARIANTS, BlazeFace, BlazeFaceConfig, BlockConfig

__all__ = ["VARIANTS", "BlazeFace", "BlazeFaceConfig", "BlockConfig", "build"]


def build(architecture: str) -> BlazeFace:
    """A freshly initialised network for a registered architecture name."""
    if architecture not in VARIANTS:
        raise BlazeportError(f"unknown architecture {architecture!r}; known: {', '.join(sorted(VARIANTS))}")
    return BlazeFace(VARIANTS[architecture])
