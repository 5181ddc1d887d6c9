"""Damaged model files end in one clear BlazeportError: no traceback, no crash, no hang (issue 9).

A slice of ``tools/fuzz_models.py`` runs here; its seed range holds mutants that segfaulted LiteRT
or raised inside the walker before the checks in :mod:`blazeport.tflite.check`. Each crash cause
the fuzzer found is also pinned by its exact mutant, built from the bundled file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from blazeport.convert import convert
from blazeport.errors import BlazeportError
from blazeport.tflite import TFLiteError, read_tflite
from tests.conftest import ROOT, WEIGHTS

# (model, {offset: (original byte, mutant byte)}, what the refusal says, what happened before)
CRASHES = {
    # fuzz seed 757; refused by the size limit (22M elements) before the shape check below sees it
    "dequantize-output-larger-than-weights": (
        "short_range", {218354: (0, 38)}, r"tensor 186 .* has shape \(1, 3, 3, 2490464\)",
        "SIGSEGV: XNNPACK unpacked the float16 kernel into the output's declared (1, 3, 3, 2490464)"),
    "dequantize-output-larger-within-limits": (
        "short_range", {218354: (0, 16)}, r"op 138 \(DEQUANTIZE\) computes shape \(1, 3, 3, 96\) but its output .* "
        r"is declared \(1, 3, 3, 1048672\)",
        "SIGSEGV, as above, with a 9.4M-element output that the size limit lets through"),
    "huge-activation-shape": (
        "short_range", {222626: (0, 64)}, r"tensor 110 \('conv2d_11'\) has shape \(1, 4194320, 16, 88\)",
        "SIGKILL: XNNPACK allocated the declared 5.9e9-element activation"),
    "huge-batch": (
        "short_range", {224514: (0, 4)}, r"tensor 77 \('depthwise_conv2d_7'\) has shape \(262145, 16, 16, 56\)",
        "hang: LiteRT paged through a 262145-image batch"),
    "depthwise-without-bias": (
        "short_range", {211776: (3, 2)}, r"op 33 \(DEPTHWISE_CONV_2D\) has 2 inputs and 1 outputs",
        "SIGSEGV in LiteRT's depthwise kernel, which reads a third input past the end of the list"),
    "weight-buffer-emptied": (
        "short_range", {199520: (118, 126)}, r"op 13 \(DEQUANTIZE\) reads tensor 14 .* neither a constant",
        "RuntimeError: Input tensor 14 lacks data, from LiteRT's invoke"),
    "dequantize-reads-a-bias": (
        "short_range", {213216: (1, 2)},
        r"op 1 \(DEQUANTIZE\) computes shape \(24,\) but its output .* is declared \(24, 5, 5, 3\)",
        "ValueError: axes don't match array, transposing a bias as the stem kernel (and XNNPACK over-read it)"),
    "op-input-out-of-range": (
        "short_range", {209393: (0, 8)}, r"op 91 \(CONV_2D\) input 2 is tensor 2243; the graph has 250",
        "IndexError in TFLiteModel.tensor"),
    "op-with-extra-outputs": (
        "short_range", {211677: (0, 20)}, r"op 35 \(DEQUANTIZE\) has 1 inputs and 4 outputs",
        "KeyError in extract_graph: an output of the folded op was never named"),
    "options-missing": (
        "short_range", {205712: (0, 8)}, r"op 30 \(CONV_2D\) has options of kind 0, not 1",
        "KeyError 'stride' in extract_graph"),
    "stride-zero": (
        "short_range", {207320: (4, 36)}, r"op 140 \(DEPTHWISE_CONV_2D\) has stride \(0, 0\)",
        "ZeroDivisionError in the walker's padding arithmetic"),
    "stride-too-large": (
        "short_range", {209493: (0, 64)}, r"op 88 \(DEPTHWISE_CONV_2D\) computes shape \(1, 1, 16, 72\)",
        "RuntimeError from torch's max_pool2d on the converted module"),
    "op-without-outputs": (
        "short_range", {212760: (1, 0)}, r"op 10 \(ADD\) has 2 inputs and 0 outputs",
        "IndexError in the walker's activation_after"),
}


def _mutant(tmp_path: Path, model: str, changes: dict[int, tuple[int, int]]) -> Path:
    data = bytearray((WEIGHTS / f"face_detection_{model}.tflite").read_bytes())
    for offset, (old, new) in changes.items():
        assert data[offset] == old, f"the bundled {model} file changed at byte {offset}; re-derive this mutant"
        data[offset] = new
    path = tmp_path / f"{model}_mutant.tflite"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("case", list(CRASHES))
def test_crash_cause_is_refused_by_the_reader(case: str, tmp_path: Path) -> None:
    model, changes, message, _before = CRASHES[case]
    path = _mutant(tmp_path, model, changes)
    with pytest.raises(TFLiteError, match=message) as err:
        read_tflite(path)
    text = str(err.value)
    assert text.startswith(f"{path}: damaged TFLite model: ") and "\n" not in text
    assert "tools/fetch_weights.py" in text
    # convert reads first, so it never reaches the walker or LiteRT with this file
    with pytest.raises(TFLiteError):
        convert(path, out=tmp_path / "out.safetensors")


def test_segfault_mutant_ends_detect_with_one_line(tmp_path: Path) -> None:
    """The mutant that segfaulted LiteRT, run as a user would: exit status 2 and one line, no signal."""
    model, changes, _, _ = CRASHES["dequantize-output-larger-than-weights"]
    path = _mutant(tmp_path, model, changes)
    from blazeport.pipeline.photos import sample_image_path

    cmd = [sys.executable, "-m", "blazeport.cli", "detect", str(sample_image_path()), "--backend", "tflite",
           "--model", str(path), "--spec", model]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines == [lines[-1]] and str(path) in lines[-1] and "damaged TFLite model" in lines[-1]


def test_reproduce_writes_the_seeded_mutant(tmp_path: Path) -> None:
    """``--reproduce 757`` is the segfault mutant above: seeds in a report rebuild the exact file."""
    sys.path.insert(0, str(ROOT))
    from tools.fuzz_models import main

    assert main(["--models", "short_range", "--reproduce", "757", "--out", str(tmp_path)]) == 0
    model, changes, _, _ = CRASHES["dequantize-output-larger-than-weights"]
    (tmp_path / "expected").mkdir()
    expected = _mutant(tmp_path / "expected", model, changes).read_bytes()
    assert (tmp_path / "short_range_mutant757.tflite").read_bytes() == expected


# Seeds 750-849 hold, before the checks: short range 757 (SIGSEGV in LiteRT) and 849 (IndexError
# in the walker), full range sparse 824 (IndexError). ~25 s on 2 cores.
FUZZ_SEED, FUZZ_COUNT = 750, 100


@pytest.mark.slow
def test_fuzz_slice_has_no_traceback_signal_or_hang(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "tools" / "fuzz_models.py"), "--models", "short_range", "full_range_sparse",
           "--seed", str(FUZZ_SEED), "--count", str(FUZZ_COUNT), "--jobs", "2", "--timeout", "60", "--out",
           str(tmp_path), "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    report = json.loads((tmp_path / "fuzz_report.json").read_text())
    for name, m in report["models"].items():
        counts = m["counts"]
        assert counts["traceback"] == counts["signal"] == counts["hang"] == 0, (name, m["problems"][:3])
        assert sum(counts.values()) == FUZZ_COUNT
        # the slice exercises both sides: files refused with a message, and files converted and verified
        assert counts["rejected"] > FUZZ_COUNT // 4 and counts["ok"] > FUZZ_COUNT // 10, (name, counts)
    assert r.returncode == 0, r.stdout[-2000:]


def test_every_rejection_is_a_blazeport_error(tmp_path: Path) -> None:
    """Truncations at every 1/64 of each bundled file: each refused by the reader with a BlazeportError."""
    for name in ("short_range", "full_range_sparse"):
        data = (WEIGHTS / f"face_detection_{name}.tflite").read_bytes()
        for k in range(64):
            path = tmp_path / f"{name}_{k}.tflite"
            path.write_bytes(data[: len(data) * k // 64])
            with pytest.raises(BlazeportError):
                read_tflite(path)


# ------------------------------------------------------------------ the walker, on graphs the reader accepts


def _edit_bias(m: Any) -> None:
    m.ops[0].inputs = m.ops[0].inputs[:2]  # a conv without bias is valid TFLite; the module needs one


def _edit_stride(m: Any) -> None:
    next(op for op in m.ops if op.type == "DEPTHWISE_CONV_2D").options["stride"] = (2, 1)


def _edit_kernel(m: Any) -> None:
    k = m.tensor(m.ops[0].inputs[1])
    k.data = k.data.reshape(k.data.shape[0], -1)


def _edit_inputs(m: Any) -> None:
    m.inputs = [*m.inputs, m.ops[0].outputs[0]]


def _edit_outputs(m: Any) -> None:
    t = m.tensor(m.outputs[0])
    t.shape = t.shape[1:]


WALKER_CASES = {
    "conv-without-bias": (_edit_bias, "has no bias", "IndexError"),
    "non-square-stride": (_edit_stride, r"has stride \(2, 1\)", "a module with the wrong stride (BlazeFace walk)"),
    "kernel-not-rank-4": (_edit_kernel, "has a kernel of shape", "ValueError: axes don't match array"),
    "two-inputs": (_edit_inputs, "expected one input, found 2", "KeyError in extract_graph"),
    "output-not-rank-3": (_edit_outputs, r"expected outputs \(1, N, 1\) and \(1, N, k\)", "outputs the module cannot give"),
}


@pytest.fixture(scope="module")
def short_range_model() -> Any:
    return read_tflite(WEIGHTS / "face_detection_short_range.tflite")


@pytest.mark.parametrize("case", list(WALKER_CASES))
@pytest.mark.parametrize("walk", ["extract", "extract_graph"])
def test_walker_refuses_graphs_the_module_cannot_run(case: str, walk: str, short_range_model: Any) -> None:
    """Defence behind the reader: both walks answer ConversionError, not an exception from numpy or torch."""
    import copy

    import blazeport.convert as conv

    edit, message, _before = WALKER_CASES[case]
    model = copy.deepcopy(short_range_model)
    edit(model)
    with pytest.raises(conv.ConversionError, match=message):
        getattr(conv, walk)(model)


def test_non_square_input_is_refused_by_detect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Input width 128 -> 127 (one byte): a consistent graph the reader accepts, that detect cannot feed."""
    from blazeport.cli import main
    from blazeport.pipeline.photos import sample_image_path

    path = _mutant(tmp_path, "short_range", {228888: (128, 127)})
    rc = main(["detect", str(sample_image_path()), "--backend", "tflite", "--model", str(path), "--spec", "short_range"])
    assert rc == 2 and str(path) in capsys.readouterr().err
