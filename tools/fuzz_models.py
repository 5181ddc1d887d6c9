#!/usr/bin/env python
"""Mutation fuzz of the bundled ``.tflite`` originals: a damaged file must never crash blazeport.

Each mutant is a seeded copy of one original in ``weights/``, truncated at some offset or with
1-16 bytes changed. Weights are ~90% of every file, so uniform flips mostly land in float16
data that any reader accepts; most flips here aim at the flatbuffer's tables, vtables, vectors
and strings (every byte outside the buffers' data) and at the first and last 4 KB, where a single
byte changes an index, a count or an offset.

Every mutant runs ``blazeport.convert.convert`` (read, walk, build, save, verify against LiteRT on
one real photo) and ``blazeport detect --backend tflite`` (``blazeport.cli.main``), both in one
child forked from a parent that imported everything once but never started torch's or LiteRT's
threads, so a mutant costs a fork instead of an interpreter start. The child reports each stage
through a pipe; the parent kills it after ``--timeout`` seconds (``hang``) and reads its exit
signal (``signal``: LiteRT segfaulted). Outcomes per mutant, the worst stage's:

    ok           converted and verified (a flip inside the weights changes both sides alike)
    rejected     a BlazeportError: one clear message (distinct messages are counted)
    failed_gate  converted, but verification against LiteRT FAILED (convert's exit status 1)
    traceback    any other exception (type, message and the mutant's seed are recorded)
    signal       the child was killed by a signal, e.g. SIGSEGV inside LiteRT
    hang         the child outlived --timeout

Usage::

    python tools/fuzz_models.py --models short_range --count 500 --out runs/fuzz
    python tools/fuzz_models.py --models full_range_sparse --reproduce 1234 --out /tmp   # write mutant 1234

The exit status is 1 if any mutant ended in a traceback, a signal or a hang.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODELS = {
    "short_range": "face_detection_short_range.tflite",
    "back": "face_detection_back.tflite",
    "full_range": "face_detection_full_range.tflite",
    "full_range_sparse": "face_detection_full_range_sparse.tflite",
}
OUTCOMES = ("ok", "rejected", "failed_gate", "traceback", "signal", "hang")
BAD = ("traceback", "signal", "hang")
EDGE = 4096  # the first and last bytes: root table, vtables, subgraph, description, metadata
# kind -> probability: a third of the flips anywhere, the rest where the structure is
KINDS = {"truncate": 0.15, "flip_any": 0.25, "flip_structure": 0.45, "flip_edges": 0.15}


def buffer_spans(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges ``[start, end)`` of the buffers' data vectors (the weights) in a valid file."""
    import tflite

    model = tflite.Model.GetRootAsModel(data, 0)
    spans = []
    for i in range(model.BuffersLength()):
        tab = model.Buffers(i)._tab
        o = tab.Offset(4)  # Buffer.data
        if o and tab.VectorLen(o):
            start = tab.Vector(o)
            spans.append((start, start + tab.VectorLen(o)))
    return spans


def structure_offsets(data: bytes) -> np.ndarray:
    """Every byte offset outside the buffers' data: tables, vtables, shape/index vectors, strings."""
    mask = np.ones(len(data), bool)
    for start, end in buffer_spans(data):
        mask[start:end] = False
    return np.flatnonzero(mask)


def mutate(data: bytes, seed: int, structure: np.ndarray) -> tuple[bytes, dict[str, Any]]:
    """The mutant number ``seed`` of ``data`` and a description of what changed (deterministic)."""
    rng = np.random.default_rng(seed)
    kind = str(rng.choice(list(KINDS), p=list(KINDS.values())))
    size = len(data)
    if kind == "truncate":
        end = int(rng.integers(0, size)) if rng.random() < 0.5 else size - int(rng.integers(1, EDGE))
        return data[:end], {"kind": kind, "length": end}
    n = 1 if rng.random() < 0.5 else int(rng.integers(2, 17))
    if kind == "flip_any":
        pool = np.arange(size)
    elif kind == "flip_structure":
        pool = structure
    else:
        pool = np.concatenate([np.arange(EDGE), np.arange(size - EDGE, size)])
    buf = bytearray(data)
    changes = []
    for pos in sorted(int(p) for p in rng.choice(pool, size=min(n, len(pool)), replace=False)):
        old, how = buf[pos], int(rng.integers(3))
        if how == 0:  # any other value
            new = (old + int(rng.integers(1, 256))) % 256
        elif how == 1:  # one bit
            new = old ^ (1 << int(rng.integers(8)))
        else:  # off by one: an index or a count just out of range
            new = (old + (1 if rng.random() < 0.5 else -1)) % 256
        buf[pos] = new
        changes.append([pos, old, new])
    return bytes(buf), {"kind": kind, "changes": changes}


