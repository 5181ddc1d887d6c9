"""The same measurement on an Android phone: TFLite's own ``benchmark_model`` command lines (adb)."""

from __future__ import annotations

import shlex
from pathlib import Path

from blazeport.bench.targets import Target
from blazeport.errors import BlazeportError

ANDROID_DIR = "/data/local/tmp"
ANDROID_TOOL = ("https://storage.googleapis.com/tensorflow-nightly-public/prod/tensorflow/release/lite/tools/nightly/"
                "latest/android_aarch64_benchmark_model")


def android_commands(targets: list[Target], threads: list[int], runs: int, warmup: int) -> str:
    """The same measurement with TFLite's own ``benchmark_model`` on an Android phone (adb)."""
    lines = ["# TFLite's benchmark_model on an Android device (arm64), the same files, threads and runs:",
             f"#   get the tool: {ANDROID_TOOL}",
             f"adb push android_aarch64_benchmark_model {ANDROID_DIR}/benchmark_model",
             f"adb shell chmod +x {ANDROID_DIR}/benchmark_model"]
    seen = set()
    for t in targets:
        if t.runtime != "tflite" or t.path in seen:
            continue
        seen.add(t.path)
        remote = f"{ANDROID_DIR}/{Path(t.path).name}"
        lines.append(f"# {t.model} ({t.backend})")
        lines.append(f"adb push {shlex.quote(t.path)} {remote}")
        for n in threads:
            lines.append(f"adb shell {ANDROID_DIR}/benchmark_model --graph={remote} --num_threads={n} "
                         f"--num_runs={runs} --warmup_runs={warmup} --use_xnnpack=true")
    if not seen:
        raise BlazeportError("--android: no .tflite among the models (use --backend tflite)")
    lines.append("# add --enable_op_profiling=true for a per-op breakdown; on an aarch64 Linux board run "
                 "`blazeport bench FILE.tflite --backend tflite` itself (LiteRT, numpy and OpenCV suffice)")
    return "\n".join(lines)
