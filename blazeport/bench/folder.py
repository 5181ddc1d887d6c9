"""``blazeport bench --folder DIR``: images per second over a real folder, blazeport against MediaPipe.

Single-image latency hides what a folder costs: decoding is as slow as the model, and a batch of
images can share one forward. Here every configuration runs :func:`blazeport.pipeline.folder.detect_folder`
(what ``blazeport detect DIR --batch N --workers K`` runs) over the same files in its own process,
beside MediaPipe's own ``FaceDetection.process`` loop (the graph of :mod:`blazeport.bench.mediapipe`,
so its thread count matches) fed by the same reader: ``read_image_sized`` in the same ``--workers``
threads, so the ratio compares detectors, not decoders. MediaPipe's plain loop (decode then process,
no reader threads) is measured too, as users write it. Each child makes one untimed pass over a few
files first; the parent reads every file once before any child so no configuration pays a cold cache.
This module is the parent's side; what the child runs is :mod:`blazeport.bench.folder_measure`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from blazeport.bench.folder_measure import folder_paths
from blazeport.bench.mediapipe import MEDIAPIPE
from blazeport.bench.report import median_round
from blazeport.bench.rounds import child_config
from blazeport.bench.spawn import spawn
from blazeport.bench.targets import Target, mediapipe_baseline
from blazeport.modelfiles.verify import match_detections
from blazeport.pipeline.postprocess import Detection


def folder_configs(targets: list[Target], threads: list[int], batches: list[int], workers: int,
                   fast_decode: bool = False) -> list[dict[str, Any]]:
    """Every target at every thread count and batch; MediaPipe (batch 1) with our reader and with none.
    With ``fast_decode``, each of ours twice: the exact decode and the fast one."""
    configs = []
    for n in threads:
        for t in targets:
            if t.backend == MEDIAPIPE:
                configs += [{"target": t, "threads": n, "batch": 1, "workers": w, "fast_decode": False} for w in (workers, 0)]
            else:
                configs += [{"target": t, "threads": n, "batch": b, "workers": workers, "fast_decode": f}
                            for b in batches for f in ((False, True) if fast_decode else (False,))]
    return configs


def _fast_decode_effects(rows: list[dict[str, Any]]) -> None:
    """Each fast-decode row against the exact-decode row of the same model, backend, threads and batch:
    its images/s ratio, and its detections matched to the exact ones (same count per image, score and
    coordinate differences: :func:`blazeport.modelfiles.verify.match_detections`). Drops the detection lists."""

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return r["model"], r["backend"], r["path"], r["threads"], r["batch"]

    def as_detections(per_file: list[Any]) -> list[list[Detection]]:
        return [[Detection(d["score"], tuple(d["box"]), [tuple(k) for k in d["keypoints"]]) for d in dets or []]
                for dets in per_file]

    exact = {key(r): r for r in rows if not r.get("fast_decode") and r.get("detections") is not None}
    for r in rows:
        ref = exact.get(key(r))
        if r.get("fast_decode") and ref is not None and r.get("detections") is not None:
            r["fast_decode_effect"] = {
                "speedup": r["images_per_s"] / ref["images_per_s"] if ref.get("images_per_s") else None,
                **match_detections(as_detections(r["detections"]), as_detections(ref["detections"]))}
    for r in rows:
        r.pop("detections", None)


def _ratios(rows: list[dict[str, Any]]) -> None:
    """Each blazeport row's images/s over MediaPipe's at the same thread count: with the same reader
    (``vs_mediapipe``) and against its plain loop (``vs_mediapipe_plain``)."""
    mp_rate = {(r["threads"], r["workers"]): r.get("images_per_s") for r in rows if r["backend"] == MEDIAPIPE}
    for r in rows:
        if r["backend"] == MEDIAPIPE or not r.get("images_per_s"):
            continue
        same, plain = mp_rate.get((r["threads"], r["workers"])), mp_rate.get((r["threads"], 0))
        r["vs_mediapipe"] = r["images_per_s"] / same if same else None
        r["vs_mediapipe_plain"] = r["images_per_s"] / plain if plain else None


def run_folder_bench(targets: list[Target], folder: Path, limit: int | None, threads: list[int], batches: list[int],
                     workers: int, mediapipe_python: str | None, notes: list[str], image: Path,
                     log: Callable[[str], None], rounds: int = 1, fast_decode: bool = False) -> list[dict[str, Any]]:
    """Rows of ``bench --folder``: every configuration in its own child over the same files, MediaPipe's
    beside them when ``mediapipe_python`` (an interpreter that imports it) is given; ``rounds`` passes each,
    round-robin, the median pass reported. ``fast_decode`` adds each of ours with JPEGs decoded reduced,
    with its effect on the detections (``fast_decode_effect``)."""
    paths = folder_paths(folder, limit)
    for p in paths:  # page cache warm for every configuration alike
        p.read_bytes()
    refs = {t.reference.name: t.reference for t in targets if t.reference is not None}
    for ref in refs.values():
        targets = [*targets, *mediapipe_baseline(ref, mediapipe_python, notes)]
    configs = folder_configs(targets, threads, batches, workers, fast_decode)
    log(f"{len(configs)} configurations x {rounds} round(s) over {len(paths)} files of {folder}, one process each")
    passes: list[list[dict[str, Any]]] = [[] for _ in configs]
    for r in range(rounds):
        # round-robin, every other round reversed (as bench.rounds): a slow spell of a shared host hits all alike
        for i in range(len(configs)) if r % 2 == 0 else reversed(range(len(configs))):
            c = configs[i]
            t: Target = c["target"]
            cfg = {**child_config(t, c["threads"], "folder", 1, 0, image), "folder": str(Path(folder).resolve()),
                   "limit": limit, "batch": c["batch"], "workers": c["workers"], "fast_decode": c["fast_decode"],
                   "collect": fast_decode}
            child = spawn(cfg, t.extra.get("python", sys.executable))
            passes[i].append(child)
            rate = f"{child['images_per_s']:.1f} images/s" if child.get("images_per_s") else f"FAILED: {child.get('error')}"
            where = f"round {r + 1}/{rounds} " if rounds > 1 else ""
            log(f"[{where}{i + 1}/{len(configs)}] {t.model} {t.backend} {c['threads']}t batch {c['batch']} "
                f"workers {c['workers']}{' fast decode' if c['fast_decode'] else ''}: {rate}")
    rows = []
    for c, runs in zip(configs, passes, strict=True):
        t = c["target"]
        row = {"model": t.model, "backend": t.backend, "path": t.path, "threads": c["threads"], "batch": c["batch"],
               "workers": c["workers"], "fast_decode": c["fast_decode"], "device": t.extra.get("device", "cpu"),
               "baseline": t.baseline, "rounds": rounds}
        rows.append(median_round(row, runs, "images_per_s"))
    _ratios(rows)
    _fast_decode_effects(rows)
    return rows


def print_folder_report(rows: list[dict[str, Any]]) -> None:
    def fmt(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    print(f"{'model':<14}{'backend':<17}{'thr':>4}{'batch':>6}{'workers':>8}{'decode':>7}{'images/s':>10}{'det img/s':>10}"
          f"{'decode%':>9}{'wait%':>7}{'x MP':>7}{'x MP plain':>11}")
    for r in rows:
        decode = "fast" if r.get("fast_decode") else "exact"
        if "error" in r:
            print(f"{r['model']:<14}{r['backend']:<17}{r['threads']:>4}{r['batch']:>6}{r['workers']:>8}{decode:>7}"
                  f"  FAILED: {r['error']}")
            continue
        print(f"{r['model']:<14}{r['backend']:<17}{r['threads']:>4}{r['batch']:>6}{r['workers']:>8}{decode:>7}"
              f"{fmt(r['images_per_s'], '.1f'):>10}{fmt(r.get('detector_images_per_s'), '.1f'):>10}"
              f"{fmt(100 * r['decode_share'], '.0f'):>9}"
              f"{fmt(100 * r['wait_share'], '.0f'):>7}{fmt(r.get('vs_mediapipe'), '.2f'):>7}"
              f"{fmt(r.get('vs_mediapipe_plain'), '.2f'):>11}")
    for n in sorted({r["threads"] for r in rows}):  # per thread count: one odd MediaPipe run must not make the headline
        rates = [r["vs_mediapipe"] for r in rows if r["threads"] == n and r.get("vs_mediapipe")]
        if rates:
            print(f"{n} thread(s): best {max(rates):.2f}x MediaPipe with the same reader (target >= 1.5x)")
    for r in rows:
        e = r.get("fast_decode_effect")
        if e:
            print(f"fast decode, {r['model']} {r['backend']} {r['threads']}t batch {r['batch']}: "
                  f"{e['speedup']:.2f}x the exact decode's images/s; same count on {e['images_same_count']}/{e['images']} "
                  f"images ({e['faces_checked']} faces against {e['faces']}); score diff p99 {e['p99_score_diff']:.4f}, "
                  f"max {e['max_score_diff']:.4f}; coordinate diff p99 {e['p99_coordinate_diff']:.4f}, "
                  f"max {e['max_coordinate_diff']:.4f}")
    print(f"images: {rows[0].get('images') if rows else 0}, det img/s = images per second of detector time (no file "
          "decoding), decode% = reader seconds / (reader + detector seconds), "
          "wait% = share of the wall the detector waited for a decoded image", file=sys.stderr)

