"""One log of TFLite's ``benchmark_model`` (what the ``--android`` script saves) read into an :class:`AndroidRun`.

What one ``benchmark_model`` run prints (``tflite/tools/benchmark/benchmark_model.cc`` and
``benchmark_tflite_model.cc``; with an ``INFO:`` prefix in current builds, a logcat prefix in the
APK), and what is read from it:

- the parameters it was given: ``Graph: [/data/local/tmp/x.tflite]``, ``Num threads: [4]`` or
  ``#threads used for CPU inference: [4]``, ``Min num runs: [50]``, ``Min warmup runs: [5]``;
- the delegates: ``Created TensorFlow Lite XNNPACK delegate for CPU.``, ``Replacing 49 out of 49
  node(s) with delegate (TfLiteXNNPackDelegate)``, ``Explicitly applied GPU delegate, and the model
  graph will be completely executed by the delegate.`` -- and ``Though NNAPI delegate is explicitly
  applied, the model graph will not be executed by the delegate.``, which means it did not run;
- after each ``Running benchmark for at least ...`` line (warm-up, then the timed runs), one
  statistics line in microseconds: ``count=50 first= curr= min= max= avg= std=`` (``std``: the
  population standard deviation), with `` p5= median= p95=`` appended by current builds
  (``median``: the value at rank floor(n / 2) of the sorted runs, not interpolated); a run whose
  times were all equal prints ``count=N curr=T`` only;
- ``Inference timings in us: Init: ..., First inference: ..., Warmup (avg): ..., Inference (avg): ...``;
- ``Peak memory footprint (MB): init= overall=`` (older builds) or ``Memory footprint delta from
  the start of the tool (MB): init= overall=``: growth of the tool's memory, not a process peak; and
  ``Overall peak memory footprint (MB) via periodic monitoring:`` with
  ``--report_peak_memory_footprint=true``, the only real peak.

It prints no per-run times, no p90 and no p99, so an Android row holds what the log holds: ``mean``
is the tool's ``avg``, ``p50`` its ``median`` where it printed one (else absent), and the ratio to
the original is on the mean, the one statistic every build prints.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blazeport.errors import BlazeportError

__all__ = ["AndroidRun", "parse_log"]

_NUM = r"(-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|-?nan|-?inf)"  # C++ ostream numbers: 699438, 1.45151e+06, nan
_GRAPH = re.compile(r"Graph: \[(.*)\]")
_THREADS = re.compile(r"(?:Num threads|#threads used for CPU inference): \[(-?\d+)\]")
_MIN_RUNS = re.compile(r"Min num runs: \[(\d+)\]")
_MIN_WARMUP = re.compile(r"Min warmup runs: \[(\d+)\]")
_PAIR = re.compile(rf"(\w+)={_NUM}")
_TIMINGS = re.compile(rf"Inference timings in us: Init: {_NUM}, First inference: {_NUM}, "
                      rf"Warmup \(avg\): {_NUM}, Inference \(avg\): {_NUM}")
_MEMORY = re.compile(rf"(Peak memory footprint \(MB\)|Memory footprint delta from the start of the tool \(MB\)): "
                     rf"init={_NUM} overall={_NUM}")
_PEAK = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring: {_NUM}")
_REPLACING = re.compile(r"Replacing (\d+)(?: out of (\d+))? node\(s\) with delegate \((\w+)\)")
_EXPLICIT = re.compile(r"(?:Explicitly applied|Applied) (\w+) delegate, and the model graph will be (completely|partially) "
                       r"executed(?: by the delegate w/ (\d+) delegate kernels)?")
_NOT_APPLIED = re.compile(r"Though (\w+) delegate is explicitly applied, the model graph will not be executed")
_KERNELS = {"TfLiteXNNPackDelegate": "XNNPACK", "TfLiteGpuDelegateV2": "GPU", "TfLiteGpuDelegate": "GPU",
            "TfLiteNnapiDelegate": "NNAPI", "TfLiteHexagonDelegate": "Hexagon"}
_TOOL_MARKS = ("STARTING!", "Graph: [", "Running benchmark for at least", "Initialized session in")


@dataclass
class AndroidRun:
    """One ``benchmark_model`` run as its log tells it; times in microseconds, as printed."""

    log: str
    graph: str  # the path the tool was given (on the phone)
    threads: int | None  # None: the log names none (the tool logs only the flags it was given)
    init_us: float
    first_us: float  # the first warm-up run
    warmup_avg_us: float | None
    inference_avg_us: float
    warmup: dict[str, float]  # the warm-up statistics line: count, first, curr, min, max, avg, std[, p5, median, p95]
    inference: dict[str, float]  # the timed runs' statistics line, the same fields
    requested_runs: int | None = None  # --num_runs (the tool runs at least that many, and at least 1 s)
    requested_warmup: int | None = None
    memory_mb: dict[str, Any] | None = None  # {"label": as printed, "init": MB, "overall": MB}
    peak_mb: float | None = None
    delegates: dict[str, str] = field(default_factory=dict)  # name -> what the log says it took
    not_applied: list[str] = field(default_factory=list)  # asked for, but the log says it runs nothing

    @property
    def graph_name(self) -> str:
        return self.graph.replace("\\", "/").rsplit("/", 1)[-1]

    @property
    def delegate_label(self) -> str:
        """``xnnpack``, ``gpu``, ``gpu+xnnpack``; ``cpu``: TFLite's own kernels, no delegate."""
        return "+".join(sorted(d.lower() for d in self.delegates)) or "cpu"


