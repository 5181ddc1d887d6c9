"""Every configuration in its own process, round-robin over ``--rounds``; the children's results
merged into one row per configuration."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from blazeport.bench.mediapipe import MEDIAPIPE
from blazeport.bench.report import stats
from blazeport.bench.spawn import spawn
from blazeport.bench.targets import Target
from blazeport.specs import LandmarkSpec

Config = tuple[Target, int, str]  # target, threads, mode


def configurations(targets: list[Target], threads: list[int], modes: list[str]) -> list[Config]:
    """Every target at every thread count in every mode (MediaPipe: end to end only; a landmark model:
    model only, its end to end being the landmark pipeline's, which the bench does not time)."""
    return [(t, n, mode) for mode in modes for n in threads for t in targets
            if (t.backend != MEDIAPIPE or mode == "e2e") and (mode == "model" or not isinstance(t.spec, LandmarkSpec))]


def split_runs(runs: int, rounds: int) -> list[int]:
    """``runs`` over ``rounds`` rounds, as evenly as whole runs go."""
    return [runs // rounds + (1 if r < runs % rounds else 0) for r in range(rounds)]


def child_config(t: Target, threads: int, mode: str, runs: int, warmup: int, image: Path) -> dict[str, Any]:
    """What the child reads on stdin (the MediaPipe interpreter's path is the parent's business)."""
    cfg = {"runtime": t.runtime, "path": str(Path(t.path).resolve()) if t.path else None, "threads": threads,
           "mode": mode, "runs": runs, "warmup": warmup, "image": str(image), "spec": t.spec.to_dict(),
           "cwd": os.getcwd(), "trust_code": t.trust_code, **t.extra}
    return {k: v for k, v in cfg.items() if k != "python"}


def run_rounds(configs: list[Config], runs: int, warmup: int, rounds: int, image: Path,
               log: Callable[[str], None]) -> list[list[dict[str, Any]]]:
    """Each configuration's child results, one per round."""
    per_round = split_runs(runs, rounds)
    log(f"{len(configs)} configurations x {rounds} round(s), {runs} runs each after {warmup} warm-up, "
        "one process per configuration and round")
    children: list[list[dict[str, Any]]] = [[] for _ in configs]
    for r in range(rounds):
        # round-robin, every other round in reverse (A B C, C B A, ...): a slow spell of the host, or
        # an order effect, hits every configuration alike instead of the ones that happen to run then
        for i in range(len(configs)) if r % 2 == 0 else reversed(range(len(configs))):
            t, threads, mode = configs[i]
            child = spawn(child_config(t, threads, mode, per_round[r], warmup, image), t.extra.get("python", sys.executable))
            children[i].append(child)
            summary = (f"p50 {np.median(child['runs_ms']):.3f} ms" if child.get("runs_ms")
                       else f"FAILED: {child.get('error')}")
            where = f"round {r + 1}/{rounds} " if rounds > 1 else ""
            log(f"[{where}{i + 1}/{len(configs)}] {t.model} {t.backend} {threads}t {mode}: {summary}")
    return children


def merge_rounds(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration's child results over rounds: timings pooled (in round order), one-off
    costs (import, init, first call) as the median of the rounds, peak RSS as the maximum."""
    failed = [p for p in parts if "error" in p]
    if failed:
        return {"error": failed[0]["error"]}
    out = dict(parts[-1])
    out["rounds"] = len(parts)
    out["runs_ms"] = [t for p in parts for t in p["runs_ms"]]
    if "stages_ms" in out:
        out["stages_ms"] = {s: [t for p in parts for t in p["stages_ms"][s]] for s in out["stages_ms"]}
    for key in ("import_ms", "init_ms", "first_ms"):
        out[key] = float(np.median([p[key] for p in parts]))
        if len(parts) > 1:
            out[f"{key}_rounds"] = [p[key] for p in parts]
    runs = [len(p["runs_ms"]) for p in parts]
    out["cpu_ms_per_run"] = float(np.average([p["cpu_ms_per_run"] for p in parts], weights=runs))
    for key in ("peak_rss_mb", "ru_maxrss_mb"):
        out[key] = max(p[key] for p in parts)
    return out


def result_row(t: Target, threads: int, mode: str, child: dict[str, Any]) -> dict[str, Any]:
    """One configuration's row of the report: what ran, its merged results and their statistics."""
    row: dict[str, Any] = {
        "model": t.model, "backend": t.backend, "runtime": t.runtime, "threads": threads, "mode": mode,
        "path": t.path, "file_bytes": Path(t.path).stat().st_size if t.path else None, "params": t.params,
        "macs": t.macs, "spec": t.spec.name, "reference": t.reference.name if t.reference else None,
        "baseline": t.baseline, "note": t.extra.get("note"), "weights": t.weights,
        "device": t.extra.get("device", "cpu"), **child,
    }
    if t.backend == MEDIAPIPE:
        row["model_selection"] = t.extra["model_selection"]
        row["python"] = t.extra["python"]
    if "runs_ms" in row:
        row["stats"] = stats(row["runs_ms"])
    if "stages_ms" in row:
        row["stage_stats"] = {s: stats(v) for s, v in row["stages_ms"].items()}
        infer = row["stage_stats"].get("infer", {}).get("p50")
        post = row["stage_stats"].get("postprocess", {}).get("p50")
        row["postprocess_share_pct"] = 100.0 * post / infer if infer and post is not None else None
    return row


def measure_rows(configs: list[Config], runs: int, warmup: int, rounds: int, image: Path,
                 log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Run every configuration ``rounds`` times and return one row each."""
    children = run_rounds(configs, runs, warmup, rounds, image, log)
    return [result_row(t, threads, mode, merge_rounds(parts)) for (t, threads, mode), parts in zip(configs, children,
                                                                                                   strict=True)]
