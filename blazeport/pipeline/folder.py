"""A folder of images through one detector: decoding runs ahead of the backend, detection in batches.

Decoding a photo (``cv2.imdecode``) costs as much as the model on a small detector, and OpenCV
releases the GIL while it decodes, so a few reader threads keep the backend fed while it runs.
:func:`read_ahead` decodes in a thread pool with a bounded window of pending reads (memory stays
bounded on a folder of big photos) and hands the images back in input order; :func:`detect_folder`
groups the readable ones into :meth:`Detector.detect_batch` calls. What a batch costs is the backend's
business: one forward on torch (and on a dynamic-batch ``.onnx``), image by image on the rest.

``blazeport detect`` and ``blazeport bench --folder`` both run this, so the bench times what users run.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from blazeport.pipeline.detector import Detector
from blazeport.pipeline.postprocess import Detection
from blazeport.pipeline.preprocess import ImageReadError, read_image_sized

# --fast-decode keeps a JPEG's long side at >= this many times the model's input side: the letterbox
# then still shrinks the image by 2x or more, so the tensor's pixels each average several decoded ones
FAST_DECODE_SIDE = 2


def fast_decode_side(detector: Detector) -> int:
    """The long side ``--fast-decode`` decodes JPEGs to (at least): FAST_DECODE_SIDE x the input side."""
    return FAST_DECODE_SIDE * detector.spec.input_size


def default_workers() -> int:
    """min(4, cores): past a few readers the decoders only take cores from the backend."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class Decoded:
    """One input, read or not: the RGB image and the file's own size, or why it could not be read."""

    index: int
    path: Path
    image: np.ndarray | None = None
    size: tuple[int, int] | None = None  # the file's (width, height); the array may be decoded reduced
    error: ImageReadError | None = None
    read_s: float = 0.0  # seconds this file took to read and decode (in its reader thread)


@dataclass
class FolderStats:
    """Where a folder's time went, for ``bench --folder``: decoding (summed over readers), detection,
    and how long the detector sat waiting for a decoded image (the part of decoding not hidden)."""

    images: int = 0
    skipped: int = 0
    batches: int = 0
    read_s: float = 0.0
    detect_s: float = 0.0
    wait_s: float = 0.0
    wall_s: float = 0.0
    faces: list[int] = field(default_factory=list)


def _read(index: int, path: Path, max_pixels: int | None, reduce_to: int | None = None) -> Decoded:
    t0 = time.perf_counter()
    try:
        image, size = read_image_sized(path, max_pixels=max_pixels, reduce_to=reduce_to)
        return Decoded(index, path, image, size, read_s=time.perf_counter() - t0)
    except ImageReadError as exc:
        return Decoded(index, path, error=exc, read_s=time.perf_counter() - t0)


def read_ahead(paths: Iterable[str | Path], workers: int | None = None, max_pixels: int | None = None,
               depth: int | None = None, stats: FolderStats | None = None, reduce_to: int | None = None) -> Iterator[Decoded]:
    """Every path decoded, in input order, by ``workers`` threads at most ``depth`` files ahead.

    ``workers=0`` reads inline (no threads): the plain loop, for comparison. Unreadable files come back
    with ``error`` set, never raised, so the caller counts and reports them where they fall in the order.
    ``stats.wait_s`` gets the time the consumer spent blocked on a read. ``reduce_to``: the fast
    decode of :func:`~blazeport.pipeline.preprocess.read_image_sized` (JPEGs decoded reduced), off by default.
    """
    workers = default_workers() if workers is None else workers
    items = ((i, Path(p)) for i, p in enumerate(paths))
    if workers <= 0:
        for i, path in items:
            item = _read(i, path, max_pixels, reduce_to)
            if stats is not None:
                stats.wait_s += item.read_s
            yield item
        return
    depth = max(depth or 2 * workers, 1)
    with ThreadPoolExecutor(workers, thread_name_prefix="blazeport-read") as pool:
        pending: deque[Future[Decoded]] = deque()

        def fill() -> None:
            while len(pending) < depth:
                nxt = next(items, None)
                if nxt is None:
                    return
                pending.append(pool.submit(_read, *nxt, max_pixels, reduce_to))

        fill()
        try:
            while pending:
                t0 = time.perf_counter()
                item = pending.popleft().result()
                if stats is not None:
                    stats.wait_s += time.perf_counter() - t0
                fill()
                yield item
        finally:  # the consumer stopped early (an error, Ctrl-C): drop what has not started
            for fut in pending:
                fut.cancel()


def detect_folder(detector: Detector, paths: Iterable[str | Path], batch: int = 1, workers: int | None = None,
                  max_pixels: int | None = None, stats: FolderStats | None = None,
                  fast_decode: bool = False) -> Iterator[tuple[Decoded, list[Detection] | None]]:
    """``(item, detections)`` for every path in input order; ``detections`` is None for an unreadable file.

    Readable images go to :meth:`Detector.detect_batch` ``batch`` at a time; an unreadable file waits
    in its place in the group, so batches stay full and the order stays the input's. The reader runs
    ``2 * workers`` files ahead of the group (a next file for each reader while it decodes one): at most
    ``batch + 2 * workers`` decoded images are held at once, which matters on a folder of 50 MP photos.
    ``fast_decode``: JPEGs are decoded reduced, to a long side of at least
    :data:`FAST_DECODE_SIDE` x the model's input (:func:`fast_decode_side`); off, every image is
    decoded in full as MediaPipe does.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    stats = stats if stats is not None else FolderStats()
    n_workers = default_workers() if workers is None else workers
    t_start = time.perf_counter()
    group: list[Decoded] = []

    def flush() -> Iterator[tuple[Decoded, list[Detection] | None]]:
        readable = [d for d in group if d.image is not None]
        found: list[list[Detection]] = []
        if readable:
            t0 = time.perf_counter()
            found = detector.detect_batch([d.image for d in readable])  # type: ignore[misc]
            stats.detect_s += time.perf_counter() - t0
            stats.batches += 1
        by_index = {d.index: dets for d, dets in zip(readable, found, strict=True)}
        for d in group:
            dets = by_index.get(d.index)
            if dets is None:
                stats.skipped += 1
            else:
                stats.images += 1
                stats.faces.append(len(dets))
            yield d, dets
        group.clear()

    try:
        reduce_to = fast_decode_side(detector) if fast_decode else None
        for item in read_ahead(paths, n_workers, max_pixels, depth=2 * max(n_workers, 1), stats=stats, reduce_to=reduce_to):
            stats.read_s += item.read_s
            group.append(item)
            if sum(d.image is not None for d in group) >= batch:
                yield from flush()
        yield from flush()
    finally:
        stats.wall_s = time.perf_counter() - t_start
