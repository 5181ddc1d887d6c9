"""What a run's report holds and shows: statistics, ratios against the baselines, the issue's
latency targets, the host, terminal tables and the chart."""

from __future__ import annotations

import contextlib
import io
import os
import platform
import sys
import textwrap
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from blazeport import __version__
from blazeport.bench.mediapipe import MEDIAPIPE
from blazeport.bench.targets import ORIGINAL
from blazeport.errors import BlazeportError
from blazeport.files import write_atomic

LIBRARIES = {  # distribution names, read with importlib.metadata (nothing is imported)
    "torch": "torch", "onnxruntime": "onnxruntime", "ai-edge-litert": "ai-edge-litert", "executorch": "executorch",
    "numpy": "numpy", "opencv": ("opencv-python-headless", "opencv-python", "opencv-contrib-python"), "rich": "rich",
}
INT8_TFLITE_TARGET = 0.7  # an int8 .tflite at most this fraction of the original's LiteRT latency
TORCH_TARGET = 1.5  # a converted original on PyTorch at most this multiple of the original's LiteRT latency
TITLES = {
    "model": "model only: the backend call on a ready (1, S, S, 3) input, ms",
    "e2e": "end to end: image file -> detections (read, letterbox, infer, decode + NMS), p50 per stage, ms",
}


def stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms, np.float64)
    if a.size == 0:
        return {}
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"min": float(a.min()), "p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(a.mean()),
            "std": float(a.std()), "max": float(a.max())}


# ----------------------------------------------------------------------------------------------
# Host


def _version(dist: str | tuple[str, ...]) -> str | None:
    for name in (dist,) if isinstance(dist, str) else dist:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


def host_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):  # no /proc (macOS): platform's name stands
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu, "machine": platform.machine(), "cores": os.cpu_count(), "usable_cores": usable,
        "os": platform.platform(), "python": platform.python_version(), "blazeport": __version__,
        "libraries": {k: _version(v) for k, v in LIBRARIES.items()},
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def host_line(host: dict[str, Any]) -> str:
    libs = ", ".join(f"{k} {v}" for k, v in host["libraries"].items() if v and k != "rich")
    mp = f", mediapipe {host['mediapipe']}" if host.get("mediapipe") else ""
    return (f"{host['cpu']} ({host['usable_cores']} of {host['cores']} cores), {host['os']}, Python {host['python']}; "
            f"{libs}{mp}")


# ----------------------------------------------------------------------------------------------
# Ratios and targets


def _p50(r: dict[str, Any]) -> float | None:
    return r.get("stats", {}).get("p50")


def add_ratios(results: list[dict[str, Any]]) -> None:
    """``vs_original``: p50 / p50 of the reference's original tflite (same threads and mode), and
    ``size_vs_original``: file size / the original's (an int8 file's size and speed against the float original);
    ``vs_mediapipe`` (e2e): p50 / MediaPipe's p50 (same threads, same file)."""
    index = {(r["backend"], r["reference"], r["threads"], r["mode"]): r for r in results if r.get("stats")}
    for r in results:
        if not r.get("stats"):
            continue
        ratios = {}
        orig = index.get((ORIGINAL, r["reference"], r["threads"], r["mode"]))
        if orig is not None and _p50(orig):
            ratios["vs_original"] = _p50(r) / _p50(orig)
            if r.get("file_bytes") and orig.get("file_bytes"):
                ratios["size_vs_original"] = r["file_bytes"] / orig["file_bytes"]
        mp = index.get((MEDIAPIPE, r["reference"], r["threads"], "e2e"))
        if r["mode"] == "e2e" and mp is not None and _p50(mp):
            ratios["vs_mediapipe"] = _p50(r) / _p50(mp)
        r["ratios"] = ratios


def _target(name: str, where: str, value: float, limit: float, unit: str) -> dict[str, Any]:
    return {"target": name, "where": where, "value": value, "limit": limit, "unit": unit, "met": value <= limit}


