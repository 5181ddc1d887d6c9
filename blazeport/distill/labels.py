"""Hand-drawn boxes beside the teacher: ``blazeport distill --boxes FILE``.

Distillation learns from the teacher's outputs on unlabeled photos; a user who has drawn boxes on some
of them (and keypoints, perhaps) has something better than the teacher there. Hinton et al.'s
knowledge distillation ("Distilling the Knowledge in a Neural Network", 2015) mixes the two: a model
trained with labels adds the loss against the labels (hard targets) to the loss against the
teacher's softened outputs (soft targets, scaled by T^2 so that their gradients keep their size as T
changes): ``alpha * hard + (1 - alpha) * soft``. Here, per sample: a photo with an entry in the file
gets ``alpha`` times an SSD loss against its boxes plus ``1 - alpha`` times the configured distillation
loss (whose ``kl`` term is already T^2 scaled); a photo without an entry gets the distillation loss
alone (weight 1). An entry with no boxes says "no face here": every anchor is a negative. The SSD
loss is :func:`blazeport.distill.losses.ssd_loss` (``--boxes-alpha``, default 0.5).

**Files** (:func:`read_labels`): blazeport's ``boxes.json`` (``{file: {width, height, boxes_xywh:
[[left, top, w, h], ...]}}``, checked by :func:`blazeport.pipeline.boxes.validate_boxes`; an entry may add
``keypoints_xy``: per box 12 numbers, the 6 BlazeFace keypoints x, y in pixels, or null), or COCO
annotations (``images`` with ``file_name``, ``width``, ``height``; ``annotations`` with ``image_id``
and ``bbox`` [x, y, w, h], optionally ``keypoints`` [x, y, v] * 6 in BlazeFace's order, v = 0 for a
point not labelled). Photos are matched by file name, as ``blazeport eval --boxes`` does. A file that
cannot be read or holds a bad value is one :class:`~blazeport.errors.BlazeportError` naming the entry.

**Where the boxes go**: a label is stored normalized by its entry's image size; each training sample
carries its photo's boxes through the sample's own letterbox and random affine (the matrix of
:func:`~blazeport.distill.dataset.make_input_matrix`), keypoints reordered after a flip (the subject's
right eye becomes the left: :data:`~blazeport.distill.changes.MIRROR_KEYPOINTS`); a ``mosaic`` slot
carries the four tiles' boxes at half size when all four tiles are labelled photos, and no label
otherwise (an unlabelled tile's faces would count as background); ``ns_*`` changes carry them like the
teacher's outputs (:meth:`blazeport.distill.noisy.Change.carry_boxes`). WebDataset shards are refused
with ``--boxes``: a shard sample that cannot be read is replaced by another photo, whose boxes the
stream does not know.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blazeport.distill.changes import MIRROR_KEYPOINTS
from blazeport.distill.mosaic import tile_boxes
from blazeport.errors import BlazeportError
from blazeport.pipeline.boxes import _clean_box, validate_boxes

__all__ = ["Labels", "batch_labels", "read_labels", "transport"]

NUM_KEYPOINTS = 6


class Labels:
    """Faces of one photo: ``boxes`` (M, 4) normalized xyxy, ``keypoints`` (M, 6, 2) normalized, NaN where unknown."""

    def __init__(self, boxes: np.ndarray, keypoints: np.ndarray):
        self.boxes, self.keypoints = boxes.astype(np.float32), keypoints.astype(np.float32)

    def __len__(self) -> int:
        return len(self.boxes)


def _keypoints(where: str, value: Any, width: float, height: float, coco: bool) -> np.ndarray:
    """One face's 6 keypoints, normalized, NaN where not labelled."""
    out = np.full((NUM_KEYPOINTS, 2), np.nan, np.float32)
    if value is None:
        return out
    step = 3 if coco else 2
    if not isinstance(value, list) or len(value) != step * NUM_KEYPOINTS or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise BlazeportError(f"{where}: keypoints must be {step * NUM_KEYPOINTS} finite numbers (the 6 BlazeFace "
                             f"keypoints{', x, y, v each' if coco else ', x, y each'}), got {str(value)[:60]}")
    for k in range(NUM_KEYPOINTS):
        x, y = value[step * k], value[step * k + 1]
        if coco and value[step * k + 2] == 0:
            continue
        out[k] = (x / width, y / height)
    return out


