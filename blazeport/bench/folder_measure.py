"""``bench --folder`` in the measured child: images/s over a folder, for blazeport's loop and for
MediaPipe's ``process(rgb)`` fed by the same reader (:func:`blazeport.pipeline.folder.read_ahead`). The
parent's side (configurations, ratios, the report) is :mod:`blazeport.bench.folder`.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

from blazeport.bench.mediapipe import mediapipe_face_detection
from blazeport.bench.timing import process_facts
from blazeport.errors import BlazeportError
from blazeport.pipeline.folder import FolderStats, detect_folder, read_ahead
from blazeport.pipeline.photos import list_images

__all__ = ["WARMUP_FILES", "folder_paths", "measure_folder", "measure_mediapipe_folder"]

WARMUP_FILES = 4  # read and detected untimed before the pass: first-call costs are the single-image bench's business


def folder_paths(folder: str | Path, limit: int | None) -> list[Path]:
    paths = list_images([folder])
    if not paths:
        raise BlazeportError(f"--folder {folder}: no images found")
    return paths[:limit] if limit else paths


def _summary(stats: FolderStats) -> dict[str, Any]:
    """A pass's rates and where its time went (``detector_images_per_s``: images per second of detector
    time, file decoding left out); ``decode_share`` is decoding's share of the work
    (reader seconds / (reader + detector seconds)), ``wait_share`` the part of the wall the detector
    waited for an image (decoding not hidden by the readers)."""
    work = stats.read_s + stats.detect_s
    return {"images": stats.images, "skipped": stats.skipped, "wall_s": round(stats.wall_s, 4),
            "images_per_s": stats.images / stats.wall_s if stats.wall_s else None,
            # the detector alone (letterbox, model, decode + NMS; no file decoding): what --batch changes
            "detector_images_per_s": stats.images / stats.detect_s if stats.detect_s else None,
            "read_s": round(stats.read_s, 4), "detect_s": round(stats.detect_s, 4), "wait_s": round(stats.wait_s, 4),
            "decode_share": stats.read_s / work if work else None,
            "wait_share": stats.wait_s / stats.wall_s if stats.wall_s else None, "faces": int(sum(stats.faces))}


def measure_folder(detector: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """In the child: one untimed pass over the first files, then one timed pass over them all.

    With ``collect`` in ``cfg`` the timed pass also keeps every image's detections (``detections``:
    a list per file, None for an unreadable one), so the parent can compare the fast decode's with
    the exact decode's."""
    paths = folder_paths(cfg["folder"], cfg.get("limit"))
    batch, workers, fast = int(cfg["batch"]), int(cfg["workers"]), bool(cfg.get("fast_decode"))
    # detect_folder is a generator: deque(maxlen=0) runs it to the end without keeping its results
    deque(detect_folder(detector, paths[:max(WARMUP_FILES, batch)], batch=batch, workers=workers, fast_decode=fast),
          maxlen=0)
    stats = FolderStats()
    results = detect_folder(detector, paths, batch=batch, workers=workers, stats=stats, fast_decode=fast)
    if not cfg.get("collect"):
        deque(results, maxlen=0)
        return {**_summary(stats), **process_facts()}
    found = [None if dets is None else [d.to_dict() for d in dets] for _, dets in results]
    return {**_summary(stats), **process_facts(), "detections": found}


def measure_mediapipe_folder(cfg: dict[str, Any]) -> dict[str, Any]:
    """In the child: MediaPipe's ``process(rgb)`` over the folder, fed by the same reader."""
    import mediapipe as mp

    paths = folder_paths(cfg["folder"], cfg.get("limit"))
    fd = mediapipe_face_detection(int(cfg["model_selection"]), int(cfg["threads"]))
    workers = int(cfg["workers"])

    def one_pass(files: list[Path], stats: FolderStats) -> None:
        t_start = time.perf_counter()
        for item in read_ahead(files, workers, stats=stats):
            stats.read_s += item.read_s
            if item.image is None:
                stats.skipped += 1
                continue
            t0 = time.perf_counter()
            res = fd.process(item.image)
            stats.detect_s += time.perf_counter() - t0
            stats.images += 1
            stats.faces.append(len(res.detections or []))
        stats.wall_s = time.perf_counter() - t_start

    one_pass(paths[:WARMUP_FILES], FolderStats())
    stats = FolderStats()
    one_pass(paths, stats)
    fd.close()
    return {**_summary(stats), **process_facts(), "versions": {"mediapipe": mp.__version__}}
