"""The torch backend's fast runtime (:mod:`blazeport.models.fused`): same answers as the module.

TorchBackend runs the converted originals through a plan of fused oneDNN / GEMM calls built from
the module's weights. These tests hold it to the conversion gate, against the plain module and
against LiteRT, on real photos, at 1 and 2 threads; check that it falls back to the module where
it has no plan (students, a torch without oneDNN, a plan that disagrees) and never changes the
module that export traces and the trainer trains. Behaviour only: no timings.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import pytest
import torch

import blazeport
import blazeport.models.fused as runtime
from blazeport.modelfiles.backends import TFLiteBackend, TorchBackend
from blazeport.modelfiles.loader import open_module
from blazeport.modelfiles.verify import verification_inputs, verify
from blazeport.pipeline.photos import sample_images
from blazeport.pipeline.preprocess import read_image
from blazeport.specs import WEIGHTS_DIR, spec_named

CONVERTED = ["short_range", "back", "full_range", "full_range_sparse"]


@pytest.fixture
def keep_threads() -> Iterator[None]:
    """TorchBackend(threads=N) sets torch's process-wide thread count: put it back afterwards."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return sample_images()


def _fast(name: str, threads: int | None = None) -> tuple[TorchBackend, TorchBackend]:
    """(optimized backend, plain backend) on two copies of the same converted module."""
    module, spec, _ = open_module(name)
    fast = TorchBackend(copy.deepcopy(module), threads)
    assert isinstance(fast.runner, runtime.FastModule), "the converted original should get a plan"
    assert fast.runner.plans[(spec.input_size, spec.input_size)] is not None, "its plan should pass the check"
    return fast, TorchBackend(module, threads, optimize=False)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", CONVERTED)
def test_fast_runtime_is_within_the_gate_of_the_module_and_of_litert(name: str, threads: int, photos,
                                                                     keep_threads) -> None:
    fast, plain = _fast(name, threads)
    spec = spec_named(name)
    against_module = verify(fast, plain, spec, photos)
    assert against_module["passes_gate"], against_module
    assert against_module["detections"]["max_score_diff"] < 1e-5
    litert = TFLiteBackend(WEIGHTS_DIR / spec.tflite, threads)
    against_litert = verify(fast, litert, spec, photos)
    assert against_litert["passes_gate"], against_litert


@pytest.mark.parametrize("name", CONVERTED)
def test_detections_on_real_photos_match_the_module(name: str, shared_data, keep_threads) -> None:
    fast = blazeport.load(name, backend="torch", threads=1)
    plain = blazeport.Detector(fast.spec, TorchBackend(fast.backend.module, 1, optimize=False))
    assert isinstance(fast.backend.runner, runtime.FastModule)
    for path in sorted((shared_data / "faces-boxed" / "images").glob("*.jpg"))[:6]:
        image = read_image(path)
        a, b = fast.detect(image), plain.detect(image)
        assert len(a) == len(b), path
        for d, e in zip(a, b, strict=True):
            assert abs(d.score - e.score) < 1e-5
            np.testing.assert_allclose(d.box, e.box, atol=1e-5)
            np.testing.assert_allclose(d.keypoints, e.keypoints, atol=1e-5)


def test_two_threads_give_the_same_outputs_and_keep_the_callers_setting(keep_threads) -> None:
    fast, _ = _fast("full_range_sparse", threads=2)
    x = np.random.default_rng(2).uniform(-1, 1, (2, 192, 192, 3)).astype(np.float32)
    two = fast(x)
    assert torch.get_num_threads() == 2  # the plan runs on one thread and puts the setting back
    torch.set_num_threads(1)
    for a, b in zip(two, fast(x), strict=True):
        np.testing.assert_array_equal(a, b)


def test_batches_and_other_input_sizes(photos) -> None:
    fast, plain = _fast("short_range")
    spec = spec_named("short_range")
    batch, _ = verification_inputs(spec, photos)  # 5 photos + 1 random input
    whole = fast(batch)
    one_by_one = [fast(batch[i:i + 1]) for i in range(len(batch))]
    for k in range(2):
        np.testing.assert_array_equal(whole[k], np.concatenate([o[k] for o in one_by_one]))
    # BlazeFace runs at any size: a new size gets its own plan on first use, checked like the first
    x = np.random.default_rng(1).uniform(-1, 1, (2, 160, 160, 3)).astype(np.float32)
    for a, b in zip(fast(x), plain(x), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    assert fast.runner.plans[(160, 160)] is not None


def test_the_module_is_left_as_it_was() -> None:
    module, _, _ = open_module("full_range_sparse")
    before = {k: v.clone() for k, v in module.state_dict().items()}
    backend = TorchBackend(module)
    assert backend.module is module and isinstance(backend.runner, runtime.FastModule)
    after = module.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        torch.testing.assert_close(after[k], v, rtol=0, atol=0)
    assert not any(p.is_mkldnn for p in module.parameters())


def test_students_and_optimize_false_run_the_module() -> None:
    student = blazeport.load("short_range_resnet", backend="torch").backend
    assert student.runner is student.module  # no plan for the ResNet family
    plain = TorchBackend(open_module("short_range")[0], optimize=False)
    assert plain.runner is plain.module


def test_without_onednn_load_runs_the_module(monkeypatch, astronaut) -> None:
    monkeypatch.setattr(runtime, "available", lambda: False)
    detector = blazeport.load("short_range", backend="torch")
    assert detector.backend.runner is detector.backend.module
    monkeypatch.undo()
    assert [d.score for d in detector.detect(astronaut)] == pytest.approx(
        [d.score for d in blazeport.load("short_range", backend="torch").detect(astronaut)], abs=1e-5)


def test_a_plan_that_disagrees_with_the_module_is_not_used(monkeypatch, astronaut) -> None:
    real = runtime._conv_step

    def off_by_one(op, layer, slot, shapes):
        step = real(op, layer, slot, shapes)
        if op.node.output != "stem":
            return step

        def run(env):
            step(env)
            env[slot[op.output]] = env[slot[op.output]] + 1.0

        return run

    monkeypatch.setattr(runtime, "_conv_step", off_by_one)
    with pytest.warns(RuntimeWarning, match="fast PyTorch runtime is not used"):
        backend = TorchBackend(open_module("short_range")[0])
    assert backend.runner.plans[(128, 128)] is None  # the module runs instead
    detector = blazeport.Detector(spec_named("short_range"), backend)
    assert len(detector.detect(astronaut)) == 1


def test_relu6_convs_run_on_the_fused_plan(photos, keep_threads) -> None:
    """MediaPipe's pose detector fuses RELU6 into its convs: oneDNN's hardtanh post-op (and a clamp
    after a GEMM) runs them, within the gate of the module and of LiteRT, without the fallback warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the "not used ... fused activation 'relu6'" fallback would raise
        fast, plain = _fast("pose_detection", 1)
    spec = spec_named("pose_detection")
    assert verify(fast, plain, spec, photos)["passes_gate"]
    assert verify(fast, TFLiteBackend(WEIGHTS_DIR / spec.tflite, 1), spec, photos)["passes_gate"]
