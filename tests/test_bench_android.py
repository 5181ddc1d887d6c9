"""``bench --android`` and its way back, ``bench --android-results LOG...``.

The parser is checked on real ``benchmark_model`` output (``tests/data/android/``, each file's
header says where it was printed): every value asserted is the one the log prints. The phone's
side is never run here; a round trip feeds the script's own log names with those real logs.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from blazeport.bench import android_results as ar
from blazeport.bench.android import android_commands
from blazeport.bench.android_log import parse_log
from blazeport.bench.report import table_rows
from blazeport.bench.targets import ORIGINAL, Target
from blazeport.cli import main
from blazeport.errors import BlazeportError
from blazeport.specs import spec_named
from tests.conftest import SHORT_RANGE_TFLITE
from tests.tiny_tflite import write_single_op_model

DATA = Path(__file__).resolve().parent / "data" / "android"
ESPCN = DATA / "tf42507_espcn_android_t4.log"  # Android, no delegate, old statistics line, "Peak memory footprint"
YOLO = DATA / "xnnpack999_yolo_rpi_t4.log"  # Raspberry Pi, XNNPACK created by default, prompt glued to STARTING!
MASK_CPU = DATA / "maskest_android_xnnpack_t4.log"  # Android, current build: INFO: prefix, p5/median/p95
MASK_GPU = DATA / "maskest_android_gpu_t2.log"  # Android, GPU delegate, NNAPI asked for and unused


# ----------------------------------------------------------------------------------------------
# The parser on real logs


def test_parse_android_log_without_delegate() -> None:
    run = parse_log(ESPCN)
    assert run.graph == "/data/local/tmp/espcn_harmonic_2x_slim_w_cl.tflite"
    assert run.graph_name == "espcn_harmonic_2x_slim_w_cl.tflite"
    assert run.threads == 4
    assert (run.init_us, run.first_us, run.warmup_avg_us, run.inference_avg_us) == (855, 49060, 34825.1, 33209.4)
    assert run.warmup == {"count": 15, "first": 49060, "curr": 33682, "min": 32825, "max": 49060, "avg": 34825.1,
                          "std": 3930}
    assert run.inference == {"count": 50, "first": 32891, "curr": 33978, "min": 32641, "max": 34005, "avg": 33209.4,
                             "std": 450}
    assert run.memory_mb == {"label": "Peak memory footprint (MB)", "init": 0, "overall": 12.8672}
    assert run.peak_mb is None
    assert run.delegates == {} and run.not_applied == [] and run.delegate_label == "cpu"


def test_parse_log_with_a_shell_prompt_and_the_default_xnnpack() -> None:
    run = parse_log(YOLO)
    assert run.graph == run.graph_name == "yolo_best_recall_int8_static.tflite"
    assert run.threads == 4
    assert (run.init_us, run.first_us, run.warmup_avg_us, run.inference_avg_us) == (18777, 64791, 57758.2, 55043.2)
    assert run.inference == {"count": 50, "first": 58154, "curr": 53809, "min": 53077, "max": 60727, "avg": 55043.2,
                             "std": 1562}
    assert run.warmup["count"] == 9
    assert run.memory_mb == {"label": "Memory footprint delta from the start of the tool (MB)", "init": 8.97656,
                             "overall": 18.7227}
    assert list(run.delegates) == ["XNNPACK"] and "created" in run.delegates["XNNPACK"]
    assert run.delegate_label == "xnnpack"


def test_parse_current_build_with_percentiles_and_a_single_warmup_run() -> None:
    run = parse_log(MASK_CPU)
    assert run.graph == "/data/local/tmp/mask_estimator_phy.tflite" and run.threads == 4
    assert (run.init_us, run.first_us, run.warmup_avg_us, run.inference_avg_us) == (102320, 670083, 670083, 699438)
    assert run.inference == {"count": 50, "first": 591245, "curr": 917186, "min": 502355, "max": 2270688,
                             "avg": 699438, "std": 325425, "p5": 502674, "median": 576856, "p95": 1373207}
    # one warm-up run prints "count=1 curr=670083 p5=.. median=.. p95=..": its min, max and avg are that run
    assert run.warmup == {"count": 1, "curr": 670083, "first": 670083, "min": 670083, "max": 670083, "avg": 670083,
                          "std": 0, "p5": 670083, "median": 670083, "p95": 670083}
    assert run.memory_mb == {"label": "Memory footprint delta from the start of the tool (MB)", "init": 98.0977,
                             "overall": 99.2031}
    assert run.delegates == {"XNNPACK": "created (TFLite's default CPU delegate); 49 of 49 nodes"}


def test_parse_gpu_log_drops_the_delegate_that_took_nothing() -> None:
    run = parse_log(MASK_GPU)
    assert run.threads == 2
    assert (run.init_us, run.first_us, run.warmup_avg_us, run.inference_avg_us) == (5664363, 328140, 319036, 309350)
    assert run.inference["median"] == 307968 and run.inference["count"] == 50
    assert run.delegates == {"GPU": "49 of 49 nodes; the whole graph"}
    assert run.not_applied == ["NNAPI"]  # "Though NNAPI delegate is explicitly applied, ... will not be executed"
    assert run.delegate_label == "gpu"


def test_row_names_each_statistic_as_the_log_does() -> None:
    """avg is the mean, never the p50; p50 is the tool's median, absent where it printed none."""
    original = ar.known_models([], None)["face_detection_short_range.tflite"]
    new = ar.result_row(parse_log(MASK_CPU), original)
    assert new["stats"] == {"min": 502.355, "max": 2270.688, "mean": 699.438, "std": 325.425, "p5": 502.674,
                            "p50": 576.856, "p95": 1373.207}
    assert (new["init_ms"], new["first_ms"], new["runs"], new["warmup_runs"]) == (102.32, 670.083, 50, 1)
    old = ar.result_row(parse_log(ESPCN), original)
    assert old["stats"] == {"min": 32.641, "max": 34.005, "mean": 33.2094, "std": 0.45}
    assert old["peak_rss_mb"] is None  # "Peak memory footprint" is growth since the tool started, not a peak RSS
    head, cells = table_rows([new, old], "model")
    col = {h: i for i, h in enumerate(head)}
    assert [c[col["mean"]] for c in cells] == ["699.44", "33.21"]
    assert [c[col["p50"]] for c in cells] == ["576.86", "-"]
    assert [c[col["p90"]] for c in cells] == ["-", "-"] and [c[col["p99"]] for c in cells] == ["-", "-"]


