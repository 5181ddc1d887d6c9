"""The clocks of a measured child: the timed loop, CPU time, peak RSS, and what a child reports.

Shared by both kinds of child (our pipeline, :mod:`blazeport.bench.child`, and MediaPipe's,
:mod:`blazeport.bench.mediapipe`) so they are timed alike. Standard library only.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def ms(ns: int) -> float:
    return round(ns / 1e6, 5)


def cpu_seconds() -> float:
    import resource  # POSIX only: imported where it is used

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mb() -> tuple[float, float]:
    """(peak RSS of this process image, ``ru_maxrss``), MB.

    On Linux ``ru_maxrss`` survives ``execve``: a child spawned by a parent that had torch and an
    exporter loaded (800 MB) reports the parent's peak. ``VmHWM`` in ``/proc/self/status`` is the
    high-water mark of the current address space only, i.e. this configuration's own peak; it is
    used where it exists, ``ru_maxrss`` elsewhere (macOS: bytes, Linux: KiB)."""
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    peak = maxrss
    with contextlib.suppress(OSError, ValueError, IndexError):  # no /proc (macOS): ru_maxrss stands
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
                break
    return round(peak, 1), round(maxrss, 1)


def timed_loop(step: Callable[[], Any], runs: int, warmup: int) -> tuple[int, list[int], float]:
    """first call (ns), per-run ns, CPU ms per run."""
    t0 = time.perf_counter_ns()
    step()
    first = time.perf_counter_ns() - t0
    for _ in range(warmup):
        step()
    gc.collect()
    times = []
    c0 = cpu_seconds()
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        step()
        times.append(time.perf_counter_ns() - t0)
    cpu = (cpu_seconds() - c0) / max(runs, 1) * 1e3
    return first, times, cpu


def measure(step: Callable[[], Any], runs: int, warmup: int, stage_ns: dict[str, list[int]] | None = None) -> dict[str, Any]:
    """:func:`timed_loop` of ``step`` as a child reports it: ``first_ms``, ``runs_ms``,
    ``cpu_ms_per_run`` and, where ``step`` appends its stages' ns to ``stage_ns``, ``stages_ms``
    (the first call and the warm-up left out, as from the run timings)."""
    first, times, cpu = timed_loop(step, runs, warmup)
    out: dict[str, Any] = {"first_ms": ms(first), "runs_ms": [ms(t) for t in times], "cpu_ms_per_run": round(cpu, 4)}
    if stage_ns is not None:
        out["stages_ms"] = {s: [ms(t) for t in v[1 + warmup:]] for s, v in stage_ns.items()}
    return out


def process_facts() -> dict[str, Any]:
    """What the finished child says about itself: peak RSS (both measures) and whether torch got loaded."""
    peak, maxrss = peak_rss_mb()
    return {"peak_rss_mb": peak, "ru_maxrss_mb": maxrss,
            "torch_loaded": "torch" in sys.modules and sys.modules["torch"] is not None}
