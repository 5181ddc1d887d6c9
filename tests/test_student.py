"""Students from any backbone: registered, the user's own module, timm; every teacher; reload from the file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from blazeport.errors import BlazeportError
from blazeport.modelfiles.weights import load_safetensors, save_safetensors
from blazeport.models import REGISTERED, Student, build_student
from blazeport.models.backbones import parse_student
from blazeport.pipeline.anchors import head_layout
from blazeport.specs import spec_named, student_spec

TEACHERS = ("short_range", "back", "full_range_sparse")

USER_CODE = '''
import math
import torch
from torch import nn


class TinyNet(nn.Module):
    """A user's backbone: maps at strides 4, 8, 16, 32."""

    def __init__(self, width: int = 16):
        super().__init__()
        chans = [width, width * 2, width * 3, width * 4]
        layers, prev = [], 3
        for i, c in enumerate(chans):
            layers.append(nn.Sequential(nn.Conv2d(prev, c, 3, 4 if i == 0 else 2, 1), nn.BatchNorm2d(c), nn.ReLU()))
            prev = c
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        maps = []
        for layer in self.layers:
            x = layer(x)
            maps.append(x)
        return maps


def tiny(width: int = 16) -> nn.Module:
    return TinyNet(width)


def untyped(width=16):
    return TinyNet(width)


def raises() -> nn.Module:
    raise ValueError("no weights here")


def not_a_module() -> nn.Module:
    return 42


def shallow() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, 8, 1))  # one tensor, stride 8: not a list of maps


class OnlyStride4(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 4, 1)

    def forward(self, x):
        return [self.conv(x)]


class Detector(nn.Module):
    """Meets the head contract itself, for a teacher of 896 anchors."""

    def __init__(self, anchors: int = 896):
        super().__init__()
        self.anchors = anchors
        self.conv = nn.Conv2d(3, 17, 1)

    def forward(self, x):
        y = self.conv(x).mean((2, 3))[:, None, :].expand(-1, self.anchors, -1)
        return y[..., :16], y[..., 16:]


class NaNNet(TinyNet):
    def forward(self, x):
        return [m * math.nan for m in super().forward(x)]