def _from_boxes_json(data: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    table = validate_boxes(data, source)
    out: dict[str, dict[str, Any]] = {}
    for name, entry in table.items():
        kps = entry.get("keypoints_xy")
        if kps is not None and (not isinstance(kps, list) or len(kps) != len(entry["boxes_xywh"])):
            raise BlazeportError(f"{source}: entry {name!r}: keypoints_xy must hold one item per box (12 numbers or null)")
        out[name] = {"width": entry.get("width"), "height": entry.get("height"), "boxes": entry["boxes_xywh"],
                     "keypoints": kps or [None] * len(entry["boxes_xywh"]), "coco": False}
    return out


def _from_coco(data: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    images, annotations = data.get("images"), data.get("annotations")
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise BlazeportError(f"{source}: a COCO file needs 'images' and 'annotations' lists")
    by_id: dict[Any, dict[str, Any]] = {}
    for i, im in enumerate(images):
        if not isinstance(im, dict) or not isinstance(im.get("file_name"), str) or "id" not in im:
            raise BlazeportError(f"{source}: images[{i}] needs an id and a file_name")
        w, h = im.get("width"), im.get("height")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (w, h)):
            raise BlazeportError(f"{source}: images[{i}] ({im['file_name']}) needs whole width and height in pixels")
        by_id[im["id"]] = {"width": w, "height": h, "boxes": [], "keypoints": [], "coco": True,
                           "name": Path(im["file_name"]).name}
    for i, ann in enumerate(annotations):
        where = f"{source}: annotations[{i}]"
        if not isinstance(ann, dict) or ann.get("image_id") not in by_id:
            named = ann.get("image_id") if isinstance(ann, dict) else ann
            raise BlazeportError(f"{where} names no image of the file (image_id {named!r})")
        entry = by_id[ann["image_id"]]
        entry["boxes"].append(_clean_box(where, ann.get("bbox"), entry["width"], entry["height"]))
        entry["keypoints"].append(ann.get("keypoints"))
    return {e.pop("name"): e for e in by_id.values()}


def read_labels(path: str | Path) -> dict[str, dict[str, Any]]:
    """A ``--boxes`` file (blazeport boxes.json or COCO) as ``{file name: raw entry}``; :func:`labels_for`
    turns an entry into :class:`Labels` once the image's size is known. One error for a bad file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BlazeportError(f"--boxes {path}: cannot read the file ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BlazeportError(f"--boxes {path}: not a JSON file ({str(exc)[:120]})") from None
    if isinstance(data, dict) and ("annotations" in data or "images" in data):
        table = _from_coco(data, f"--boxes {path}")
    elif isinstance(data, dict):
        table = _from_boxes_json(data, f"--boxes {path}")
    else:
        raise BlazeportError(f"--boxes {path}: expected blazeport's boxes.json ({{file: {{width, height, boxes_xywh}}}}) "
                             "or COCO annotations ({images, annotations})")
    for name, entry in table.items():  # keypoints checked now: a bad file stops the run before it starts
        for i, kp in enumerate(entry["keypoints"]):
            _keypoints(f"--boxes {path}: entry {name!r}, box {i}", kp, 1.0, 1.0, entry["coco"])
    return table


def labels_for(entry: dict[str, Any], width: int, height: int, where: str) -> Labels:
    """An entry of :func:`read_labels` as :class:`Labels`; ``width`` / ``height``: the image's own size, used
    where the entry gives none."""
    w, h = float(entry.get("width") or width), float(entry.get("height") or height)
    boxes = np.zeros((len(entry["boxes"]), 4), np.float32)
    for i, box in enumerate(entry["boxes"]):
        checked = _clean_box(f"{where}, box {i}", list(box), int(w), int(h))
        x, y, bw, bh = checked
        boxes[i] = (x / w, y / h, (x + bw) / w, (y + bh) / h)
    kps = np.stack([_keypoints(f"{where}, box {i}", kp, w, h, entry["coco"]) for i, kp in enumerate(entry["keypoints"])]) \
        if len(boxes) else np.zeros((0, NUM_KEYPOINTS, 2), np.float32)
    return Labels(boxes, kps)


def transport(labels: Labels, width: int, height: int, matrix: np.ndarray) -> np.ndarray:
    """A photo's labels in a training sample: ``(M, 16)`` float32 input pixels (xmin, ymin, xmax, ymax, then 6
    keypoints x, y; NaN where unknown), through ``matrix`` (the sample's 3x3, photo pixels -> input pixels,
    of a ``width`` x ``height`` photo). A reflecting matrix (a flip) reorders the keypoints to the subject's."""
    m = len(labels)
    if m == 0:
        return np.zeros((0, 16), np.float32)
    scale = np.float32([width, height])
    b = labels.boxes.reshape(m, 2, 2) * scale
    corners = np.stack([b[:, 0], np.stack([b[:, 1, 0], b[:, 0, 1]], -1), b[:, 1], np.stack([b[:, 0, 0], b[:, 1, 1]], -1)], 1)
    pts = np.concatenate([corners, labels.keypoints * scale], 1)  # (M, 10, 2)
    mapped = pts @ matrix[:2, :2].T + matrix[:2, 2]
    kps = mapped[:, 4:]
    if np.linalg.det(matrix[:2, :2]) < 0:
        kps = kps[:, list(MIRROR_KEYPOINTS)]
    return np.concatenate([mapped[:, :4].min(1), mapped[:, :4].max(1), kps.reshape(m, -1)], 1).astype(np.float32)


def batch_labels(faces: tuple[np.ndarray | None, ...], plan: dict[int, list[int]], size: int,
                 device: torch.device) -> list[torch.Tensor | None]:
    """The batch's per-sample faces as tensors on ``device``, after ``mosaic`` (``plan``: slot -> its four
    tiles, :func:`~blazeport.distill.mosaic.mosaic_with_plan`): a mosaic slot gets its tiles' faces at half
    size when every tile is labelled, else None."""
    per = [torch.from_numpy(f).to(device) if f is not None else None for f in faces]
    return [tile_boxes(per, plan[i], size) if i in plan else per[i] for i in range(len(per))]
