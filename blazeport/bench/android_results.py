"""The way back from a phone: ``blazeport bench --android-results LOG...`` reads what TFLite's
``benchmark_model`` printed (the logs the ``--android`` script saves) into the rows, table and JSON
of a host run, with the ratio to Google's original ``.tflite`` measured on the same phone.

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

import datetime
import json
import math
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from blazeport.bench.android import remote_name
from blazeport.bench.counts import tflite_counts
from blazeport.bench.report import check_targets, print_tables
from blazeport.bench.targets import ORIGINAL, original_file, reference_of
from blazeport.errors import BlazeportError
from blazeport.files import check_output, write_atomic
from blazeport.metadata import spec_from_metadata, tflite_metadata
from blazeport.runtimes import RUNTIMES
from blazeport.specs import SPECS, ModelSpec, spec_named, spec_of_original

ANDROID = "tflite-android"  # a .tflite of the user's (an export) under benchmark_model on the phone
ANDROID_ORIGINAL = f"{ORIGINAL}-android"  # Google's original under benchmark_model on the phone
TITLE = "model only on the phone: benchmark_model's Invoke() on random input, ms (from its logs)"

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


# ----------------------------------------------------------------------------------------------
# Logs -> the rows of a host report


@dataclass
class _Known:
    """A .tflite a log may have run, known by its file name."""

    label: str
    spec: ModelSpec
    reference: ModelSpec | None
    original: bool
    path: Path | None  # on this machine (None: an original whose file is not in weights/)
    weights: str | None = None


def known_models(models: list[str], spec_name: str | None) -> dict[str, _Known]:
    """File name -> model: Google's originals by their own names, and every MODEL ``.tflite`` by its
    name and by the name the --android script gave it on the phone (:func:`remote_name`); one whose
    bytes are an original's is that original, the rest are the user's exports."""
    known: dict[str, _Known] = {}
    for spec in SPECS.values():
        if spec.tflite and spec.teacher is None:
            path = original_file(spec)
            known[spec.tflite] = _Known(spec.name, spec, spec, True, path if path and path.is_file() else None)
    given: dict[str, Path] = {}
    for arg in models:
        path = Path(arg)
        if path.suffix != ".tflite":
            raise BlazeportError(f"{arg}: with --android-results a MODEL is a .tflite file the logs ran (Google's "
                                 "originals are known by their file names)")
        if not path.is_file():
            raise BlazeportError(f"{path}: no such model file")
        names = {path.name, remote_name(path)}
        for name in names:
            if name in given and given[name].resolve() != path.resolve():
                raise BlazeportError(f"{given[name]} and {path}: two MODEL files named {name} (on the phone); a log "
                                     "names only the file name")
            given[name] = path
        original = spec_of_original(path, detectors_only=True)
        if original is not None:
            entry = _Known(original.name, original, original, True, path)
        else:
            meta = tflite_metadata(path)
            spec = spec_from_metadata(meta, path) or (spec_named(spec_name, detectors_only=True) if spec_name else None)
            if not isinstance(spec, ModelSpec):
                raise BlazeportError(f"{path}: " + ("carries no spec; pass --spec NAME" if spec is None
                                                   else "a landmark model; the bench times detectors"))
            entry = _Known(path.stem, spec, reference_of(spec), False, path, meta.get("blazeport.weights"))
        known.update(dict.fromkeys(names, entry))
    return known


def _stats_ms(s: dict[str, float]) -> dict[str, float]:
    """The log's statistics (us) under the host rows' names (ms): mean = avg, p50 = median; those
    it did not print are absent."""
    names = {"min": "min", "max": "max", "avg": "mean", "std": "std", "p5": "p5", "median": "p50", "p95": "p95"}
    return {names[k]: v / 1000.0 for k, v in s.items() if k in names}


def result_row(run: AndroidRun, model: _Known) -> dict[str, Any]:
    """One log as a row shaped like a host row (:func:`blazeport.bench.rounds.result_row`)."""
    if run.threads is None:
        raise BlazeportError(f"{run.log}: names no thread count (benchmark_model logs --num_threads only when it "
                             "is given; the --android script gives it)")
    params = macs = None
    if model.path is not None:
        params, macs = tflite_counts(model.path)
    backend = ANDROID_ORIGINAL if model.original else ANDROID
    return {
        "model": model.label, "backend": f"{backend}/{run.delegate_label}", "runtime": "benchmark_model",
        "threads": run.threads, "mode": "model", "path": str(model.path) if model.path else None,
        "file_bytes": model.path.stat().st_size if model.path else None, "params": params, "macs": macs,
        "spec": model.spec.name, "reference": model.reference.name if model.reference else None, "baseline": False,
        "note": None, "weights": model.weights, "device": "android", "delegates": run.delegates,
        "delegates_not_applied": run.not_applied, "import_ms": None, "init_ms": run.init_us / 1000.0,
        "first_ms": run.first_us / 1000.0,
        "warmup_mean_ms": run.warmup_avg_us / 1000.0 if run.warmup_avg_us is not None else None,
        "runs": int(run.inference["count"]), "warmup_runs": int(run.warmup.get("count", 0)),
        "requested_runs": run.requested_runs, "requested_warmup": run.requested_warmup,
        "stats": _stats_ms(run.inference), "warmup_stats": _stats_ms(run.warmup), "cpu_ms_per_run": None,
        "peak_rss_mb": run.peak_mb, "memory_footprint_mb": run.memory_mb, "log": run.log, "graph": run.graph,
        "benchmark_model": {"inference_us": run.inference, "warmup_us": run.warmup},
    }


def add_android_ratios(rows: list[dict[str, Any]]) -> None:
    """``vs_original``: mean / mean of the original on the phone at the same thread count and with the
    same delegates (and ``size_vs_original``, as on the host). The mean, because it is the statistic
    every benchmark_model build prints."""
    index = {(r["reference"], r["threads"], r["backend"].split("/", 1)[1]): r for r in rows
             if r["backend"].startswith(ANDROID_ORIGINAL)}
    for r in rows:
        r["ratios"] = {}
        orig = index.get((r["reference"], r["threads"], r["backend"].split("/", 1)[1]))
        if orig is None or not orig["stats"].get("mean"):
            continue
        r["ratios"]["vs_original"] = r["stats"]["mean"] / orig["stats"]["mean"]
        if r.get("file_bytes") and orig.get("file_bytes"):
            r["ratios"]["size_vs_original"] = r["file_bytes"] / orig["file_bytes"]


def android_rows(logs: list[str], models: list[str], spec_name: str | None) -> list[dict[str, Any]]:
    """Every log as a row, each matched to its model by the graph's file name, with the ratios."""
    known = known_models(models, spec_name)
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[str, str, int], str] = {}
    for log in logs:
        run = parse_log(log)
        model = known.get(run.graph_name)
        if model is None:
            originals = ", ".join(sorted(k for k, m in known.items() if m.original))
            raise BlazeportError(f"{log}: its graph {run.graph} is none of the models known here: Google's originals "
                                 f"({originals}) or a MODEL .tflite given; pass the .tflite it ran as MODEL")
        row = result_row(run, model)
        key = (row["model"], row["backend"], row["threads"])
        if key in seen:
            raise BlazeportError(f"{seen[key]} and {log}: two logs of the same configuration ({row['model']}, "
                                 f"{row['backend']}, {row['threads']} threads); give one")
        seen[key] = log
        rows.append(row)
    rows.sort(key=lambda r: (r["threads"], r["backend"].split("/", 1)[1], not r["backend"].startswith(ANDROID_ORIGINAL),
                             r["model"]))
    add_android_ratios(rows)
    return rows


