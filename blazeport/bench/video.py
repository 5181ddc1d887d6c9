"""``blazeport bench --video FILE``: frames per second over a video, blazeport's loop against MediaPipe's.

Each configuration runs in its own child process (``python -m blazeport.bench.child``, mode
``video``) over the whole file, after an untimed pass over its first frames:

- **ours** is what ``blazeport detect VIDEO`` runs: :func:`blazeport.video.frames.open_frames` (a reader
  thread decoding ahead, RGB converted once) and :meth:`Detector.detect` per frame; with ``draw``
  also ``--out``'s work, :func:`blazeport.pipeline.draw.draw_detections` and the ``mp4v`` encoder
  (:class:`blazeport.video.writer.VideoOutput`, into a temporary file deleted after);
- **MediaPipe's own loop**, as its examples write it: ``cv2.VideoCapture.read`` + ``cvtColor`` then
  ``FaceDetection.process`` in one thread (``plain``), and the same ``process`` fed by our reader thread
  (``reader``), so the ratio to it compares detectors, not decoders.

Stages, per frame: ``decode`` (the reader's read + RGB conversion; in ``plain`` it is in the loop),
``wait`` (what the detector waited for a decoded frame: decoding not hidden), ``detect``, ``draw``
(drawing, and handing the frame to the encoder thread) and ``encode`` (that thread's BGR conversion and
FFmpeg, overlapping the next frames). Frames per second are frames over the wall time of the whole pass, from
opening the file to the last frame (the model's loading is ``init``, apart).
``decode_threads`` is FFmpeg's (``CAP_PROP_N_THREADS``, the same in every loop; 0 is OpenCV's default,
one per core, which ``detect`` uses).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from blazeport.bench.mediapipe import MEDIAPIPE, mediapipe_face_detection
from blazeport.bench.report import median_round
from blazeport.bench.timing import process_facts
from blazeport.errors import BlazeportError
from blazeport.video.frames import open_frames

WARMUP_FRAMES = 10


def _decode_threads(cfg: dict[str, Any]) -> int:
    return int(cfg["decode_threads"])  # 0: OpenCV's default (one per core)


def _summary(frames: int, wall_s: float, decode_s: float, wait_s: float, detect: list[float], draw: list[float],
             faces: int) -> dict[str, Any]:
    n = max(frames, 1)
    return {"frames": frames, "wall_s": round(wall_s, 4), "frames_per_s": frames / wall_s if wall_s else None,
            "decode_ms": 1000 * decode_s / n, "wait_ms": 1000 * wait_s / n,
            "detect_ms": 1000 * float(np.mean(detect)) if detect else None,
            "detect_p50_ms": 1000 * float(np.median(detect)) if detect else None,
            "draw_ms": 1000 * float(np.mean(draw)) if draw else None, "faces": faces}


def measure_video(detector: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """In the child: ``blazeport detect VIDEO``'s loop (``--out``'s drawing too with ``draw``)."""
    from blazeport.pipeline.draw import draw_detections
    from blazeport.video.writer import VideoOutput

    video, threads = cfg["video"], _decode_threads(cfg)
    with open_frames(video, read_ahead=0) as warm:
        for frame in warm:
            detector.detect(frame.rgb)
            if warm.frames >= WARMUP_FRAMES:
                break
    detect, draw, faces = [], [], 0
    with tempfile.TemporaryDirectory(prefix="blazeport-bench-") as tmp:
        t_start = time.perf_counter()
        source = open_frames(video, decode_threads=threads)
        out = VideoOutput(Path(tmp) / "drawn.mp4", source.info.fps) if cfg.get("draw") else None
        with source:
            for frame in source:
                a = time.perf_counter()
                dets = detector.detect(frame.rgb)
                b = time.perf_counter()
                detect.append(b - a)
                faces += len(dets)
                if out is not None:
                    out.write(draw_detections(frame.rgb, dets))
                    draw.append(time.perf_counter() - b)
        if out is not None:
            out.commit()  # the encoder's last frames are flushed here: part of the pass
        wall = time.perf_counter() - t_start
    encode = {"encode_ms": 1000 * out.encode_s / max(1, out.frames)} if out is not None else {}
    return {**_summary(source.frames, wall, source.decode_s, source.wait_s, detect, draw, faces), **encode,
            **process_facts()}


def measure_mediapipe_video(cfg: dict[str, Any]) -> dict[str, Any]:
    """In the child: MediaPipe's ``FaceDetection.process`` over the video, decoded by OpenCV in the loop
    (``reader`` false) or by our reader thread."""
    import mediapipe as mp

    video, threads = cfg["video"], _decode_threads(cfg)
    fd = mediapipe_face_detection(int(cfg["model_selection"]), int(cfg["threads"]))
    with open_frames(video, read_ahead=0) as warm:
        for frame in warm:
            fd.process(frame.rgb)
            if warm.frames >= WARMUP_FRAMES:
                break
    detect: list[float] = []
    faces = frames = 0
    decode_s = wait_s = 0.0
    t_start = time.perf_counter()
    if cfg.get("reader"):
        with open_frames(video, decode_threads=threads) as source:
            for frame in source:
                a = time.perf_counter()
                faces += len(fd.process(frame.rgb).detections or [])
                detect.append(time.perf_counter() - a)
        frames, decode_s, wait_s = source.frames, source.decode_s, source.wait_s
    else:  # as MediaPipe's examples: read, convert, process
        cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, threads])
        while True:
            a = time.perf_counter()
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            b = time.perf_counter()
            faces += len(fd.process(rgb).detections or [])
            detect.append(time.perf_counter() - b)
            decode_s += b - a
            frames += 1
        cap.release()
        wait_s = decode_s  # nothing decodes ahead: the detector waits for every frame
    wall = time.perf_counter() - t_start
    fd.close()
    return {**_summary(frames, wall, decode_s, wait_s, detect, [], faces), **process_facts(),
            "versions": {"mediapipe": mp.__version__}}


def video_configs(targets: list[Any], threads: list[int], decode_threads: list[int], draw: bool) -> list[dict[str, Any]]:
    """Every target at every thread and decode-thread count: ours detecting (and drawing, with ``draw``),
    MediaPipe's plain loop and MediaPipe fed by our reader."""
    configs = []
    for n in threads:
        for d in decode_threads:
            for t in targets:
                if t.backend == MEDIAPIPE:
                    configs += [{"target": t, "threads": n, "decode_threads": d, "reader": r, "draw": False}
                                for r in (False, True)]
                else:
                    configs += [{"target": t, "threads": n, "decode_threads": d, "reader": True, "draw": w}
                                for w in ((False, True) if draw else (False,))]
    return configs