# ---------------------------------------------------------------------------------------- child


def _stage_convert(mutant: Path, spec: str, work: Path, image: np.ndarray) -> dict[str, Any]:
    """``convert`` with the spec named (``--spec``): a mutant's sha256 names none, and convert refuses to
    guess one, so without it every mutant would stop before the walk."""
    from blazeport.convert import convert
    from blazeport.errors import BlazeportError
    from blazeport.specs import spec_named

    try:
        report = convert(mutant, out=work / "converted.safetensors", spec=spec_named(spec), images=[image])
    except BlazeportError as exc:
        return {"outcome": "rejected", "message": str(exc)}
    except Exception as exc:
        return _traceback(exc)
    return {"outcome": "ok" if report["ok"] else "failed_gate"}


def _stage_detect(mutant: Path, spec: str, image_path: Path) -> dict[str, Any]:
    """``blazeport detect --backend tflite``; ``--spec`` because a mutant's sha256 names no spec,
    and without it detect would stop before LiteRT runs the model."""
    from blazeport.cli import main

    err = io.StringIO()
    argv = ["detect", str(image_path), "--backend", "tflite", "--model", str(mutant), "--spec", spec,
            "--threads", "1", "--quiet"]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(argv)
    except Exception as exc:
        return _traceback(exc)
    lines = err.getvalue().strip().splitlines()
    if rc == 0:
        return {"outcome": "ok"}
    if rc == 2:
        return {"outcome": "rejected", "message": lines[-1] if lines else ""}
    return {"outcome": "traceback", "type": "ExitStatus", "message": f"exit status {rc}: {lines[-3:]}"}


def _traceback(exc: BaseException) -> dict[str, Any]:
    return {"outcome": "traceback", "type": type(exc).__name__, "message": str(exc)[:500],
            "where": traceback.format_exc()[-2000:]}