# ----------------------------------------------------------------------------------------------
# The command


def command_line(logs: list[str], models: list[str], spec: str | None, out: str | None) -> str:
    parts = ["blazeport", "bench", *models, "--android-results", *logs]
    parts += ["--spec", spec] if spec else []
    parts += ["--json", out] if out else []
    return " ".join(shlex.quote(p) for p in parts)


def footer(report: dict[str, Any]) -> list[str]:
    """What the table's columns mean for rows read from logs, and where each came from."""
    lines = ["android: one row per benchmark_model log, times as it printed them (us -> ms). mean = its avg, std its "
             "(population) std, p50 = its median (the value at rank n/2, printed by current builds only, else -); it "
             "prints no p90 or p99; first = its first warm-up run; init = its Init. x orig: mean / mean of Google's "
             "original .tflite in a log of the same thread count and delegates (the logs do not name the phone: read "
             "one phone's logs at a time). RSS MB: only with --report_peak_memory_footprint=true."]
    for r in report["results"]:
        took = ", ".join(f"{k}: {v}" for k, v in r["delegates"].items()) or "none (TFLite's own kernels)"
        refused = f"; asked for but unused: {', '.join(r['delegates_not_applied'])}" if r["delegates_not_applied"] else ""
        mem = r["memory_footprint_mb"]
        memory = f"; {mem['label']}: init={mem['init']:g} overall={mem['overall']:g}" if mem else ""
        lines.append(f"log {r['log']}: {r['graph']} as {r['model']}, {r['threads']} threads, {r['runs']} runs after "
                     f"{r['warmup_runs']} warm-up; delegates {took}{refused}{memory}")
    return lines + [f"note: {n}" for n in report["notes"]]