def check_targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issues' targets, from this run's ratios: e2e onnx <= 1.0x MediaPipe, postprocess <= 10% of
    model time, re-exported tflite <= 1.1x the original, a converted original on PyTorch <= 1.5x the
    original on LiteRT and no slower at 2 threads than at 1. Each says its unit (``x``: a ratio, ``%``)."""
    out = []
    one_thread = {(r["model"], r["backend"], r["mode"]): r for r in results if r["threads"] == 1 and r.get("stats")}
    for r in results:
        if not r.get("stats") or (r.get("baseline") and r["backend"] == MEDIAPIPE):
            continue
        where = f"{r['model']} {r['backend']} {r['threads']}t"
        ratio = r.get("ratios", {})
        if r["mode"] == "e2e" and r["backend"] == "onnx" and "vs_mediapipe" in ratio:
            out.append(_target("e2e onnx <= 1.0x MediaPipe", where, ratio["vs_mediapipe"], 1.0, "x"))
        if r["mode"] == "e2e" and r["backend"] != MEDIAPIPE and r.get("postprocess_share_pct") is not None:
            out.append(_target("decode + NMS <= 10% of model time", where, r["postprocess_share_pct"], 10.0, "%"))
        if r["mode"] == "model" and r["backend"] == "tflite" and "vs_original" in ratio and r.get("reference") == r.get("spec"):
            # a re-export of the original itself (a student's ratio to its teacher is a figure, not this target)
            if r.get("weights") == "int8":  # full-integer: the issue wants it faster than Google's float file
                out.append(_target("int8 tflite <= 0.7x original", where, ratio["vs_original"], INT8_TFLITE_TARGET, "x"))
            else:
                out.append(_target("re-exported tflite <= 1.1x original", where, ratio["vs_original"], 1.1, "x"))
        if r["mode"] == "model" and r["backend"] == "torch" and r.get("reference") == r.get("spec") \
                and r.get("device", "cpu") == "cpu":
            if "vs_original" in ratio:  # a converted original (a student's ratio to its teacher is a figure)
                out.append(_target(f"converted PyTorch <= {TORCH_TARGET}x original LiteRT", where, ratio["vs_original"],
                                   TORCH_TARGET, "x"))
            single = one_thread.get((r["model"], r["backend"], r["mode"]))
            if r["threads"] > 1 and single is not None and _p50(single):
                out.append(_target(f"PyTorch at {r['threads']} threads no slower than at 1", where,
                                   _p50(r) / _p50(single), 1.0, "x"))
    return out


# ----------------------------------------------------------------------------------------------
# Terminal tables and the chart


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _count(x: int | None, unit: float, digits: int) -> str:
    return "-" if x is None else f"{x / unit:.{digits}f}"


def table_rows(results: list[dict[str, Any]], mode: str) -> tuple[list[str], list[list[str]]]:
    rows = []
    if mode == "model":
        head = ["model", "backend", "thr", "file MB", "params k", "MMACs", "import", "init", "first", "min", "p50", "p90",
                "p99", "mean", "std", "cpu/run", "RSS MB", "x orig"]
    else:
        head = ["model", "backend", "thr", "first", "p50", "p90", "p99", "read", "pre", "infer", "post", "post %",
                "faces", "cpu/run", "RSS MB", "x orig", "x MP"]
    for r in results:
        if r["mode"] != mode:
            continue
        name = r["model"] + (" *" if r.get("baseline") else "")
        if r.get("error"):
            rows.append([name, r["backend"], str(r["threads"]), f"failed: {r['error']}"] + [""] * (len(head) - 4))
            continue
        s, ratio = r["stats"], r.get("ratios", {})
        vs_orig = _fmt(ratio.get("vs_original"), 2)
        if mode == "model":
            rows.append([name, r["backend"], str(r["threads"]), _count(r.get("file_bytes"), 1e6, 2),
                         _count(r.get("params"), 1e3, 1), _count(r.get("macs"), 1e6, 1), _fmt(r.get("import_ms"), 0),
                         _fmt(r.get("init_ms"), 1), _fmt(r.get("first_ms")), *(_fmt(s.get(k)) for k in ("min", "p50",
                         "p90", "p99", "mean", "std")), _fmt(r.get("cpu_ms_per_run")), _fmt(r.get("peak_rss_mb"), 0),
                         vs_orig])  # .get: a row read from a benchmark_model log has no p90 / p99 (printed "-")
        else:
            st = r.get("stage_stats", {})

            def stage(name: str, st: dict[str, Any] = st) -> str:
                return _fmt(st.get(name, {}).get("p50"))

            pre = stage("preprocess") if r["backend"] != MEDIAPIPE else "-"
            infer = stage("infer") if r["backend"] != MEDIAPIPE else stage("process")
            post = stage("postprocess") if r["backend"] != MEDIAPIPE else ""
            rows.append([name, r["backend"], str(r["threads"]), _fmt(r.get("first_ms")), _fmt(s["p50"]), _fmt(s["p90"]),
                         _fmt(s["p99"]), stage("read"), pre, infer, post, _fmt(r.get("postprocess_share_pct"), 1),
                         _fmt(r.get("faces")), _fmt(r.get("cpu_ms_per_run")), _fmt(r.get("peak_rss_mb"), 0), vs_orig,
                         _fmt(ratio.get("vs_mediapipe"), 2)])
    return head, rows


def print_tables(results: list[dict[str, Any]], file: Any = None, titles: dict[str, str] | None = None) -> None:
    """The tables alone, one per mode, titled by ``titles`` (default :data:`TITLES`): shared by a host
    run's report and one read from Android logs (:mod:`blazeport.bench.android_results`)."""
    file = file or sys.stdout
    titles = {**TITLES, **(titles or {})}
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # a board with the runtime only
        Console = None
    for mode in ("model", "e2e"):
        head, rows = table_rows(results, mode)
        if not rows:
            continue
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        if Console is not None:  # wide enough for every cell: a cut number (rich's "309.…") is a wrong number
            console = Console(file=file, width=max(200, Console(file=file).width, sum(w + 3 for w in widths) + 1))
            table = Table(title=titles[mode], title_justify="left", header_style="bold")
            for i, h in enumerate(head):
                table.add_column(h, justify="left" if i < 2 else "right", no_wrap=True)
            for row in rows:
                table.add_row(*row)
            console.print(table)
        else:
            print(titles[mode], file=file)
            for row in [head, *rows]:
                print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths,
                                                                                              strict=True))), file=file)


