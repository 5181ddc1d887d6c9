"""One detector shared by several threads gives each call its own image's faces, on every backend.

LiteRT's interpreter is not thread-safe: before ``TFLiteBackend`` gave each thread its own
interpreter, 4 threads sharing one detector made ~90% of calls raise "There is at least 1
reference to internal data" and some returned another image's faces. These tests run 4 threads x
200 calls over different real photos and require every answer to equal the single-threaded one.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import blazeport
from blazeport.pipeline.preprocess import read_image

THREADS, CALLS = 4, 200


def _photos(shared_data: Path) -> list[np.ndarray]:
    """Photos with different face counts, so a swapped answer cannot look right by chance."""
    folder = shared_data / "faces-boxed" / "images"
    return [read_image(p) for p in sorted(folder.glob("*.jpg"))[:6]]


def _signature(dets: list) -> list[tuple]:
    return [(round(d.score, 6), *np.round(d.box, 6)) for d in dets]


def _hammer(detector: blazeport.Detector, images: list[np.ndarray]) -> None:
    expected = [_signature(detector.detect(img)) for img in images]
    assert len({len(e) for e in expected}) > 1, "the photos should differ in face count"

    def worker(t: int) -> list[str]:
        wrong = []
        for i in range(CALLS):
            k = (t + i) % len(images)
            got = _signature(detector.detect(images[k]))
            if got != expected[k]:
                wrong.append(f"thread {t} call {i}: image {k} gave {len(got)} faces, expected {len(expected[k])}")
        return wrong

    with ThreadPoolExecutor(THREADS) as pool:
        problems = [w for ws in pool.map(worker, range(THREADS)) for w in ws]
    assert not problems, problems[:5]


@pytest.mark.parametrize("backend", ["tflite", "torch"])
def test_shared_detector_is_thread_safe(backend: str, shared_data: Path) -> None:
    _hammer(blazeport.load("full_range_sparse", backend=backend, threads=1), _photos(shared_data))


def test_shared_onnx_detector_is_thread_safe(shared_data: Path, tmp_path: Path) -> None:
    from blazeport.export import export

    out = tmp_path / "frs.onnx"
    assert export("full_range_sparse", "onnx", out)["ok"]
    _hammer(blazeport.load(out, backend="onnx", threads=1), _photos(shared_data))


def test_each_thread_gets_its_own_interpreter() -> None:
    backend = blazeport.load("short_range", backend="tflite").backend
    with ThreadPoolExecutor(2) as pool:
        ids = set(pool.map(lambda _: id(backend.interpreter), range(8)))
    assert ids and id(backend.interpreter) not in ids


def test_tflite_backend_reads_its_file_once(monkeypatch) -> None:
    """LiteRT runs the bytes that were checked: the file is read once (not checked, then read again)."""
    from blazeport.modelfiles.backends import TFLiteBackend
    from blazeport.specs import WEIGHTS_DIR

    reads = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self.name) or real(self))
    backend = TFLiteBackend(WEIGHTS_DIR / "face_detection_short_range.tflite", threads=1)
    assert reads == ["face_detection_short_range.tflite"]
    assert backend(np.zeros((1, 128, 128, 3), np.float32))[0].shape == (1, 896, 16)