def cmd_android_results(args: Any, log: Any = None) -> int:
    """``bench --android-results LOG...``: no measurement here, the logs' figures in the bench's
    table and JSON. Flags that would change a measurement are refused, not ignored."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    ignored = [flag for flag, given in (("--folder", args.folder), ("--android", args.android), ("--e2e", args.e2e),
                                        ("--plot", args.plot), ("--rounds", args.rounds != 1),
                                        ("--runs", args.runs != 200), ("--warmup", args.warmup != 20),
                                        ("--threads", args.threads != [1]), ("--image", args.image),
                                        ("--device", args.device != "cpu"), ("--backend", args.backend != list(RUNTIMES)),
                                        ("--batch", args.batch != [1]), ("--fast-decode", args.fast_decode)) if given]
    if ignored:
        raise BlazeportError(f"{', '.join(ignored)} do(es) not apply to --android-results: it reads what the phone "
                             "measured (threads, runs, warm-up and delegates are in the logs); drop it")
    models = [p for p in args.android_results if Path(p).suffix == ".tflite"]
    if models:  # argparse gives --android-results every word after it
        raise BlazeportError(f"{models[0]}: a model, not a log; put MODEL files before --android-results "
                             f"(blazeport bench {shlex.quote(models[0])} ... --android-results LOG...)")
    if args.json:
        check_output(args.json, [*args.android_results, *args.models], "JSON report", args.overwrite)
    rows = android_rows(args.android_results, args.models, args.spec)
    notes = []
    if not any(r["backend"].startswith(ANDROID_ORIGINAL) for r in rows):
        notes.append("no log of Google's original .tflite: no ratio to the original")
    elif any(not r["ratios"] for r in rows):
        notes.append("x orig '-': no log of the original at that thread count with the same delegates")
    report = {
        "blazeport_bench": 1,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(args.android_results, args.models, args.spec, args.json),
        "host": None,  # nothing ran here: the phone's figures, read from its logs
        "source": "android benchmark_model logs",
        "settings": {"logs": list(args.android_results), "statistic_for_ratios": "mean"},
        "notes": notes,
        "results": rows,
    }
    report["targets"] = check_targets(rows)
    print_report(report)
    if args.json:
        out = write_atomic(args.json, json.dumps(report, indent=1).encode(), args.overwrite)
        log(f"report: {out}")
    return 0


def print_report(report: dict[str, Any], file: TextIO | None = None) -> None:
    """The host table (its columns, this title) and the footer that says what each cell is here."""
    file = file or sys.stdout
    print_tables(report["results"], file, {"model": TITLE})
    for line in footer(report):
        print(line, file=file)
