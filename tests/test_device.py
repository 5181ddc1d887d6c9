"""``--device``: torch and onnx take a GPU, the other runtimes refuse one clearly; GPU runs skip without one."""

from __future__ import annotations

import numpy as np
import pytest

import blazeport
from blazeport.cli import main
from blazeport.errors import BlazeportError
from blazeport.modelfiles.runtimes import RUNTIMES, check_device


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cpu:0", "tpu"])
def test_unknown_devices_are_refused(device: str) -> None:
    with pytest.raises(BlazeportError, match="unknown device"):
        check_device(RUNTIMES["torch"], device)


@pytest.mark.parametrize("runtime", ["tflite", "executorch"])
def test_cpu_only_runtimes_refuse_cuda(runtime: str) -> None:
    with pytest.raises(BlazeportError, match=f"the {runtime} backend runs on the CPU only.*torch, onnx"):
        check_device(RUNTIMES[runtime], "cuda")
    assert check_device(RUNTIMES[runtime], "cpu") == "cpu"


def test_torch_without_a_gpu_says_so(capsys) -> None:
    if _has_cuda():
        pytest.skip("a GPU is present: the refusal is for machines without one")
    with pytest.raises(BlazeportError, match="sees no CUDA GPU"):
        blazeport.load("short_range", device="cuda")
    assert main(["detect", "--device", "cuda:0", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda:0" in err[0] and "--device cpu" in err[0]


def test_explicit_cpu_is_the_default(astronaut: np.ndarray) -> None:
    a = blazeport.load("short_range", device="cpu").detect(astronaut)
    b = blazeport.load("short_range").detect(astronaut)
    assert [d.to_dict() for d in a] == [d.to_dict() for d in b] and len(a) == 1


@pytest.mark.skipif(not _has_cuda(), reason="no CUDA GPU here (CI never has one)")
def test_torch_on_cuda_matches_the_cpu(boxed_photos) -> None:
    from blazeport.modelfiles.verify import ABS_TOL, match_detections
    from blazeport.pipeline.preprocess import read_image

    images = [read_image(p) for p in boxed_photos[:6]]
    cpu = blazeport.load("short_range").detect_batch(images)
    gpu = blazeport.load("short_range", device="cuda").detect_batch(images)
    m = match_detections(gpu, cpu)
    assert m["same_count"] and m["faces"] >= 5
    assert max(m["max_score_diff"], m["max_coordinate_diff"]) <= ABS_TOL


def test_onnx_without_the_cuda_provider_says_so(tmp_path) -> None:
    import onnxruntime as ort

    from blazeport.modelfiles.backends import OnnxBackend

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed: the refusal is for the CPU build")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not read: the provider is checked first")
    with pytest.raises(BlazeportError, match=r"no CUDA provider.*onnxruntime-gpu"):
        OnnxBackend(model, device="cuda")
