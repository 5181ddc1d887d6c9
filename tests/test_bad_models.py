"""Broken or mismatched model files end in one clear line (exit 2), never a traceback or junk."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import blazeport
from blazeport.cli import main
from blazeport.errors import BlazeportError
from blazeport.specs import spec_named
from tests.conftest import WEIGHTS

SR = WEIGHTS / "short_range.safetensors"


def _meta_and_state() -> tuple[dict[str, str], dict]:
    with safe_open(str(SR), "pt") as f:
        meta = f.metadata()
    return meta, load_file(str(SR))


def _spec_with(**changes) -> str:
    meta, _ = _meta_and_state()
    spec = json.loads(meta["spec"])
    for key, value in changes.items():
        if value is None:
            spec.pop(key)
        else:
            spec[key] = value
    return json.dumps(spec)


def _write(tmp_path: Path, state: dict, meta: dict[str, str]) -> Path:
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path), metadata=meta)
    return path


def _variants():
    meta, state = _meta_and_state()
    key = "blocks.0.dw.bias"
    no_spec = {k: v for k, v in meta.items() if k != "spec"}
    return {
        "wrong shape": ({**state, key: state[key][:3]}, meta, "has shape (3,)"),
        "missing tensor": ({k: v for k, v in state.items() if k != key}, meta, "missing ['blocks.0.dw.bias']"),
        "extra tensor": ({**state, "extra.weight": state[key].clone()}, meta, "unexpected ['extra.weight']"),
        "config not JSON": (state, {**meta, "config": "{not json"}, "config metadata"),
        "config of another model": (state, {**meta, "config": json.dumps({"input_size": 128})}, "config metadata"),
        "no spec": (state, no_spec, "without blazeport metadata"),
        "incomplete spec": (state, {**meta, "spec": _spec_with(anchors=None)}, "spec lacks anchors"),
        "spec not JSON": (state, {**meta, "spec": "[1, 2"}, "spec metadata is not usable"),
        "input_size 0": (state, {**meta, "spec": _spec_with(input_size=0)}, "input_size must be"),
        "text threshold": (state, {**meta, "spec": _spec_with(score_threshold="high")}, "score_threshold must be"),
        "anchor count": (state, {**meta, "spec": _spec_with(num_anchors=100)}, "give 896 anchors"),
        "unknown family": (state, {**meta, "family": "vgg"}, "unknown model family"),
    }


@pytest.mark.parametrize("case", list(_variants()))
def test_broken_safetensors_end_in_one_line(case: str, tmp_path, capsys) -> None:
    state, meta, message = _variants()[case]
    path = _write(tmp_path, state, meta)
    with pytest.raises(BlazeportError, match=r"bad\.safetensors") as info:
        blazeport.load(path)
    assert message in str(info.value)
    assert main(["detect", "--model", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_unreadable_safetensors_says_so(tmp_path, monkeypatch) -> None:
    path = tmp_path / "locked.safetensors"
    path.write_bytes(SR.read_bytes())
    if os.geteuid() == 0:  # root reads through chmod 000: make the open fail as it would for a user
        real_open = open

        def guarded(file, *args, **kwargs):
            if Path(file) == path:
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr("builtins.open", guarded)
    else:
        path.chmod(0)
    with pytest.raises(BlazeportError, match=r"cannot read the weights file \(Permission denied"):
        blazeport.load(path)


def test_model_whose_rows_do_not_match_the_spec_anchors_is_refused() -> None:
    """Like ``palm_detection_lite.tflite --spec full_range``: the back model's 896 rows against a
    256 px spec with full range's anchor layout (4096 anchors)."""
    full = spec_named("full_range")
    wrong = dataclasses.replace(full, name="full_range_256", input_size=256, num_anchors=4096,
                                anchors=dataclasses.replace(full.anchors, input_size=256))
    with pytest.raises(BlazeportError, match=r"regressors \(1, 896, 16\).*4096 anchors"):
        blazeport.load(WEIGHTS / "face_detection_back.tflite", backend="tflite", spec=wrong)


@pytest.mark.parametrize("threads", ["-1", "0", "two"])
@pytest.mark.parametrize("backend", ["torch", "tflite"])
def test_bad_thread_counts_are_usage_errors(threads: str, backend: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["detect", "--backend", backend, "--threads", threads])
    assert info.value.code == 2 and "--threads: expected a whole number >= 1" in capsys.readouterr().err
    with pytest.raises(BlazeportError, match="threads must be"):
        blazeport.load("short_range", backend=backend, threads=int(threads) if threads != "two" else 1.5)