def _child(mutant: Path, spec: str, work: Path, image: np.ndarray, image_path: Path, wfd: int) -> None:
    """Run both stages and report each as one JSON line; never returns."""
    log = os.open(work / "log.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)  # LiteRT and XNNPACK write to fd 2 directly
    import torch

    torch.set_num_threads(1)
    try:
        for stage, run in (("convert", lambda: _stage_convert(mutant, spec, work, image)),
                           ("detect", lambda: _stage_detect(mutant, spec, image_path))):
            os.write(wfd, (json.dumps({"stage": stage}) + "\n").encode())
            os.write(wfd, (json.dumps({"stage": stage, **run()}) + "\n").encode())
    finally:
        os._exit(0)


# --------------------------------------------------------------------------------------- parent


@dataclass
class _Running:
    pid: int
    seed: int
    mutation: dict[str, Any]
    work: Path
    started: float
    out: bytearray = field(default_factory=bytearray)


def _preload() -> None:
    """Import everything a child needs, once, without starting any thread pool."""
    import ai_edge_litert.interpreter  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch  # noqa: F401

    from blazeport.tflite import read_tflite

    read_tflite(ROOT / "weights" / MODELS["short_range"])  # first-call imports inside the reader


def _classify(run: _Running, status: int | None) -> dict[str, Any]:
    """The mutant's outcome from its stage reports and how the child ended (``None``: killed by us)."""
    events = [json.loads(line) for line in run.out.decode(errors="replace").splitlines() if line.strip()]
    done = {e["stage"]: e for e in events if "outcome" in e}
    started = [e["stage"] for e in events if "outcome" not in e]
    stage = next((s for s in started if s not in done), None)
    result: dict[str, Any] = {"seed": run.seed, "mutation": run.mutation, "stages": {s: e["outcome"] for s, e in done.items()}}
    if status is None:
        result.update(outcome="hang", stage=stage)
    elif os.WIFSIGNALED(status):
        result.update(outcome="signal", stage=stage, signal=signal.Signals(os.WTERMSIG(status)).name)
    elif stage is not None or len(done) < 2:
        result.update(outcome="traceback", stage=stage, type="ChildExit", message=f"child ended with status {status}")
    else:
        worst = max(done.values(), key=lambda e: OUTCOMES.index(e["outcome"]))
        result.update({k: v for k, v in worst.items() if k != "outcome"}, outcome=worst["outcome"])
        result["messages"] = [e["message"] for e in done.values() if e["outcome"] == "rejected"]
    if result["outcome"] in ("signal", "hang", "traceback"):
        log = run.work / "log.txt"
        result["log_tail"] = log.read_text(errors="replace")[-1500:] if log.is_file() else ""
    return result


def _template(message: str, mutant: str) -> str:
    """A rejection message with the mutant's path, the CLI's prefix and the numbers taken out, to count kinds."""
    text = re.sub(r"^blazeport \w+: error: ", "", " ".join(message.replace(mutant, "<file>").split()))
    return re.sub(r"\d[\d,.]*", "N", text)


def fuzz_model(name: str, count: int, seed: int = 0, jobs: int = 1, timeout: float = 120.0,
               progress: bool = True) -> dict[str, Any]:
    """Run mutants ``seed .. seed+count-1`` of one bundled model; return its report."""
    from tqdm import tqdm

    from blazeport.pipeline.photos import sample_image_path
    from blazeport.pipeline.preprocess import read_image
    from blazeport.progress import progress_bar

    tqdm.monitor_interval = 0  # no monitor thread: a fork must not copy a thread holding a lock
    _preload()
    data = (ROOT / "weights" / MODELS[name]).read_bytes()
    structure = structure_offsets(data)
    image_path = sample_image_path("astronaut")
    image = read_image(image_path)
    base = Path(tempfile.mkdtemp(prefix=f"fuzz_{name}_"))
    counts = dict.fromkeys(OUTCOMES, 0)
    stage_counts: dict[str, dict[str, int]] = {}
    messages: dict[str, dict[str, Any]] = {}
    problems: list[dict[str, Any]] = []
    failed_gate: list[int] = []  # seeds, to look at what the gate caught
    peak: list[tuple[int, int]] = []  # (child's max resident MiB, seed)
    running: dict[int, _Running] = {}
    seeds = iter(range(seed, seed + count))
    t0 = time.perf_counter()
    bar = progress_bar(total=count, desc=name, unit="mutant", enabled=progress)

    def finish(fd: int, status: int | None, rss_mb: float) -> None:
        run = running.pop(fd)
        os.close(fd)
        result = _classify(run, status)
        peak.append((round(rss_mb), run.seed))
        counts[result["outcome"]] += 1
        for stage, outcome in result["stages"].items():
            per = stage_counts.setdefault(stage, dict.fromkeys(OUTCOMES, 0))
            per[outcome] += 1
        for msg in result.pop("messages", []):
            entry = messages.setdefault(_template(msg, str(run.work / "mutant.tflite")), {"count": 0, "example_seed": run.seed})
            entry["count"] += 1
        if result["outcome"] in BAD:
            problems.append(result)
        elif result["outcome"] == "failed_gate":
            failed_gate.append(run.seed)
        shutil.rmtree(run.work, ignore_errors=True)
        bar.update(1)
        bar.set_postfix({k[:4]: v for k, v in counts.items() if v}, refresh=False)

    try:
        while True:
            while len(running) < jobs and (s := next(seeds, None)) is not None:
                mutant, mutation = mutate(data, s, structure)
                work = base / str(s)
                work.mkdir()
                (work / "mutant.tflite").write_bytes(mutant)
                rfd, wfd = os.pipe()
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    os.close(rfd)
                    _child(work / "mutant.tflite", name, work, image, image_path, wfd)
                os.close(wfd)
                running[rfd] = _Running(pid, s, mutation, work, time.monotonic())
            if not running:
                break
            ready, _, _ = select.select(list(running), [], [], 0.5)
            for fd in ready:
                chunk = os.read(fd, 65536)
                if chunk:
                    running[fd].out += chunk
                else:  # EOF: the child exited (or closed the pipe while dying)
                    _, status, usage = os.wait4(running[fd].pid, 0)
                    finish(fd, status, usage.ru_maxrss / 1024)
            for fd, run in list(running.items()):
                if time.monotonic() - run.started > timeout:
                    os.kill(run.pid, signal.SIGKILL)
                    finish(fd, None, os.wait4(run.pid, 0)[2].ru_maxrss / 1024)
    finally:
        for fd, run in list(running.items()):  # interrupted: leave no child behind
            os.kill(run.pid, signal.SIGKILL)
            os.waitpid(run.pid, 0)
            os.close(fd)
        bar.close()
        shutil.rmtree(base, ignore_errors=True)
    wall = time.perf_counter() - t0
    return {"model": name, "file": MODELS[name], "mutants": count, "first_seed": seed, "counts": counts,
            "stages": stage_counts, "seconds": round(wall, 1), "seconds_per_mutant": round(wall / max(count, 1), 3),
            "jobs": jobs, "rejected_messages": dict(sorted(messages.items(), key=lambda kv: -kv[1]["count"])),
            "failed_gate_seeds": failed_gate, "max_rss_mb": sorted(peak, reverse=True)[:5], "problems": problems}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="outcomes: " + ", ".join(OUTCOMES))
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="originals to mutate (default: all)")
    p.add_argument("--count", type=int, default=200, help="mutants per model (default: 200)")
    p.add_argument("--seed", type=int, default=0, help="first mutant seed; mutant k of a run is seed + k (default: 0)")
    p.add_argument("--jobs", type=int, default=1, help="children at a time (default: 1)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before a mutant counts as a hang (default: 120)")
    p.add_argument("--out", help="folder for fuzz_report.json (with --reproduce: for the mutant files)")
    p.add_argument("--reproduce", type=int, metavar="SEED", help="only write mutant SEED of each model to --out (default: .)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    if args.reproduce is not None:
        out = Path(args.out or ".")
        out.mkdir(parents=True, exist_ok=True)
        for name in args.models:
            data = (ROOT / "weights" / MODELS[name]).read_bytes()
            mutant, mutation = mutate(data, args.reproduce, structure_offsets(data))
            path = out / f"{name}_mutant{args.reproduce}.tflite"
            path.write_bytes(mutant)
            print(f"{path}: {json.dumps(mutation)}")
        return 0

    t0 = time.perf_counter()
    reports = []
    for name in args.models:  # each model's summary as soon as it is done
        r = fuzz_model(name, args.count, args.seed, args.jobs, args.timeout, not args.no_progress)
        reports.append(r)
        shown = "  ".join(f"{k} {v}" for k, v in r["counts"].items())
        print(f"{r['model']:<18} {r['mutants']:>6} mutants  {shown}  "
              f"({r['seconds']:.0f} s, {r['seconds_per_mutant']:.2f} s/mutant)", flush=True)
        for prob in r["problems"][:20]:
            print(f"  seed {prob['seed']}: {prob['outcome']} in {prob.get('stage')}: "
                  f"{prob.get('type', prob.get('signal', ''))} {prob.get('message', '')[:200]}", flush=True)
    bad = sum(r["counts"][k] for r in reports for k in BAD)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        report = {"argv": sys.argv if argv is None else ["tools/fuzz_models.py", *argv], "seed": args.seed,
                  "seconds": round(time.perf_counter() - t0, 1), "bad": bad, "models": {r["model"]: r for r in reports}}
        (out / "fuzz_report.json").write_text(json.dumps(report, indent=1) + "\n")
        print(f"report: {out / 'fuzz_report.json'}")
    print(f"{bad} traceback/signal/hang" if bad else "no traceback, signal or hang")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