def _number(text: str) -> float | None:
    value = float(text)
    return None if math.isnan(value) or math.isinf(value) else value


def _stat_line(line: str) -> dict[str, float]:
    """``count=50 first=.. curr=.. min=.. max=.. avg=.. std=..[ p5=.. median=.. p95=..]`` as a dict; a
    run whose times were all equal (``count=N curr=T``, maybe ``(all same)``) gets min = max = avg = T, std 0."""
    values = {k: v for k, text in _PAIR.findall(line[line.index("count="):]) if (v := _number(text)) is not None}
    if "count" in values:
        values["count"] = int(values["count"])
    if values.get("count", 0) >= 1 and "avg" not in values and "curr" in values:
        t = values["curr"]
        values.update({"first": values.get("first", t), "min": t, "max": t, "avg": t, "std": 0.0})
    return values


def _delegates(lines: list[str]) -> tuple[dict[str, str], list[str]]:
    """What each delegate took, in the log's words, and those the log says run nothing."""
    took: dict[str, list[str]] = {}
    refused: list[str] = []
    for line in lines:
        if "Created TensorFlow Lite XNNPACK delegate for CPU" in line:
            took.setdefault("XNNPACK", []).append("created (TFLite's default CPU delegate)")
        if m := _REPLACING.search(line):
            name = _KERNELS.get(m[3], m[3])
            took.setdefault(name, []).append(f"{m[1]} of {m[2]} nodes" if m[2] else f"{m[1]} nodes")
        if m := _EXPLICIT.search(line):
            took.setdefault(m[1], []).append("the whole graph" if m[2] == "completely"
                                             else f"part of the graph ({m[3] or '?'} delegate kernels)")
        if m := _NOT_APPLIED.search(line):
            refused.append(m[1])
    return {k: "; ".join(v) for k, v in took.items() if k not in refused}, refused


def parse_log(path: str | Path) -> AndroidRun:
    """One ``benchmark_model`` log. Raises one BlazeportError naming the file when it is not one,
    is cut short, holds a failed run, or holds several runs."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise BlazeportError(f"{path}: no such log file") from None
    except IsADirectoryError:
        raise BlazeportError(f"{path}: is a folder; give the log files (e.g. {path}/*.log)") from None
    except OSError as exc:
        raise BlazeportError(f"{path}: cannot read it ({exc.strerror})") from None
    lines = text.splitlines()
    timings = [m for line in lines if (m := _TIMINGS.search(line))]
    if len(timings) > 1:
        raise BlazeportError(f"{path}: holds {len(timings)} benchmark_model runs; save one run per log file "
                             "(the --android script does)")
    if not timings:
        if any("Average inference timings in us" in line for line in lines):
            raise BlazeportError(f"{path}: printed by an old benchmark_model (its summary reads 'Average inference "
                                 "timings in us'), which this reader does not take; rerun with the current tool "
                                 "(the --android script's download link)")
        if not any(mark in line for line in lines for mark in _TOOL_MARKS):
            raise BlazeportError(f"{path}: not benchmark_model output (no 'Inference timings in us' line, and none "
                                 "of the lines the tool prints before it)")
        errors = [line.strip() for line in lines if "ERROR" in line]
        why = f"; its last error: {errors[-1]}" if errors else ""
        raise BlazeportError(f"{path}: benchmark_model output without its 'Inference timings in us' line: the run "
                             f"failed or the log is cut short{why}")
    graphs = {m[1] for line in lines if (m := _GRAPH.search(line))}
    if len(graphs) != 1:
        raise BlazeportError(f"{path}: " + ("names no 'Graph: [...]', so the model it ran is unknown" if not graphs
                                            else f"names several graphs ({', '.join(sorted(graphs))})"))
    stats: list[dict[str, float]] = []
    waiting = False  # after a "Running benchmark for at least" line, its statistics line is the next with count=
    for line in lines:
        if "Running benchmark for at least" in line:
            waiting = True
        elif waiting and "count=" in line:
            stats.append(_stat_line(line))
            waiting = False
    if len(stats) != 2 or not stats[1].get("count"):
        raise BlazeportError(f"{path}: the statistics lines of the warm-up and timed runs (count=... after each "
                             "'Running benchmark for at least' line) are missing or empty")

    def first(pattern: re.Pattern[str]) -> re.Match[str] | None:
        return next((m for line in lines if (m := pattern.search(line))), None)

    init, first_run, warmup_avg, inference_avg = (_number(x) for x in timings[0].groups())
    if init is None or first_run is None or inference_avg is None:
        raise BlazeportError(f"{path}: its 'Inference timings in us' line holds no number: {timings[0][0]}")
    threads, runs, warmup, memory, peak = (first(p) for p in (_THREADS, _MIN_RUNS, _MIN_WARMUP, _MEMORY, _PEAK))
    delegates, refused = _delegates(lines)
    return AndroidRun(
        log=str(path), graph=graphs.pop(), threads=int(threads[1]) if threads else None, init_us=init,
        first_us=first_run, warmup_avg_us=warmup_avg, inference_avg_us=inference_avg, warmup=stats[0],
        inference=stats[1], requested_runs=int(runs[1]) if runs else None,
        requested_warmup=int(warmup[1]) if warmup else None,
        memory_mb={"label": memory[1], "init": _number(memory[2]), "overall": _number(memory[3])} if memory else None,
        peak_mb=_number(peak[1]) if peak else None, delegates=delegates, not_applied=refused)
