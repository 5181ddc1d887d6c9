"""The way back from a phone: ``blazeport bench --android-results LOG...`` reads what TFLite's
``benchmark_model`` printed (the logs the ``--android`` script saves; :mod:`blazeport.bench.android_log`
reads one) into the rows, table and JSON of a host run, with the ratio to Google's original ``.tflite``
measured on the same phone.

It prints no per-run times, no p90 and no p99, so an Android row holds what the log holds: ``mean``
is the tool's ``avg``, ``p50`` its ``median`` where it printed one (else absent), and the ratio to
the original is on the mean, the one statistic every build prints.
"""

from __future__ import annotations

import datetime
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from blazeport.bench.android import remote_name
from blazeport.bench.android_log import AndroidRun, parse_log
from blazeport.bench.counts import tflite_counts
from blazeport.bench.report import check_targets, print_tables
from blazeport.bench.targets import ORIGINAL, original_file, reference_of
from blazeport.errors import BlazeportError
from blazeport.files import check_output, write_atomic
from blazeport.modelfiles.metadata import spec_from_metadata, tflite_metadata
from blazeport.modelfiles.runtimes import RUNTIMES
from blazeport.specs import SPECS, ModelSpec, spec_named, spec_of_original

ANDROID = "tflite-android"  # a .tflite of the user's (an export) under benchmark_model on the phone
ANDROID_ORIGINAL = f"{ORIGINAL}-android"  # Google's original under benchmark_model on the phone
TITLE = "model only on the phone: benchmark_model's Invoke() on random input, ms (from its logs)"

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
            entry = _Known(path.stem, spec, reference_of(spec), False, path, meta.get("blazeport.modelfiles.weights"))
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