def _ratio(ours: dict[str, Any], theirs: dict[str, Any] | None) -> float | None:
    """frames/s over frames/s: the median over rounds of the two rows' same-round rates (a round runs every
    configuration within a minute, so a slow spell of the shared host hits both sides of a pair)."""
    if theirs is None or not theirs.get("frames_per_s"):
        return None
    a, b = ours.get("frames_per_s_rounds") or [], theirs.get("frames_per_s_rounds") or []
    if len(a) == len(b) > 1:
        return float(np.median([x / y for x, y in zip(a, b, strict=True)]))
    return ours["frames_per_s"] / theirs["frames_per_s"]


def _ratios(rows: list[dict[str, Any]]) -> None:
    """Each of our rows' frames/s over MediaPipe's at the same threads: its plain loop at the same decode
    threads (``vs_mediapipe``) and at OpenCV's default decode threads, as its examples run it
    (``vs_mediapipe_default``, where ``--decode-threads`` has 0), and fed by our reader
    (``vs_mediapipe_reader``)."""
    mp_rows = {(r["threads"], r["decode_threads"], r["reader"]): r for r in rows if r["backend"] == MEDIAPIPE}
    for r in rows:
        if r["backend"] == MEDIAPIPE or not r.get("frames_per_s"):
            continue
        r["vs_mediapipe"] = _ratio(r, mp_rows.get((r["threads"], r["decode_threads"], False)))
        r["vs_mediapipe_default"] = _ratio(r, mp_rows.get((r["threads"], 0, False)))
        r["vs_mediapipe_reader"] = _ratio(r, mp_rows.get((r["threads"], r["decode_threads"], True)))


