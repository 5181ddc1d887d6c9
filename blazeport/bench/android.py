"""The same measurement on an Android phone: TFLite's own ``benchmark_model`` command lines (adb),
each run's output saved to a log on the host, and the line that reads the logs back
(``bench --android-results``, :mod:`blazeport.bench.android_results`)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from blazeport.bench.targets import ORIGINAL, Target
from blazeport.errors import BlazeportError
from blazeport.specs import SPECS

ANDROID_DIR = "/data/local/tmp"
ANDROID_TOOL = ("https://storage.googleapis.com/tensorflow-nightly-public/prod/tensorflow/release/lite/tools/nightly/"
                "latest/android_aarch64_benchmark_model")
LOG_DIR = "runs/android"  # on the host, beside runs/bench-cache (runs/ is the project's ignored output folder)


def remote_name(path: str | Path) -> str:
    """The file's name on the phone: its own, with anything but letters, digits, ``.``, ``_`` and ``-``
    made ``_`` (``adb shell`` hands its words to the phone's shell, which would split a space)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", Path(path).name)


def log_name(path: str, threads: int) -> str:
    """The host log of one file at one thread count: ``runs/android/face_detection_short_range_t4.log``."""
    return f"{LOG_DIR}/{Path(remote_name(path)).stem}_t{threads}.log"


def android_commands(targets: list[Target], threads: list[int], runs: int, warmup: int) -> str:
    """The same measurement with TFLite's own ``benchmark_model`` on an Android phone (adb): each run's
    output (the tool logs to stderr) saved to a log here, then the command that reads the logs into
    the bench's table and JSON. Files are pushed by name, so two different files of one name are refused."""
    lines = ["# TFLite's benchmark_model on an Android device (arm64), the same files, threads and runs:",
             f"#   get the tool: {ANDROID_TOOL}",
             f"adb push android_aarch64_benchmark_model {ANDROID_DIR}/benchmark_model",
             f"adb shell chmod +x {ANDROID_DIR}/benchmark_model",
             f"mkdir -p {LOG_DIR}"]
    by_name: dict[str, str] = {}
    models = []  # what the read-back needs as MODEL: every file whose name is not one of Google's originals'
    originals = {s.tflite for s in SPECS.values() if s.tflite}
    for t in targets:
        if t.runtime != "tflite" or t.path in by_name.values():
            continue
        name = remote_name(t.path)
        if name in by_name:
            raise BlazeportError(f"--android: {by_name[name]} and {t.path} share the file name {name} on the phone, "
                                 f"and {ANDROID_DIR} holds one; rename one")
        by_name[name] = t.path
        if t.backend != ORIGINAL or name not in originals:
            models.append(t.path)
        remote = f"{ANDROID_DIR}/{name}"
        lines.append(f"# {t.model} ({t.backend})")
        lines.append(f"adb push {shlex.quote(t.path)} {remote}")
        for n in threads:
            lines.append(f"adb shell {ANDROID_DIR}/benchmark_model --graph={remote} --num_threads={n} "
                         f"--num_runs={runs} --warmup_runs={warmup} --use_xnnpack=true "
                         f"> {shlex.quote(log_name(t.path, n))} 2>&1")
    if not by_name:
        raise BlazeportError("--android: no .tflite among the models (use --backend tflite)")
    lines.append("# add --enable_op_profiling=true for a per-op breakdown; on an aarch64 Linux board run "
                 "`blazeport bench FILE.tflite --backend tflite` itself (LiteRT, numpy and OpenCV suffice)")
    lines.append("# read the logs back: the bench's table (add --json OUT for its report), with the ratio to the original")
    lines.append(" ".join(["blazeport", "bench", *(shlex.quote(m) for m in models), "--android-results",
                           f"{LOG_DIR}/*.log"]))
    return "\n".join(lines)