'''


@pytest.fixture
def user_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module of user backbones in the current directory, importable as ``userbackbones``."""
    (tmp_path / "userbackbones.py").write_text(textwrap.dedent(USER_CODE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    import sys

    sys.modules.pop("userbackbones", None)


def test_parse_student_reads_names_and_options() -> None:
    assert parse_student("mobilenet") == ("registered", "mobilenet", {})
    assert parse_student("timm:mobilenetv3_small_100,drop_rate=0.1") == ("timm", "mobilenetv3_small_100", {"drop_rate": 0.1})
    kind, name, kw = parse_student("pkg.mod:factory,width=24,act=relu,se=true")
    assert (kind, name, kw) == ("import", "pkg.mod:factory", {"width": 24, "act": "relu", "se": True})
    with pytest.raises(BlazeportError, match="unknown student 'mobilnet'"):
        parse_student("mobilnet")
    with pytest.raises(BlazeportError, match="key=value"):
        parse_student("pkg.mod:factory,24")
    with pytest.raises(BlazeportError, match="take no options"):
        parse_student("resnet,width=3")


@pytest.mark.parametrize("teacher", TEACHERS)
@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_registered_students_fit_every_teacher(name: str, teacher: str) -> None:
    spec = spec_named(teacher)
    student = build_student(name, spec).eval()
    x = torch.rand(2, 3, spec.input_size, spec.input_size) * 2 - 1
    reg, cls = student(x)
    assert reg.shape == (2, spec.num_anchors, 16) and cls.shape == (2, spec.num_anchors, 1)
    feats = student.features(x)
    assert [spec.input_size // f.shape[-1] for f in feats] == [s for s, _ in head_layout(spec.anchors)]
    assert student.feature_channels == tuple(f.shape[1] for f in feats)


def test_a_user_backbone_gets_the_teachers_head_and_reloads_from_its_file(user_code: Path) -> None:
    spec = spec_named("full_range_sparse")  # one head level at stride 4: the neck brings 8, 16, 32 down to it
    student = build_student("userbackbones:tiny,width=8", spec).eval()
    assert isinstance(student, Student) and student.config.tap_strides == (4, 8, 16, 32)
    x = torch.rand(1, 3, 192, 192) * 2 - 1
    reg, cls = student(x)
    assert reg.shape == (1, 2304, 16) and cls.shape == (1, 2304, 1)
    out = user_code / "s.safetensors"
    save_safetensors(student, student_spec(spec, "userbackbones:tiny,width=8", student.family, name="fr_tiny"), out)
    with pytest.raises(BlazeportError, match=r"import the module 'userbackbones'.*--trust-code"):
        load_safetensors(out)  # the file names the user's module: imported only on the user's word
    again, again_spec = load_safetensors(out, trust_code=True)
    assert again_spec.name == "fr_tiny" and again.config.backbone.kwargs == {"width": 8}
    for a, b in zip(student(x), again(x), strict=True):
        torch.testing.assert_close(a, b)
    # the import path no longer resolves: one message naming it
    (user_code / "userbackbones.py").rename(user_code / "moved.py")
    import sys

    sys.modules.pop("userbackbones", None)
    with pytest.raises(BlazeportError, match=r"s\.safetensors: userbackbones:tiny: cannot import userbackbones"):
        load_safetensors(out, trust_code=True)


def test_a_module_meeting_the_head_contract_is_used_as_is(user_code: Path) -> None:
    spec = spec_named("short_range")
    student = build_student("userbackbones:Detector", spec)
    assert student.config.as_is and student(torch.zeros(1, 3, 128, 128))[0].shape == (1, 896, 16)
    with pytest.raises(BlazeportError, match="teacher short_range has 896 anchors"):
        build_student("userbackbones:Detector,anchors=900", spec)


@pytest.mark.parametrize(("arg", "message"), [
    ("userbackbones:raises", r"calling raises\(\) raised ValueError: no weights here"),
    ("userbackbones:not_a_module", "returned a int, not an nn.Module"),
    ("userbackbones:shallow", r"returned one tensor \(1, 8, 16, 16\); a backbone returns a list"),
    ("userbackbones:OnlyStride4", "needs feature maps at stride 8, 16 .* the backbone has 4 .missing 8, 16"),
    ("userbackbones:NaNNet", "NaN or infinite"),
    ("userbackbones:missing", "userbackbones has no 'missing'"),
    ("userbackbones:tiny,depth=3", r"calling tiny\(depth=3\) raised TypeError"),
    ("nosuchpackage.mod:net", "cannot import nosuchpackage.mod .no module 'nosuchpackage'.; run from the folder"),
    ("os:system", "os is a standard-library module, not a backbone"),
    ("subprocess:run,args=touch", "standard-library module"),
    ("torch.nn:Conv2d", "Conv2d is defined in torch.nn.modules.conv"),
])
def test_a_bad_backbone_is_one_message(user_code: Path, arg: str, message: str) -> None:
    with pytest.raises(BlazeportError, match=message):
        build_student(arg, spec_named("short_range"))


def test_an_unannotated_factory_named_on_the_command_line_builds(user_code: Path) -> None:
    """The user typed the name, so it is trusted: the check is on what the factory returns."""
    student = build_student("userbackbones:untyped,width=8", spec_named("short_range"))
    assert isinstance(student, Student) and student(torch.zeros(1, 3, 128, 128))[0].shape == (1, 896, 16)


def test_timm_gives_one_message_where_it_cannot_import() -> None:
    try:
        import timm  # noqa: F401
    except Exception as exc:
        with pytest.raises(BlazeportError, match="timm cannot be imported here"):
            build_student("timm:mobilenetv3_small_100", spec_named("short_range"))
        pytest.skip(f"timm does not import with this torch ({type(exc).__name__}): the timm student cannot be built here")
    spec = spec_named("short_range")
    student = build_student("timm:mobilenetv3_small_100", spec)
    assert student(torch.zeros(1, 3, 128, 128))[0].shape == (1, 896, 16)
    with pytest.raises(BlazeportError, match="timm has no model of that name"):
        build_student("timm:no_such_net_v9", spec)


def test_the_python_api_takes_a_module_instance(user_code: Path) -> None:
    from userbackbones import TinyNet

    from blazeport.distill.config import TrainConfig

    net = TinyNet()
    cfg = TrainConfig(student=net, images=["x"])
    assert cfg.student == "userbackbones:TinyNet" and cfg._backbone is net
    student = build_student(cfg.student, spec_named("short_range"), cfg._backbone)
    assert student.backbone is net  # trains from the instance's own weights
    with pytest.raises(BlazeportError, match=r"userbackbones:TinyNet\(\): builds other tensors"):
        TrainConfig(student=TinyNet(width=8))

    class Local(torch.nn.Module):
        """Defined inside a function: no import path can rebuild it."""

    with pytest.raises(BlazeportError, match="cannot be imported again: move it into a module"):
        TrainConfig(student=Local())