def print_report(report: dict[str, Any], file: Any = None) -> None:
    """Rich tables on the terminal (plain text when rich is not installed)."""
    file = file or sys.stdout
    print_tables(report["results"], file)
    lines = ["* baseline added by the bench. x orig: p50 / p50 of the original .tflite in LiteRT (same threads, mode); "
             "x MP: e2e p50 / MediaPipe's p50 (read + FaceDetection.process(rgb); its infer column is the whole "
             "process() call), file read included in both. cpu/run: CPU ms per run, all threads.",
             f"runs {report['settings']['runs']} ({report['settings']['rounds']} round(s), round-robin A-Z, Z-A, ...) after "
             f"{report['settings']['warmup']} warm-up, each configuration in its own process; image "
             f"{report['settings']['image']}",
             "host: " + host_line(report["host"])]
    lines += [f"note: {n}" for n in report["notes"]]
    for t in report["targets"]:
        lines.append(f"target {t['target']}: {t['where']} {t['value']:.2f}{t['unit']} -> {'met' if t['met'] else 'MISSED'}")
    for line in lines:
        print(line, file=file)


def write_plot(report: dict[str, Any], out: Path, replace: bool = True) -> None:
    """p50 bars with a whisker to p90, one panel per mode (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in ("model", "e2e") if any(r["mode"] == m and r.get("stats") for r in report["results"])]
    if not modes:
        raise BlazeportError("nothing was measured: no chart to draw")
    groups = {m: [r for r in report["results"] if r["mode"] == m and r.get("stats")] for m in modes}
    height = max(3.0, 0.32 * sum(len(g) for g in groups.values()) + 1.5 * len(modes))
    fig, axes = plt.subplots(len(modes), 1, figsize=(10, height), squeeze=False,
                             gridspec_kw={"height_ratios": [len(groups[m]) + 1 for m in modes]})
    colours = {"torch": "#ee4c2c", "onnx": "#4a90d9", "tflite": "#f5a623", "executorch": "#8e44ad", ORIGINAL: "#7b7b7b",
               MEDIAPIPE: "#2ca02c"}
    for ax, mode in zip(axes[:, 0], modes, strict=True):
        rows = groups[mode]
        labels = [f"{r['model']} · {r['backend']} · {r['threads']}t" for r in rows]
        p50 = np.array([r["stats"]["p50"] for r in rows])
        p90 = np.array([r["stats"]["p90"] for r in rows])
        y = np.arange(len(rows))[::-1]
        ax.barh(y, p50, color=[colours.get(r["backend"], "#999999") for r in rows],
                xerr=[np.zeros_like(p50), p90 - p50], capsize=3, error_kw={"elinewidth": 1})
        for yi, v, w in zip(y, p50, p90, strict=True):
            ax.text(w, yi, f"  {v:.2f}", va="center", fontsize=7)
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_xlabel("ms (bar: p50, whisker: p90)")
        ax.set_title({"model": "model only", "e2e": "end to end (file -> detections)"}[mode], fontsize=10, loc="left")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(textwrap.fill("blazeport bench  -  " + host_line(report["host"]), 160), fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=120, format=out.suffix.lstrip(".") or "png")
    plt.close(fig)
    write_atomic(out, buf.getvalue(), replace)


def median_round(row: dict[str, Any], runs: list[dict[str, Any]], rate: str) -> dict[str, Any]:
    """A configuration's row from its rounds: the first error if a round failed, else the round with the
    median ``rate`` (images or frames per second), every round's rate kept beside it (``RATE_rounds``)."""
    failed = [x for x in runs if "error" in x]
    if failed:
        return {**row, "error": failed[0]["error"]}
    ranked = sorted(runs, key=lambda x: x[rate])
    return {**row, **ranked[(len(ranked) - 1) // 2], f"{rate}_rounds": [x[rate] for x in runs]}
