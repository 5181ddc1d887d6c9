"""``blazeport bench``: report fields, stage timings, torch-free runs, Android command lines, errors.

These check behaviour on tiny runs (``--runs 3``), never how fast anything is: performance claims
come from the command's report (README, Benchmarks), not from a timed test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from blazeport.bench import child, counts, mediapipe, targets
from blazeport.bench import report as bench_report
from blazeport.bench import spawn as spawn_mod
from blazeport.cli import build_parser, main
from blazeport.errors import BlazeportError
from blazeport.specs import spec_named
from tests.conftest import ROOT, SHORT_RANGE_TFLITE

STAT_KEYS = {"min", "p50", "p90", "p99", "mean", "std", "max"}
ROW_KEYS = {"model", "backend", "runtime", "threads", "mode", "path", "file_bytes", "params", "macs", "spec", "reference",
            "baseline", "import_ms", "init_ms", "first_ms", "runs_ms", "stats", "cpu_ms_per_run", "peak_rss_mb",
            "torch_loaded", "ratios"}


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """skimage's astronaut as a JPEG file (one face), so e2e reads and decodes a real file."""
    import skimage.data

    path = tmp_path_factory.mktemp("bench") / "astronaut.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture(scope="module")
def tiny_report(photo: Path, tmp_path_factory) -> dict:
    """One tiny run of the original short-range file, model only and end to end, in two rounds (2 + 1 runs)."""
    out = tmp_path_factory.mktemp("bench-out")
    code = main(["bench", str(SHORT_RANGE_TFLITE), "--backend", "tflite-original", "--runs", "3", "--warmup", "1",
                 "--rounds", "2", "--e2e", "--image", str(photo), "--mediapipe-python", "none", "--json", str(out / "b.json"),
                 "--plot", str(out / "b.png")])
    assert code == 0
    report = json.loads((out / "b.json").read_text())
    report["_png"] = (out / "b.png").read_bytes()
    return report


def test_help_exits_zero(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["bench", "--help"])
    assert exc.value.code == 0
    assert "usage: blazeport bench" in capsys.readouterr().out


