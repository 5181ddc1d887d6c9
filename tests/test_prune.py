"""Network slimming: the sparsity term during distillation, ``blazeport prune`` and fine-tuning a
pruned student (``--init``), on the real ResNet and MobileNet students."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import blazeport
from blazeport.cli import main as cli_main
from blazeport.distill.config import init_weights
from blazeport.distill.trainer import TrainConfig, train
from blazeport.errors import BlazeportError
from blazeport.modelfiles.weights import load_safetensors, save_safetensors
from blazeport.models import build_student
from blazeport.pruning.prune import conv_widths, prune
from blazeport.pruning.slimming import batchnorms, gamma_summary, sparsity_step
from blazeport.pruning.workflow import prune_file
from blazeport.specs import spec_named, student_spec

SPEC = spec_named("short_range")
SIZE = SPEC.input_size
SHIPPED = Path(__file__).resolve().parent.parent / "weights" / "short_range_resnet.safetensors"  # a trained student


def _student(name: str, seed: int = 0) -> nn.Module:
    """A student whose BatchNorm scales are spread out (as after training), so the ranking means something."""
    torch.manual_seed(seed)
    module = build_student(name, SPEC).eval()
    with torch.no_grad():
        for bn in batchnorms(module):
            bn.weight.copy_(torch.rand(bn.num_features) + 0.01)
            bn.running_mean.normal_(0, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    return module


def _x() -> torch.Tensor:
    return torch.linspace(-1, 1, 3 * SIZE * SIZE).reshape(1, 3, SIZE, SIZE)


def _save(module: nn.Module, path: Path, name: str = "resnet") -> Path:
    save_safetensors(module, student_spec(SPEC, name, module.family), path, extra={"teacher": SPEC.name})
    return path


def test_sparsity_step_adds_the_l1_subgradient_to_batchnorm_scales_only() -> None:
    module = _student("resnet_slim")
    for p in module.parameters():
        p.grad = torch.zeros_like(p)
    with torch.no_grad():
        module.stem[1].weight[0] = -0.5
    sparsity_step(module, 1e-2)
    assert module.stem[1].weight.grad[0] == pytest.approx(-1e-2)
    assert torch.all(torch.cat([bn.weight.grad for bn in batchnorms(module)]).abs() == 1e-2)
    assert all(torch.count_nonzero(p.grad) == 0 for n, p in module.named_parameters() if not n.endswith(("1.weight",)))
    _, stats = gamma_summary(module)
    assert set(stats) == {"under_1e-2", "under_1e-3", "median"}


def test_prune_removes_the_smallest_gammas_and_keeps_the_network_consistent() -> None:
    module = _student("resnet")
    with torch.no_grad():
        module.stem[1].weight.copy_(torch.arange(1, 17, dtype=torch.float32) / 16)  # channels 8..15 matter most
    pruned, report = prune(module, SIZE, ratio=0.5, round_to=8)
    widths = {x["layer"]: x["after"] for x in report["layers"]}
    assert report["params_after"] < report["params_before"] and report["macs_after"] < report["macs_before"]
    assert all(w % 8 == 0 for n, w in widths.items() if not n.startswith("head."))
    assert widths["head.cls.0"] == 2 and widths["head.reg.1"] == 6 * 16  # the head's outputs are the contract
    assert 0.3 < report["ratio_achieved"] <= 0.5  # rounding up keeps more than the threshold alone
    reg, cls = pruned(_x())
    assert reg.shape == (1, SPEC.num_anchors, 16) and cls.shape == (1, SPEC.num_anchors, 1)
    if widths["stem.0"] == 8:  # the stem kept exactly its 8 largest-gamma channels, in order
        assert torch.equal(pruned.stem[0].weight, module.stem[0].weight[8:])
    assert module.stem[0].out_channels == 16  # the input module is untouched


@pytest.mark.parametrize("name", ["resnet", "mobilenet"])
def test_removing_channels_that_carry_nothing_leaves_the_outputs_unchanged(name: str) -> None:
    """Network slimming's premise, end to end: channels whose BatchNorm gamma and beta are zero in
    every coupled layer output zeros, so pruning exactly them must not change the detector's outputs.
    (A wrong dependency, e.g. a shortcut pruned apart from its stage, would change them.)"""
    import torch_pruning as tp

    from blazeport.pruning.prune import _graph, _groups

    module = _student(name)
    graph, zeroed = _graph(module, SIZE), 0
    for _, root, _ in list(_groups(module, graph)):
        if root.out_channels < 16:
            continue
        group = graph.get_pruning_group(root, tp.prune_conv_out_channels, idxs=list(range(root.out_channels - 8,
                                                                                           root.out_channels)))
        with torch.no_grad():
            for dep, idxs in group:
                if isinstance(dep.target.module, nn.BatchNorm2d) and dep.handler == tp.prune_batchnorm_out_channels:
                    dep.target.module.weight[idxs] = 0.0
                    dep.target.module.bias[idxs] = 0.0
        zeroed += 8
    _, report = prune(module, SIZE, ratio=0.01)  # counts only
    pruned, report = prune(module, SIZE, ratio=zeroed / report["channels_prunable"])
    assert report["channels_removed"] == zeroed > 0
    with torch.no_grad():
        for a, b in zip(pruned(_x()), module(_x()), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_mobilenet_keeps_depthwise_groups_equal_to_channels_and_reloads(tmp_path: Path) -> None:
    module = _student("mobilenet")
    pruned, report = prune(module, SIZE, ratio=0.4)
    dw = [m for m in pruned.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert dw and all(m.groups == m.in_channels == m.out_channels for m in dw)
    assert any(x["after"] < x["before"] for x in report["layers"] if "depthwise" in x["layer"])
    path = _save(pruned, tmp_path / "p.safetensors", "mobilenet")
    reloaded, _ = load_safetensors(path)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(reloaded(_x()), pruned(_x()), strict=True))


def test_prune_file_writes_a_student_that_reloads_exports_and_fine_tunes(tmp_path: Path, astronaut) -> None:
    src = shutil.copy(SHIPPED, tmp_path / "student.safetensors")
    out = tmp_path / "pruned.safetensors"
    light = prune_file(str(src), str(tmp_path / "light.safetensors"), ratio=0.1, images=[astronaut])
    r = prune_file(str(src), str(out), ratio=0.5, images=[astronaut])
    assert r["spec"] == "short_range_resnet_pruned50" and r["macs_after"] < light["macs_after"] < r["macs_before"]
    # a trained student's faces survive light pruning better than heavy pruning (before any fine-tuning)
    assert light["agreement_with_unpruned"]["AP50"] > r["agreement_with_unpruned"]["AP50"]
    det = blazeport.load(out)  # the pipeline runs it like any student
    assert det.spec.teacher == "short_range"
    det.detect(astronaut)
    fresh = build_student("resnet", SPEC)  # what `distill --init OUT --student resnet` starts from
    init_weights(fresh, str(out), SPEC)
    assert conv_widths(fresh) == conv_widths(det.backend.module) != conv_widths(build_student("resnet", SPEC))
    assert fresh.feature_channels == det.backend.module.feature_channels  # read from the head, not the config
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), det.backend.module.state_dict().values(),
                                                 strict=True))
    from blazeport.export import export

    report = export(out, "onnx", tmp_path / "pruned.onnx", images=[astronaut])
    assert report["ok"] and report["passes_gate"]


def test_macs_budget_is_met_with_the_least_pruning() -> None:
    module = _student("resnet")
    _, report = prune(module, SIZE, macs=12e6)
    assert report["macs_after"] <= 12e6
    _, less = prune(module, SIZE, ratio=report["ratio_threshold"] - 0.01)
    assert less["macs_after"] > 12e6  # the least pruning that meets the budget: a little less does not


def test_bad_prune_requests_say_why_and_write_nothing(tmp_path: Path) -> None:
    src = _save(_student("resnet_slim"), tmp_path / "student.safetensors")
    out = tmp_path / "pruned.safetensors"
    out.write_bytes(b"an earlier result")
    with pytest.raises(BlazeportError, match=r"would remove whole layers: .* at most 0\.\d+"):
        prune_file(str(src), str(out), ratio=0.95, overwrite=True)
    with pytest.raises(BlazeportError, match="--ratio must be between 0 and 1"):
        prune_file(str(src), str(out), ratio=1.0, overwrite=True)
    with pytest.raises(BlazeportError, match="below what this model can reach"):
        prune_file(str(src), str(out), macs=1e3, overwrite=True)
    with pytest.raises(BlazeportError, match="destroy the input"):
        prune_file(str(src), str(src), ratio=0.3, overwrite=True)
    with pytest.raises(BlazeportError, match="no BatchNorm"):
        prune_file("short_range", str(out), ratio=0.3, overwrite=True)  # Google's converted original
    with pytest.raises(BlazeportError, match="a file of that name exists"):
        prune_file(str(src), str(out), ratio=0.3)  # an earlier result is never replaced unasked
    assert out.read_bytes() == b"an earlier result"
    assert cli_main(["prune", str(src), "-o", str(out)]) == 2  # neither --ratio nor --macs


@pytest.mark.parametrize(("flag", "value"), [("--macs", "nan"), ("--macs", "inf"), ("--macs", "-5M"), ("--macs", "0"),
                                            ("--ratio", "nan"), ("--ratio", "inf"), ("--ratio", "0"), ("--ratio", "1.5")])
def test_non_finite_or_out_of_range_amounts_are_usage_errors(flag: str, value: str, tmp_path: Path, capsys) -> None:
    """``--macs nan`` compared false with every MACs figure and pruned to the maximum, exit 0."""
    out = tmp_path / "p.safetensors"
    with pytest.raises(SystemExit) as info:
        cli_main(["prune", str(SHIPPED), f"{flag}={value}", "-o", str(out)])  # = lets -5M through
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"argument {flag}: " in err and repr(value) in err and not out.exists()


def test_the_library_refuses_a_nan_macs_budget() -> None:
    with pytest.raises(BlazeportError, match="--macs must be a positive number"):
        prune(_student("resnet_slim"), SIZE, macs=float("nan"))


def test_a_ratio_that_removes_nothing_is_refused_with_the_smallest_that_does(tmp_path: Path) -> None:
    """``--ratio 1e-9`` wrote ``..._pruned0``, a copy of the source, saying "0 of N removed"."""
    module = _student("resnet_slim")
    src, out = _save(module, tmp_path / "student.safetensors"), tmp_path / "pruned.safetensors"
    with pytest.raises(BlazeportError, match=r"--ratio 1e-09 removes none of the \d+ prunable channels") as info:
        prune_file(str(src), str(out), ratio=1e-9, images=[])
    assert not out.exists() and "Nothing written" in str(info.value)
    found = re.search(r"the smallest --ratio that removes any is (0\.\d{3})", str(info.value))
    assert found
    least = float(found.group(1))
    assert prune(module, SIZE, ratio=least)[1]["channels_removed"] > 0  # the suggestion works...
    if least > 0.001:  # ...and is the smallest such ratio to 3 decimals
        assert prune(module, SIZE, ratio=least - 0.001)[1]["channels_removed"] == 0


def test_prune_says_ap_cannot_be_measured_when_the_unpruned_student_finds_no_face(tmp_path: Path, capsys,
                                                                                   astronaut) -> None:
    """An unpruned student that finds no faces leaves no references: the report said ``AP50 nan`` (and
    ``NaN``, which is not JSON, with --json)."""
    module = _student("resnet_slim")
    with torch.no_grad():
        for conv in module.head.cls:
            conv.bias.fill_(-50.0)  # every score ~0: no detection on any photo
    src = _save(module, tmp_path / "student.safetensors")
    r = prune_file(str(src), str(tmp_path / "a.safetensors"), ratio=0.3, images=[astronaut])
    assert r["agreement_with_unpruned"] == {"AP50": None, "AP": None, "references": 0}
    photo = str(tmp_path / "astronaut.png")
    import cv2

    cv2.imwrite(photo, astronaut[:, :, ::-1])
    assert cli_main(["prune", str(src), "--ratio", "0.3", "-o", str(tmp_path / "b.safetensors"), "--json",
                     "--images", photo]) == 0
    text = capsys.readouterr().out
    assert "NaN" not in text and json.loads(text)["agreement_with_unpruned"]["AP50"] is None
    assert cli_main(["prune", str(src), "--ratio", "0.3", "-o", str(tmp_path / "c.safetensors"),
                     "--images", photo]) == 0
    text = capsys.readouterr().out
    assert "nan" not in text and "cannot be measured, it finds no faces on these 1 photo(s)" in text


def test_prune_cli_prints_params_macs_and_per_layer_json(tmp_path: Path, capsys, shared_data: Path) -> None:
    src = SHIPPED
    photo = str(shared_data / "faces-boxed" / "images")
    assert cli_main(["prune", str(src), "--ratio", "0.3", "-o", str(tmp_path / "p.safetensors"), "--json",
                     "--images", photo]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["params_after"] < r["params_before"] and {"layer", "before", "after"} <= set(r["layers"][0])
    assert cli_main(["prune", str(src), "--ratio", "0.2", "-o", str(tmp_path / "q.safetensors"), "--images", photo]) == 0
    text = capsys.readouterr().out
    assert "MACs" in text and "params" in text and "next: blazeport distill --init" in text


def test_sparsity_shrinks_batchnorm_scales_during_distillation(tmp_path: Path, shared_data: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((shared_data / "unlabeled" / "caltech1999_half").glob("*.jpg"))[:12]:
        shutil.copy(p, photos / p.name)

    def median_gamma(sparsity: float) -> float:
        out = tmp_path / f"run{sparsity}"
        train(TrainConfig(images=[str(photos)], out=str(out), student="resnet_slim", epochs=2, batch_size=4, lr=2e-2,
                          val_fraction=0.25, test_fraction=0.0, progress=False, threads=1, seed=1, sparsity=sparsity))
        assert any((out / "tensorboard").iterdir())
        module, _ = load_safetensors(out / "student.safetensors")
        return gamma_summary(module)[1]["median"]

    # AdamW moves each gamma by about lr per step whatever the gradient's size: 4 steps at 2e-2 can pull
    # the median down by up to 0.08 when the L1 term dominates
    assert median_gamma(0.5) < median_gamma(0.0) - 0.015
    with pytest.raises(BlazeportError, match="--sparsity"):
        TrainConfig(images=[str(photos)], sparsity=-1.0).validate()
