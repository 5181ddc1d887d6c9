"""The reference boxes file (``faces-boxed/boxes.json``'s format): reading it and checking every entry.

``{file: {width, height, boxes_xywh: [[left, top, w, h], ...]}}``, matched to images by file name.
Each refusal is one message naming the entry and the box, because a boxes file is hand-made and the
mistake is usually one typed number (:func:`load_boxes`, :func:`validate_boxes`);
:mod:`blazeport.pipeline.evaluate` scores detections against the result.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from blazeport.errors import BlazeportError

__all__ = ["Box", "load_boxes", "validate_boxes"]

Box = tuple[float, float, float, float]  # xmin, ymin, w, h, normalized


# Largest width or height a boxes file may give: OpenCV's sizes are C ints
_MAX_SIDE = 2**31 - 1
_BOXES_FORMAT = "{file: {width, height, boxes_xywh: [[left, top, w, h], ...]}}"


class _HugeInteger:
    """A JSON integer too long to be a pixel count, kept as a stand-in so the check that finds it can
    name its entry and box (``int()`` itself refuses over 4300 digits, with no hint of where)."""

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<a {self.digits}-digit integer>"


def _parse_int(text: str) -> int | _HugeInteger:
    return _HugeInteger(len(text.lstrip("-"))) if len(text) > 30 else int(text)


def _show(value: object) -> str:
    """``value`` as the JSON the user wrote (true, NaN, Infinity), shortened."""
    if isinstance(value, _HugeInteger):
        return repr(value)
    try:
        text = json.dumps(value, default=repr)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_number(value: object) -> bool:
    """A JSON number: int or float, and not a boolean (``True`` is an ``int`` to Python)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_boxes(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a ``boxes.json``: ``{file: {split, width, height, boxes_xywh: [[left, top, w, h], ...]}}``.

    Boxes are in pixels of an image ``width`` x ``height``. Returns the mapping as read, with
    ``boxes_xywh`` as lists of 4 floats; raises :class:`BlazeportError` naming the file if it is
    missing, not JSON, or not in that format, and naming the entry and box for a bad value
    (see :func:`validate_boxes`): a wrong box would otherwise only show as a lower AP.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BlazeportError(f"{path}: cannot read the boxes file ({exc.strerror or exc}).") from None
    except UnicodeDecodeError as exc:
        raise BlazeportError(f"{path}: not a JSON file ({exc}).") from None
    try:
        data = json.loads(text, parse_int=_parse_int)
    except ValueError as exc:  # json.JSONDecodeError is one
        raise BlazeportError(f"{path}: not a JSON file ({exc}).") from None
    except RecursionError:
        raise BlazeportError(f"{path}: not a boxes file: its JSON nests deeper than Python's parser allows "
                             f"(the format, {_BOXES_FORMAT}, is 4 levels deep).") from None
    return validate_boxes(data, str(path))


def validate_boxes(data: object, source: str = "boxes") -> dict[str, dict[str, Any]]:
    """Check a parsed boxes mapping; return it with ``boxes_xywh`` as floats and ``width``/``height`` as ints.

    ``width`` and ``height`` (optional; the image's own size is used without them) must be whole
    numbers from 1 to 2**31 - 1. Every box must be 4 finite numbers (not booleans, not strings) with
    w and h > 0, overlapping the image and within one image width/height of its border (dlib-style
    boxes of faces cut by the border stick out a little; a box further out is a typo or wrong units).
    Raises :class:`BlazeportError` naming ``source``, the entry (file name) and the box index.
    """
    if not isinstance(data, dict):
        raise BlazeportError(f"{source}: expected {_BOXES_FORMAT}, got a JSON {type(data).__name__}.")
    out: dict[str, dict[str, Any]] = {}
    for name, entry in data.items():
        where = f"{source}: entry {name!r}"
        boxes = entry.get("boxes_xywh") if isinstance(entry, dict) else None
        if not isinstance(boxes, list):
            raise BlazeportError(f"{where} needs 'boxes_xywh': [[left, top, w, h], ...] in pixels.")
        clean: dict[str, Any] = dict(entry)
        for key in ("width", "height"):
            if key in entry:
                value = entry[key]
                if not (_is_number(value) and 1 <= value <= _MAX_SIDE and float(value).is_integer()):  # NaN fails the range
                    raise BlazeportError(f"{where}: {key} must be a whole number of pixels from 1 to 2**31 - 1, "
                                         f"got {_show(value)}.")
                clean[key] = int(value)
        clean["boxes_xywh"] = [_clean_box(f"{where}, box {i}", box, clean.get("width"), clean.get("height"))
                               for i, box in enumerate(boxes)]
        out[str(name)] = clean
    return out


def _clean_box(where: str, box: object, width: int | None, height: int | None) -> list[float]:
    """One box as 4 floats, or a :class:`BlazeportError` saying what is wrong with it (see :func:`validate_boxes`)."""
    if not isinstance(box, list) or len(box) != 4:
        raise BlazeportError(f"{where}: expected [left, top, w, h] in pixels, got {_show(box)}.")
    for value in box:
        if isinstance(value, _HugeInteger):
            raise BlazeportError(f"{where}: holds {value!r}, far too large for pixels.")
        if not _is_number(value):
            raise BlazeportError(f"{where}: {_show(value)} in {_show(box)} is not a number.")
    try:
        x, y, w, h = (float(v) for v in box)
    except OverflowError:  # a Python int over 1e308 in a mapping given directly (JSON ones are _HugeInteger)
        raise BlazeportError(f"{where}: holds a number too large for a float.") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise BlazeportError(f"{where}: {_show(box)} is not finite (NaN or Infinity).")
    if w <= 0 or h <= 0:
        raise BlazeportError(f"{where}: {_show(box)} has a width or height <= 0; boxes are [left, top, w, h], not corners.")
    _check_inside(where, (x, y, w, h), width, height)
    return [x, y, w, h]


def _check_inside(where: str, box: Box, width: int | None, height: int | None) -> None:
    """Refuse a box that misses the image, or reaches more than the image's own size beyond its border."""
    x, y, w, h = box
    for lo, extent, side in ((x, w, width), (y, h, height)):
        if side is not None and not (lo < side and lo + extent > 0 and lo >= -side and lo + extent <= 2 * side):
            size = f"{width if width is not None else '?'}x{height if height is not None else '?'}"
            raise BlazeportError(f"{where}: {_show([_num(v) for v in box])} lies outside the {size} image, or reaches more "
                                 "than the image's own size past its border (pixels of another image, or a typo?).")


def _num(value: float) -> int | float:
    return int(value) if value.is_integer() else value