# ----------------------------------------------------------------------------------------------
# Logs that are not one good run: one message each, naming the file


def _cut(path: Path, before: str) -> str:
    text = path.read_text()
    return text[:text.index(before)]


BAD_LOGS = {
    # what `adb shell ... > log 2>&1` saves when no phone is connected
    "no_phone.log": ("adb: no devices/emulators found\n", "not benchmark_model output"),
    # the real log cut before its summary line
    "cut.log": (_cut(MASK_CPU, "INFO: Inference timings"), "without its 'Inference timings in us' line"),
    # the real log's start, then a failure as benchmark_model reports one
    "failed.log": (_cut(ESPCN, "Running benchmark") + "ERROR: Failed to allocate tensors!\nBenchmarking failed.\n",
                   "its last error: ERROR: Failed to allocate tensors!"),
    # two runs appended to one file
    "two.log": (ESPCN.read_text() + MASK_CPU.read_text(), "holds 2 benchmark_model runs"),
    # the summary line of the TFLite benchmark README's sample (an old build)
    "old.log": ("Timings (microseconds): count=50 first=79449 curr=81350 min=77385 max=88213 avg=79732 std=1929\n"
                "Average inference timings in us: Warmup: 83235, Init: 38467, Inference: 79760.9\n",
                "old benchmark_model"),
    # the real log without its Graph line
    "nograph.log": (MASK_CPU.read_text().replace("INFO: Graph: [/data/local/tmp/mask_estimator_phy.tflite]\n", ""),
                    "names no 'Graph: [...]'"),
}