def run_video_bench(configs: list[dict[str, Any]], video: Path, rounds: int, child_config: Callable[..., dict[str, Any]],
                    spawn: Callable[[dict[str, Any], str], dict[str, Any]], image: Path,
                    log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Rows of ``bench --video``: each configuration in its own child per round (round-robin, every other
    round reversed, the median round reported)."""
    with open_frames(video) as probe:  # one clear error before any child, and the page cache warm
        info, frames = probe.info, sum(1 for _ in probe)
    if probe.error:
        raise BlazeportError(f"--video {probe.error}")
    log(f"{len(configs)} configurations x {rounds} round(s) over {video} ({frames} frames, {info.width}x{info.height}, "
        f"{info.fps:.4g} fps), one process each")
    passes: list[list[dict[str, Any]]] = [[] for _ in configs]
    for r in range(rounds):
        for i in range(len(configs)) if r % 2 == 0 else reversed(range(len(configs))):
            c = configs[i]
            t = c["target"]
            cfg = {**child_config(t, c["threads"], "video", 1, 0, image), "video": str(Path(video).resolve()),
                   "decode_threads": c["decode_threads"], "reader": c["reader"], "draw": c["draw"]}
            child = spawn(cfg, t.extra.get("python", sys.executable))
            passes[i].append(child)
            rate = f"{child['frames_per_s']:.1f} frames/s" if child.get("frames_per_s") else f"FAILED: {child.get('error')}"
            where = f"round {r + 1}/{rounds} " if rounds > 1 else ""
            log(f"[{where}{i + 1}/{len(configs)}] {t.model} {t.backend} {c['threads']}t decode {c['decode_threads']} "
                f"{'reader' if c['reader'] else 'plain'}{' draw' if c['draw'] else ''}: {rate}")
    rows = []
    for c, runs in zip(configs, passes, strict=True):
        t = c["target"]
        row = {"model": t.model, "backend": t.backend, "path": t.path, "threads": c["threads"],
               "decode_threads": c["decode_threads"], "reader": c["reader"], "draw": c["draw"], "baseline": t.baseline,
               "rounds": rounds, "video": {"path": str(video), "frames": frames, "width": info.width,
                                           "height": info.height, "fps": info.fps}}
        rows.append(median_round(row, runs, "frames_per_s"))
    _ratios(rows)
    return rows


def print_video_report(rows: list[dict[str, Any]]) -> None:
    def fmt(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    print(f"{'model':<13}{'backend':<17}{'thr':>4}{'dec':>4}  {'loop':<12}{'frames/s':>9}{'decode':>8}{'wait':>7}"
          f"{'detect':>8}{'draw':>7}{'encode':>8}{'x MP':>7}{'x MP cv':>8}{'x MP rdr':>9}")
    for r in rows:
        loop = ("reader" if r["reader"] else "plain") + (" + draw" if r["draw"] else "")
        head = f"{r['model']:<13}{r['backend']:<17}{r['threads']:>4}{r['decode_threads'] or 'cv':>4}  {loop:<12}"
        if "error" in r:
            print(f"{head}FAILED: {r['error']}")
            continue
        print(f"{head}{fmt(r['frames_per_s'], '.1f'):>9}{fmt(r['decode_ms'], '.2f'):>8}{fmt(r['wait_ms'], '.2f'):>7}"
              f"{fmt(r['detect_ms'], '.2f'):>8}{fmt(r['draw_ms'], '.2f'):>7}{fmt(r.get('encode_ms'), '.2f'):>8}"
              f"{fmt(r.get('vs_mediapipe'), '.2f'):>7}{fmt(r.get('vs_mediapipe_default'), '.2f'):>8}"
              f"{fmt(r.get('vs_mediapipe_reader'), '.2f'):>9}")
    for n in sorted({r["threads"] for r in rows}):
        for key, how in (("vs_mediapipe", "at the same decode threads"),
                         ("vs_mediapipe_default", "at OpenCV's default decode threads")):
            best = [r[key] for r in rows if r["threads"] == n and not r["draw"] and r.get(key)]
            if best:
                print(f"{n} thread(s): best {max(best):.2f}x the frames/s of MediaPipe's own loop {how} (target >= 1.5x)")
    print("ms per frame; decode: the reader's read + RGB (in the loop for MediaPipe's plain row), wait: the detector "
          "waiting for a frame, draw: drawing, encode: the encoder thread's BGR + mp4v (overlapped); dec: FFmpeg "
          "decode threads (cv: OpenCV's default); x MP: over MediaPipe's plain loop at the same dec, x MP cv: at "
          "OpenCV's default, x MP rdr: MediaPipe fed by our reader; ratios are medians of same-round ratios",
          file=sys.stderr)
