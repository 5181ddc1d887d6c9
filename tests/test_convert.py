"""Conversion: the graph walk, weight mapping, verification against LiteRT, safetensors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from blazeport.convert import ConversionError, convert, extract, load_tflite
from blazeport.modelfiles.verify import passes, verify
from blazeport.modelfiles.weights import load_safetensors
from blazeport.models.blazeface import VARIANTS
from blazeport.tflite import read_tflite
from tests.conftest import SHORT_RANGE_TFLITE, WEIGHTS

FILES = {"blazeface_short_range": "face_detection_short_range.tflite", "blazeface_back": "face_detection_back.tflite"}


@pytest.mark.parametrize("arch", sorted(FILES))
def test_graph_walk_recovers_registered_architecture(arch: str) -> None:
    mapping = extract(read_tflite(WEIGHTS / FILES[arch]))
    assert mapping.config == VARIANTS[arch]


def test_every_parameter_comes_from_the_tensor_the_graph_feeds_it() -> None:
    mapping = extract(read_tflite(SHORT_RANGE_TFLITE))
    src = mapping.sources
    assert src["stem.weight"] == "conv2d/Kernel_dequantize"
    assert src["blocks.0.dw.weight"] == "depthwise_conv2d/Kernel_dequantize"
    assert src["blocks.15.pw.bias"] == "conv2d_16/Bias_dequantize"
    # heads are found from the outputs backwards, in concatenation (= anchor) order
    assert src["head.cls.0.weight"] == "classificator_8/Kernel_dequantize"
    assert src["head.reg.1.weight"] == "regressor_16/Kernel_dequantize"
    assert mapping.params["stem.weight"].shape == (24, 3, 5, 5)  # OHWI -> OIHW
    assert mapping.params["blocks.0.dw.weight"].shape == (24, 1, 3, 3)  # 1HWC -> C1HW
    raw = read_tflite(SHORT_RANGE_TFLITE).by_name("conv2d/Kernel_dequantize").data  # (24, 5, 5, 3)
    np.testing.assert_array_equal(mapping.params["stem.weight"], raw.transpose(0, 3, 1, 2))


def test_convert_short_range_matches_litert(tmp_path, astronaut) -> None:
    from blazeport.pipeline.photos import sample_images

    out = tmp_path / "sr.safetensors"
    report = convert(SHORT_RANGE_TFLITE, out, images=sample_images())
    assert report["ok"], report
    assert report["spec"] == "short_range" and report["images"] == 5
    assert report["params"] == 101_390
    assert max(report["max_abs_diff"].values()) < 1e-3
    assert max(report["decoded_diff"].values()) < 1e-5
    # byte for byte the committed file: conversions are reproducible (same sha256), and the
    # quickstart's `blazeport convert` leaves the checkout unchanged
    assert out.read_bytes() == (WEIGHTS / "short_range.safetensors").read_bytes()
    module, spec = load_safetensors(out)
    assert spec.name == "short_range"
    direct, _ = load_tflite(SHORT_RANGE_TFLITE)
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        for a, b in zip(module(x), direct(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


ALL_SPECS = ["short_range", "back", "full_range", "full_range_sparse"]


@pytest.mark.parametrize("name", ALL_SPECS[1:])
def test_every_other_google_model_converts_and_verifies(name: str, tmp_path) -> None:
    from blazeport.pipeline.photos import sample_images
    from blazeport.specs import spec_named

    out = tmp_path / f"{name}.safetensors"
    report = convert(WEIGHTS / spec_named(name).tflite, out, images=sample_images()[:3])
    assert report["ok"], report
    assert report["spec"] == name
    assert out.read_bytes() == (WEIGHTS / f"{name}.safetensors").read_bytes()
    assert max(report["decoded_diff"].values()) < 1e-5


def test_sparse_file_is_densified_and_lowered_ops_are_kept() -> None:
    model = read_tflite(WEIGHTS / "face_detection_full_range_sparse.tflite")
    assert model.folded["DENSIFY"] == 46
    mapping = load_tflite(model.path)[1]
    assert mapping.family == "graph"
    ops = [n.op for n in mapping.config.nodes]
    assert ops.count("depth_to_space") == 2 and ops.count("resize_bilinear") == 3 and "maxpool" not in ops


@pytest.mark.parametrize("name", ["short_range", "back"])
def test_graphnet_equals_blazeface_module(name: str) -> None:
    from blazeport.specs import spec_named

    path = WEIGHTS / spec_named(name).tflite
    a, _ = load_tflite(path, "blazeface")
    b, _ = load_tflite(path, "graph")
    x = torch.rand(1, 3, a.config.input_size, a.config.input_size) * 2 - 1
    with torch.no_grad():
        for p, q in zip(a(x), b(x), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_depth_to_space_uses_tensorflow_channel_order() -> None:
    from blazeport.models.graph import GraphConfig, GraphNet, Node

    bs, c_out, h, w = 2, 3, 2, 2
    nhwc = np.arange(h * w * bs * bs * c_out, dtype=np.float32).reshape(1, h, w, bs * bs * c_out)
    # TF DepthToSpace (DCR): out[h*bs+i, w*bs+j, c] = in[h, w, (i*bs + j)*C + c]
    expected = nhwc.reshape(1, h, w, bs, bs, c_out).transpose(0, 1, 3, 2, 4, 5).reshape(1, h * bs, w * bs, c_out)
    cfg = GraphConfig(h, "input", ("d2s", "d2s"), (Node("depth_to_space", ("input",), "d2s", {"block_size": bs}),))
    out = GraphNet(cfg)(torch.from_numpy(nhwc).permute(0, 3, 1, 2))[0]
    np.testing.assert_array_equal(out.permute(0, 2, 3, 1).numpy(), expected)


@pytest.mark.parametrize("name", ALL_SPECS)
def test_committed_safetensors_equal_a_fresh_conversion(name: str) -> None:
    from blazeport.specs import spec_named

    module, spec = load_safetensors(WEIGHTS / f"{name}.safetensors")
    fresh, _ = load_tflite(WEIGHTS / spec_named(name).tflite)
    assert spec == spec_named(name)
    for (k, a), (k2, b) in zip(module.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert k == k2
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_gate_rejects_a_wrong_weight() -> None:
    """A single perturbed bias must fail verification: the gate is not too loose."""
    from blazeport.modelfiles.backends import TFLiteBackend, TorchBackend
    from blazeport.pipeline.photos import sample_images
    from blazeport.specs import spec_named

    spec = spec_named("short_range")
    module, _ = load_tflite(SHORT_RANGE_TFLITE)
    with torch.no_grad():
        module.blocks[3].pw.bias[0] += 0.05
    check = verify(TorchBackend(module), TFLiteBackend(SHORT_RANGE_TFLITE), spec, sample_images(("astronaut",)))
    assert not passes(check) and not check["passes_gate"]


def test_unsupported_op_names_op_file_and_known_specs(tmp_path, capsys) -> None:
    from blazeport.cli import main
    from tests.tiny_tflite import write_single_op_model

    path = write_single_op_model(tmp_path / "tanh.tflite", "TANH")
    with pytest.raises(ConversionError, match="TANH") as err:
        load_tflite(path)
    assert str(path) in str(err.value) and "short_range" in str(err.value)
    assert main(["convert", str(path)]) == 2
    assert "TANH" in capsys.readouterr().err


def test_blazeface_walk_rejects_a_pyramid_network() -> None:
    path = WEIGHTS / "face_detection_full_range.tflite"
    with pytest.raises(ConversionError, match="RESIZE_BILINEAR") as err:
        extract(read_tflite(path))
    assert str(path) in str(err.value)


def test_other_architecture_gets_clear_error() -> None:
    model = read_tflite(SHORT_RANGE_TFLITE)
    # cut the heads off: the outputs no longer come from 1x1 convs on block outputs
    model.ops = [op for op in model.ops if op.type != "CONCATENATION"]
    with pytest.raises(ConversionError, match="known specs") as err:
        extract(model)
    assert str(SHORT_RANGE_TFLITE) in str(err.value)


def test_shape_mismatch_is_reported(monkeypatch) -> None:
    import blazeport.convert as conv

    real = conv.EXTRACTORS["blazeface"]

    def widened(model):
        m = real(model)
        m.config = dataclasses.replace(m.config, stem_channels=m.config.stem_channels + 8)
        return m

    monkeypatch.setitem(conv.EXTRACTORS, "blazeface", widened)
    with pytest.raises(ConversionError, match="shape"):
        conv.load_tflite(SHORT_RANGE_TFLITE)