@pytest.mark.parametrize("name", sorted(BAD_LOGS))
def test_bad_log_is_one_message_naming_the_file(tmp_path, capsys, name) -> None:
    text, why = BAD_LOGS[name]
    log = tmp_path / name
    log.write_text(text)
    with pytest.raises(BlazeportError, match=re.escape(why)) as exc:
        parse_log(log)
    assert str(log) in str(exc.value)
    assert main(["bench", "--android-results", str(log)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("blazeport bench: error: ") and why in err[0]


def test_missing_log_and_folder(tmp_path) -> None:
    with pytest.raises(BlazeportError, match="no such log file"):
        parse_log(tmp_path / "nope.log")
    with pytest.raises(BlazeportError, match="is a folder"):
        parse_log(tmp_path)


# ----------------------------------------------------------------------------------------------
# The command: logs -> table and JSON, ratio to the original on the same phone


@pytest.fixture()
def ran_models(tmp_path) -> list[Path]:
    """The files the fixture logs name: Google's short_range under the name mask_estimator_phy.tflite
    (known as the original by its bytes), and two other .tflite files as the user's exports."""
    original = tmp_path / "mask_estimator_phy.tflite"
    original.write_bytes(SHORT_RANGE_TFLITE.read_bytes())
    return [original, write_single_op_model(tmp_path / "yolo_best_recall_int8_static.tflite"),
            write_single_op_model(tmp_path / "espcn_harmonic_2x_slim_w_cl.tflite")]


def test_android_results_table_and_json(tmp_path, capsys, ran_models) -> None:
    out = tmp_path / "android.json"
    code = main(["bench", *map(str, ran_models), "--spec", "short_range", "--json", str(out),
                 "--android-results", str(ESPCN), str(YOLO), str(MASK_CPU), str(MASK_GPU)])
    printed = capsys.readouterr().out
    assert code == 0
    assert ar.TITLE in printed and "tflite-original-android/xnnpack" in printed and "x orig: mean / mean" in printed
    report = json.loads(out.read_text())
    assert report["host"] is None and report["settings"]["statistic_for_ratios"] == "mean"
    rows = {(r["model"], r["backend"], r["threads"]): r for r in report["results"]}
    assert set(rows) == {("short_range", "tflite-original-android/gpu", 2),
                         ("short_range", "tflite-original-android/xnnpack", 4),
                         ("yolo_best_recall_int8_static", "tflite-android/xnnpack", 4),
                         ("espcn_harmonic_2x_slim_w_cl", "tflite-android/cpu", 4)}
    export = rows["yolo_best_recall_int8_static", "tflite-android/xnnpack", 4]
    # the original on the same phone, same threads and delegates: 55043.2 us / 699438 us
    assert export["ratios"]["vs_original"] == pytest.approx(55043.2 / 699438)
    assert export["reference"] == "short_range" and export["mode"] == "model" and export["runtime"] == "benchmark_model"
    assert rows["short_range", "tflite-original-android/xnnpack", 4]["ratios"]["vs_original"] == 1.0
    assert rows["short_range", "tflite-original-android/xnnpack", 4]["params"] == 101_390
    assert rows["espcn_harmonic_2x_slim_w_cl", "tflite-android/cpu", 4]["ratios"] == {}  # no original without a delegate
    assert any("no log of the original at that thread count" in n for n in report["notes"])
    assert report["targets"] == []


def test_android_results_user_errors(tmp_path, capsys, ran_models) -> None:
    def error(*argv: str) -> str:
        assert main(["bench", *argv]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1
        return lines[0]

    assert "its graph /data/local/tmp/mask_estimator_phy.tflite is none of the models" in error(
        "--android-results", str(MASK_CPU))
    assert "a model, not a log; put MODEL files before --android-results" in error(
        "--android-results", str(MASK_CPU), str(ran_models[0]))
    assert "--threads do(es) not apply to --android-results" in error(
        str(ran_models[0]), "--threads", "4", "--android-results", str(MASK_CPU))
    assert "two logs of the same configuration" in error(
        str(ran_models[0]), "--android-results", str(MASK_CPU), str(MASK_CPU))
    assert "carries no spec; pass --spec NAME" in error(str(ran_models[1]), "--android-results", str(YOLO))
    no_threads = tmp_path / "no_threads.log"
    no_threads.write_text("".join(line for line in MASK_CPU.read_text().splitlines(keepends=True)
                                  if "threads" not in line.lower()))
    assert "names no thread count" in error(str(ran_models[0]), "--android-results", str(no_threads))


# ----------------------------------------------------------------------------------------------
# The --android script saves each run's log and reads them back


def test_android_script_saves_logs_and_reads_them_back(capsys) -> None:
    code = main(["bench", str(SHORT_RANGE_TFLITE), "--backend", "tflite-original", "--threads", "1,4", "--runs", "50",
                 "--warmup", "5", "--android"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert "mkdir -p runs/android" in lines
    for n in (1, 4):
        assert (f"adb shell /data/local/tmp/benchmark_model --graph=/data/local/tmp/face_detection_short_range.tflite "
                f"--num_threads={n} --num_runs=50 --warmup_runs=5 --use_xnnpack=true "
                f"> runs/android/face_detection_short_range_t{n}.log 2>&1") in lines
    assert lines[-1] == "blazeport bench --android-results runs/android/*.log"  # an original is known by its name


def test_round_trip_script_logs_read_back(tmp_path, monkeypatch, capsys) -> None:
    """The script's own log names and read-back line, fed the real logs as the phone would have written
    them for these two files (each log's Graph line pointed at the file the script pushed)."""
    pytest.importorskip("ai_edge_litert")
    from blazeport.export.to_tflite import _tflite_with_metadata
    from blazeport.modelfiles.metadata import file_metadata

    spec = spec_named("short_range")
    export = tmp_path / "short_range export.tflite"  # a re-packed original with blazeport's metadata: an export
    export.write_bytes(_tflite_with_metadata(SHORT_RANGE_TFLITE.read_bytes(), file_metadata(spec, "x", False, False)))
    script = android_commands([Target("short_range", ORIGINAL, str(SHORT_RANGE_TFLITE), spec, spec),
                               Target("short_range export", "tflite", str(export), spec, spec)], [4], 50, 5)
    runs = [shlex.split(line) for line in script.splitlines() if line.startswith("adb shell /data/local/tmp/benchmark")]
    assert len(runs) == 2
    monkeypatch.chdir(tmp_path)
    Path("runs/android").mkdir(parents=True)
    for argv, real in zip(runs, (MASK_CPU, YOLO), strict=True):
        graph = next(a.split("=", 1)[1] for a in argv if a.startswith("--graph="))
        log = argv[argv.index(">") + 1]
        text = real.read_text()
        Path(log).write_text(text.replace(parse_log(real).graph, graph))
    read_back = shlex.split(script.splitlines()[-1])
    assert read_back[:2] == ["blazeport", "bench"] and read_back[2] == str(export)
    logs = sorted(str(p) for p in Path("runs/android").glob("*.log"))
    # the log is named as the file is on the phone: no space for the phone's shell to split
    assert logs == ["runs/android/face_detection_short_range_t4.log", "runs/android/short_range_export_t4.log"]
    assert main([*read_back[1:read_back.index("--android-results") + 1], *logs, "--json", "r.json"]) == 0
    assert "short_range export" in capsys.readouterr().out
    rows = {r["model"]: r for r in json.loads(Path("r.json").read_text())["results"]}
    assert rows["short_range export"]["weights"] == "float32"
    assert rows["short_range export"]["ratios"]["vs_original"] == pytest.approx(55043.2 / 699438)


def test_android_script_refuses_two_files_of_one_name(tmp_path) -> None:
    spec = spec_named("short_range")
    a, b = tmp_path / "a" / "m.tflite", tmp_path / "b" / "m.tflite"
    with pytest.raises(BlazeportError, match=re.escape("share the file name m.tflite")):
        android_commands([Target("a", "tflite", str(a), spec, spec), Target("b", "tflite", str(b), spec, spec)],
                         [1], 10, 1)
