"""PRELU (MediaPipe's palm detectors): the translator, the GraphNet op and the fast runtime.

TFLite's PRELU is ``x >= 0 ? x : alpha[c] * x`` with a constant slope per channel stored as
``(1, 1, C)``. Checked here against hand-made values, and against LiteRT's own PRELU kernels on
the real palm detection file: every PRELU node of the translated graph, fed the tensor LiteRT fed
that op, gives what LiteRT wrote.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from blazeport.convert import extract_graph, load_tflite
from blazeport.models.graph import GraphConfig, GraphNet, Node, param_name, run_node
from blazeport.specs import WEIGHTS_DIR
from blazeport.tflite import read_tflite


def _palm_file() -> Path:
    """palm_detection_lite.tflite: bundled in weights/, else from an installed MediaPipe wheel."""
    bundled = WEIGHTS_DIR / "palm_detection_lite.tflite"
    if bundled.is_file():
        return bundled
    mp = pytest.importorskip("mediapipe", reason="no palm detection file: not in weights/ and mediapipe is absent")
    return Path(mp.__file__).parent / "modules" / "palm_detection" / "palm_detection_lite.tflite"


def test_prelu_node_is_tflite_prelu() -> None:
    alpha = torch.tensor([0.0, 0.25, -1.5])
    layer = torch.nn.PReLU(3)
    with torch.no_grad():
        layer.weight.copy_(alpha)
    x = torch.tensor([-2.0, -0.0, 0.0, 3.0, -1e-30, 7.5]).repeat(3, 1).reshape(1, 3, 2, 3)
    with torch.no_grad():
        got = run_node(Node("prelu", ("x",), "y", {"channels": 3}), [x], layer)
    want = np.where(x.numpy() >= 0, x.numpy(), alpha.numpy()[None, :, None, None] * x.numpy())
    np.testing.assert_array_equal(got.numpy(), want)
    with pytest.raises(ValueError, match="needs its nn\\.PReLU"):
        run_node(Node("prelu", ("x",), "y", {"channels": 3}), [x])


def test_prelu_graph_round_trips_through_json() -> None:
    nodes = (Node("prelu", ("input",), "p", {"channels": 3}), Node("flatten", ("p",), "reg", {"last_dim": 3}),
             Node("flatten", ("p",), "cls", {"last_dim": 1}))
    cfg = GraphConfig(4, "input", ("reg", "cls"), nodes)
    net = GraphNet(GraphConfig.from_json(cfg.to_json()))
    assert set(net.state_dict()) == {f"layers.{param_name(nodes[0])}.weight"}


def test_prelu_translation_matches_litert_on_the_real_palm_file() -> None:
    interp = pytest.importorskip("ai_edge_litert.interpreter")
    path = _palm_file()
    model = read_tflite(path)
    mapping = extract_graph(model)
    prelus = [op for op in model.ops if op.type == "PRELU"]
    nodes = [n for n in mapping.config.nodes if n.op == "prelu"]
    assert len(prelus) == len(nodes) == 26
    # the slopes are the file's (1, 1, C) constants, one per channel
    first = f"layers.{param_name(nodes[0])}.weight"
    np.testing.assert_array_equal(mapping.params[first], model.tensor(prelus[0].inputs[1]).data.reshape(-1))
    assert mapping.sources[first] == model.tensor(prelus[0].inputs[1]).name

    it = interp.Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                            experimental_op_resolver_type=interp.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    x = np.random.default_rng(0).uniform(0, 1, (1, 192, 192, 3)).astype(np.float32)
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    module, _ = load_tflite(path, family="graph")
    for op, node in zip(prelus, nodes, strict=True):
        inp = torch.from_numpy(it.get_tensor(op.inputs[0])).permute(0, 3, 1, 2)
        want = it.get_tensor(op.outputs[0]).transpose(0, 3, 1, 2)
        with torch.no_grad():
            got = run_node(node, [inp], module.layers[param_name(node)]).numpy()
        assert (inp < 0).any() and (inp > 0).any(), "the test input should reach both sides of the PReLU"
        np.testing.assert_array_equal(got, want, err_msg=node.output)


def test_fast_runtime_runs_prelu_graphs() -> None:
    """The fused plan keeps prelu nodes as reference nodes with their slopes, and agrees with the module."""
    from blazeport.models import fused as runtime

    if not runtime.available():
        pytest.skip("this torch has no oneDNN: no plan to test")
    module, _ = load_tflite(_palm_file(), family="graph")
    graph = runtime.graph_of(module)
    assert graph is not None and len(graph.params) == 26
    plan = runtime.Plan(graph, (192, 192))
    x = torch.rand(1, 3, 192, 192, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("error")
        got = plan(x.contiguous(memory_format=torch.channels_last))
        want = module(x)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=2e-3)