def test_missing_model_file_is_one_clear_line(capsys, tmp_path) -> None:
    missing = tmp_path / "nope.tflite"
    assert main(["bench", str(missing), "--runs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.tflite" in err[0] and "no such model file" in err[0]


def test_json_has_documented_fields_and_raw_timings(tiny_report: dict) -> None:
    r = tiny_report
    assert {"host", "settings", "results", "notes", "targets", "command", "created"} <= set(r)
    assert {"cpu", "cores", "os", "python", "libraries"} <= set(r["host"])
    assert {"torch", "onnxruntime", "ai-edge-litert", "opencv", "numpy"} <= set(r["host"]["libraries"])
    assert r["settings"]["runs"] == 3 and r["settings"]["warmup"] == 1 and r["settings"]["rounds"] == 2
    assert r["command"].startswith("blazeport bench ") and "--runs 3" in r["command"]
    rows = r["results"]
    assert [(x["backend"], x["mode"]) for x in rows] == [("tflite-original", "model"), ("tflite-original", "e2e")]
    for row in rows:
        assert set(row) >= ROW_KEYS, ROW_KEYS - set(row)
        assert row["rounds"] == 2 and len(row["init_ms_rounds"]) == 2  # two processes per configuration
        assert len(row["runs_ms"]) == 3 and all(t > 0 for t in row["runs_ms"])
        assert set(row["stats"]) == STAT_KEYS
        assert row["stats"]["min"] <= row["stats"]["p50"] <= row["stats"]["p90"] <= row["stats"]["p99"] <= row["stats"]["max"]
        assert row["init_ms"] > 0 and row["first_ms"] > 0 and row["peak_rss_mb"] > 10
        assert row["params"] == 101_390 and row["macs"] == 30_760_960
        assert row["file_bytes"] == SHORT_RANGE_TFLITE.stat().st_size
        assert row["ratios"]["vs_original"] == pytest.approx(1.0)  # the original against itself
        assert row["torch_loaded"] is False
    assert tiny_report["_png"][:8] == b"\x89PNG\r\n\x1a\n"


def test_e2e_stages_sum_sensibly(tiny_report: dict, photo: Path) -> None:
    import blazeport

    (row,) = [x for x in tiny_report["results"] if x["mode"] == "e2e"]
    stages = row["stages_ms"]
    assert set(stages) == set(child.STAGES)
    assert all(len(v) == 3 and min(v) >= 0 for v in stages.values())
    for i, total in enumerate(row["runs_ms"]):
        parts = sum(stages[s][i] for s in child.STAGES)
        assert parts <= total + 1e-3  # the stages run inside the timed call
    share = 100 * row["stage_stats"]["postprocess"]["p50"] / row["stage_stats"]["infer"]["p50"]
    assert row["postprocess_share_pct"] == pytest.approx(share)
    from blazeport.pipeline.postprocess import compiled_available

    assert row["postprocess"] == ("numba" if compiled_available() else "numpy")  # --postprocess auto
    # the timed loop is Detector.detect on the file: the same detections
    want = [d.to_dict() for d in blazeport.load(str(SHORT_RANGE_TFLITE), backend="tflite").detect(photo)]
    assert row["faces"] == len(want) == 1
    np.testing.assert_allclose(row["detections"][0]["box"], want[0]["box"], atol=1e-6)


def test_tflite_bench_runs_without_torch(tmp_path, photo: Path) -> None:
    """A board with LiteRT only: torch unimportable in the command, and never loaded by the child."""
    out = tmp_path / "b.json"
    code = ("import sys; sys.modules['torch'] = None\n"
            "from blazeport.cli import main\n"
            f"sys.exit(main(['bench', {str(SHORT_RANGE_TFLITE)!r}, '--backend', 'tflite', '--runs', '3', '--warmup', '1', "
            f"'--image', {str(photo)!r}, '--json', {str(out)!r}, '--cache', {str(tmp_path / 'cache')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert row["backend"] == "tflite-original" and len(row["runs_ms"]) == 3
    assert row["torch_loaded"] is False
    assert (row["params"], row["macs"]) == (101_390, 30_760_960)  # counted from the TFLite graph
    assert any("export skipped" in n for n in report["notes"])  # the re-export needs torch: said, not hidden
    assert report["host"]["libraries"]["ai-edge-litert"]


def test_android_prints_benchmark_model_lines(capsys) -> None:
    code = main(["bench", str(SHORT_RANGE_TFLITE), "--backend", "tflite-original", "--threads", "1,2", "--runs", "50",
                 "--warmup", "5", "--android"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"adb push {SHORT_RANGE_TFLITE}" in out
    for n in (1, 2):
        assert (f"benchmark_model --graph=/data/local/tmp/face_detection_short_range.tflite --num_threads={n} "
                f"--num_runs=50 --warmup_runs=5 --use_xnnpack=true") in out


def test_tflite_graph_counts_match_the_module() -> None:
    pytest.importorskip("torch")
    from blazeport.convert import load_tflite
    from blazeport.modelfiles.counting import count_macs, count_params

    module = load_tflite(SHORT_RANGE_TFLITE)[0]
    assert counts.tflite_counts(SHORT_RANGE_TFLITE) == (count_params(module), count_macs(module, 128))


def test_exports_are_cached_by_source_hash(tmp_path, monkeypatch) -> None:
    import blazeport.export

    calls = []

    def fake_export(source, fmt, out, dynamic_batch=False, trust_code=False):
        calls.append((Path(source), fmt, dynamic_batch))
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(b"exported")
        return {"ok": True}

    monkeypatch.setattr(blazeport.export, "export", fake_export)
    src = tmp_path / "m.safetensors"
    src.write_bytes(b"weights v1")
    first = targets.cached_export(src, "onnx", tmp_path / "cache", "m", lambda _: None)
    again = targets.cached_export(src, "onnx", tmp_path / "cache", "m", lambda _: None)
    assert first == again and len(calls) == 1 and first.suffix == ".onnx"
    assert calls[0][2] and "dynbatch" in first.name  # ONNX with a dynamic batch: --folder --batch N is one forward
    src.write_bytes(b"weights v2")  # retrained: a new file, not the stale export
    assert targets.cached_export(src, "onnx", tmp_path / "cache", "m", lambda _: None) != first and len(calls) == 2


def test_ratios_and_targets_from_results() -> None:
    def row(backend: str, mode: str, p50: float, threads: int = 1, post: float | None = None) -> dict:
        r = {"model": "short_range", "backend": backend, "mode": mode, "threads": threads, "reference": "short_range",
             "spec": "short_range", "stats": {"p50": p50}, "baseline": backend in (targets.ORIGINAL, mediapipe.MEDIAPIPE)}
        if post is not None:
            r["postprocess_share_pct"] = post
        return r

    student = {**row("tflite", "model", 3.0), "model": "short_range_resnet_large", "spec": "short_range_resnet_large"}
    results = [row("tflite-original", "model", 2.0), row("tflite", "model", 2.4), row("onnx", "e2e", 4.5, post=8.0),
               row("tflite-original", "e2e", 5.0, post=12.0), row("mediapipe", "e2e", 5.0), row("tflite", "model", 1.0, 2),
               student]
    bench_report.add_ratios(results)
    assert results[1]["ratios"] == {"vs_original": pytest.approx(1.2)}
    assert results[2]["ratios"] == {"vs_mediapipe": pytest.approx(0.9), "vs_original": pytest.approx(0.9)}
    assert results[5]["ratios"] == {}  # no original measured at 2 threads: no ratio invented
    met = {(t["target"], t["where"]): t["met"] for t in bench_report.check_targets(results)}
    assert met[("re-exported tflite <= 1.1x original", "short_range tflite 1t")] is False
    assert student["ratios"] == {"vs_original": pytest.approx(1.5)}  # a student's ratio to its teacher: a figure,
    assert not any(t["where"].startswith("short_range_resnet_large") for t in bench_report.check_targets(results))  # no target
    assert met[("e2e onnx <= 1.0x MediaPipe", "short_range onnx 1t")] is True
    assert met[("decode + NMS <= 10% of model time", "short_range onnx 1t")] is True
    assert met[("decode + NMS <= 10% of model time", "short_range tflite-original 1t")] is False


def test_mediapipe_baseline_child(photo: Path) -> None:
    """MediaPipe's own process() on the same file (runs where mediapipe is installed, e.g. CI's parity extra)."""
    pytest.importorskip("mediapipe")

    cfg = {"runtime": "mediapipe", "path": None, "threads": 1, "mode": "e2e", "runs": 3, "warmup": 1, "image": str(photo),
           "spec": spec_named("short_range").to_dict(), "cwd": str(ROOT), "model_selection": 0}
    res = spawn_mod.spawn(cfg, sys.executable)
    assert "error" not in res, res
    assert len(res["runs_ms"]) == 3 and set(res["stages_ms"]) == set(mediapipe.MP_STAGES)
    assert all(len(v) == 3 for v in res["stages_ms"].values())
    assert res["faces"] == 1 and res["torch_loaded"] is False


def test_bench_package_does_not_import_the_cli() -> None:
    """The command (blazeport.cli.bench) imports blazeport.bench; nothing in blazeport.bench imports blazeport.cli
    back (``python -m blazeport.bench``, its __main__, is the command's entry point and left out)."""
    code = ("import importlib, pkgutil, sys, blazeport.bench\n"
            "for m in pkgutil.iter_modules(blazeport.bench.__path__, 'blazeport.bench.'):\n"
            "    if not m.name.endswith('__main__'):\n"
            "        importlib.import_module(m.name)\n"
            "assert not [m for m in sys.modules if m.split('.')[:2] == ['blazeport', 'cli']], sorted(sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_child_entry_point_runs_without_torch(tmp_path, photo: Path) -> None:
    """``python -m blazeport.bench.child`` on a tflite configuration, with a torch that cannot be imported
    (and says so if anything tries): the child never touches torch."""
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("from pathlib import Path\nPath(__file__).with_name('tried').touch()\n"
                                      "raise ImportError('torch is unimportable in this test')\n")
    cfg = {"runtime": "tflite", "path": str(SHORT_RANGE_TFLITE), "threads": 1, "mode": "e2e", "runs": 2, "warmup": 1,
           "image": str(photo), "spec": spec_named("short_range").to_dict(), "cwd": str(tmp_path)}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-m", "blazeport.bench.child"], input=json.dumps(cfg), capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith(spawn_mod.RESULT_TAG)]
    res = json.loads(line[len(spawn_mod.RESULT_TAG):])
    assert len(res["runs_ms"]) == 2 and set(res["stages_ms"]) == set(child.STAGES) and res["faces"] == 1
    assert res["torch_loaded"] is False and not (fake / "tried").exists()


def test_spec_name_without_converted_weights_is_the_loaders_error(tmp_path, monkeypatch, capsys) -> None:
    """No silent conversion of the original on load: the one error of blazeport.modelfiles.loader.spec_weights."""
    pytest.importorskip("torch")
    import blazeport.modelfiles.loader
    import blazeport.modelfiles.ref

    monkeypatch.setattr(blazeport.modelfiles.ref, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(BlazeportError) as want:
        blazeport.modelfiles.loader.spec_weights(spec_named("short_range"))
    assert main(["bench", "short_range", "--backend", "torch", "--runs", "1", "--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"blazeport bench: error: {want.value}"]


def test_baselines_and_references_come_from_the_spec() -> None:
    """A student is compared with its spec's teacher; MediaPipe runs only the originals whose spec names
    its pipeline (short_range: 0, full_range_sparse: 1); the dense full_range gets none, and a note says so."""
    assert targets.reference_of(spec_named("short_range_resnet")) == spec_named("short_range")
    assert targets.reference_of(spec_named("full_range")) == spec_named("full_range")
    asked = [targets.Target(name, "torch", None, spec_named(name), targets.reference_of(spec_named(name)))
             for name in ("short_range_resnet", "full_range", "full_range_sparse")]
    notes: list[str] = []
    out = targets.add_baselines(asked, True, "python-with-mediapipe", notes)
    mp = {t.model: t.extra["model_selection"] for t in out if t.backend == mediapipe.MEDIAPIPE}
    assert mp == {"short_range": 0, "full_range_sparse": 1}
    originals = [t.model for t in out if t.backend == targets.ORIGINAL]
    assert originals == ["short_range", "full_range", "full_range_sparse"]
    assert any(n.startswith("baseline full_range: no MediaPipe baseline") for n in notes), notes


def test_untrained_student_gets_its_teachers_spec(tmp_path) -> None:
    pytest.importorskip("torch")
    notes: list[str] = []
    (t,) = targets.resolve_targets(["resnet"], {"torch"}, tmp_path, None, notes, lambda _: None)
    assert t.model == "resnet (untrained)" and Path(t.path).parent == tmp_path
    assert (t.spec.teacher, t.spec.architecture, t.spec.family, t.spec.input_size) == ("short_range", "resnet", "resnet", 128)
    assert t.reference == spec_named("short_range") and t.params and t.macs
    assert any("freshly initialised" in n for n in notes)
    # the same name for another teacher: that teacher's input and head (192 px, 2304 anchors at stride 4)
    (t,) = targets.resolve_targets(["mobilenet"], {"torch"}, tmp_path, "full_range", [], lambda _: None)
    assert (t.spec.teacher, t.spec.input_size, t.spec.num_anchors, t.spec.family) == ("full_range", 192, 2304, "student")
    with pytest.raises(BlazeportError, match="unknown"):
        targets.resolve_targets(["mobilenet_huge"], {"torch"}, tmp_path, None, [], lambda _: None)


def test_an_int8_tflite_gets_the_int8_target_and_a_size_ratio() -> None:
    """A file whose metadata says int8 is held to <= 0.7x the original (not the re-export's 1.1x)."""
    base = {"mode": "model", "threads": 1, "reference": "short_range", "spec": "short_range"}
    original = {**base, "model": "short_range", "backend": targets.ORIGINAL, "stats": {"p50": 2.0}, "file_bytes": 229_032}
    int8 = {**base, "model": "sr_int8", "backend": "tflite", "stats": {"p50": 1.6}, "file_bytes": 114_516, "weights": "int8"}
    results = [original, int8]
    bench_report.add_ratios(results)
    assert int8["ratios"] == {"vs_original": pytest.approx(0.8), "size_vs_original": pytest.approx(0.5)}
    (target,) = bench_report.check_targets(results)
    assert target["target"] == "int8 tflite <= 0.7x original" and target["where"] == "sr_int8 tflite 1t"
    assert target["limit"] == 0.7 and target["met"] is False


def test_pytorch_targets_against_litert_and_its_own_single_thread() -> None:
    """A converted original on torch: <= 1.5x the original in LiteRT at the same threads, and no slower
    at 2 threads than at 1; a student (spec != reference) gets neither."""
    base = {"mode": "model", "reference": "short_range", "spec": "short_range"}
    rows = [{**base, "model": "short_range", "backend": targets.ORIGINAL, "threads": 1, "stats": {"p50": 1.0}},
            {**base, "model": "short_range", "backend": targets.ORIGINAL, "threads": 2, "stats": {"p50": 0.6}},
            {**base, "model": "short_range", "backend": "torch", "threads": 1, "stats": {"p50": 1.4}},
            {**base, "model": "short_range", "backend": "torch", "threads": 2, "stats": {"p50": 1.5}},
            {**base, "model": "student", "spec": "short_range_resnet", "backend": "torch", "threads": 1,
             "stats": {"p50": 0.5}}]
    bench_report.add_ratios(rows)
    got = {(t["target"], t["where"]): (round(t["value"], 3), t["met"]) for t in bench_report.check_targets(rows)}
    assert got == {("converted PyTorch <= 1.5x original LiteRT", "short_range torch 1t"): (1.4, True),
                   ("converted PyTorch <= 1.5x original LiteRT", "short_range torch 2t"): (2.5, False),
                   ("PyTorch at 2 threads no slower than at 1", "short_range torch 2t"): (1.071, False)}
