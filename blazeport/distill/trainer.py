"""The distillation trainer: teacher check, training loop, validation, checkpoints, logs.

One function, :func:`train`, runs a whole job from a :class:`TrainConfig`; ``blazeport distill``
is a thin wrapper. The same code runs single-process or under ``torchrun`` with
DistributedDataParallel (gloo on CPU, NCCL on GPU), with mixed precision on GPU.

What makes a run trustworthy, in order:

1. Every argument is checked (:meth:`TrainConfig.validate`) before anything is computed or
   written, and the teacher, the images and a checkpoint to resume are all loaded and checked
   before the run folder is created: a mistyped argument or an empty image folder leaves nothing
   behind.
2. The teacher is checked against its original ``.tflite`` on a real photo before training; a
   teacher that silently did not load is the most common failure of distillation tools.
3. Checkpoints are written atomically (serialized to bytes, then
   :func:`blazeport.files.write_atomic`: temp file + rename): ``last.pt`` every epoch,
   ``best.pt`` on the best validation AP50, with model, loss-module, optimizer, scheduler, epoch,
   history and RNG states. ``--resume`` continues exactly: sampling is seeded per (seed, epoch,
   index) and RNG states are restored, so a killed and resumed run ends with the same metrics as
   an uninterrupted one.
4. A NaN or infinite loss stops the run with a message naming the step; the last checkpoint is
   left as it was.

**Checkpoint format: ``torch.save``, read only with ``torch.load(weights_only=True)``.** A
checkpoint is a file a user hands us (``--resume`` reads whatever ``last.pt`` is in ``--out``),
and a full unpickle of it would run any code a crafted file names. torch's weights-only
unpickler (torch >= 2.6; the project pins 2.13) builds nothing but tensors and plain containers
of numbers and strings, and refuses any other global *before* calling it, so a pickle with a
malicious ``__reduce__`` is rejected without running. We keep torch's format rather than moving
to safetensors + JSON because a checkpoint must stay ONE file written by ONE rename (two files
cannot be replaced atomically together, and a kill between them would pair a new model with an
old optimizer), and because optimizer and scheduler states are nested dicts that
``weights_only`` reads as they are, where safetensors would need them flattened and rebuilt.
The price is that everything stored must be a tensor or plain data: the Python and numpy RNG
states are stored as lists and tensors (:func:`_rng_state`), not as the tuples and numpy
arrays their ``getstate`` functions return.

Whatever :func:`read_checkpoint` cannot read, or reads but does not recognise as a checkpoint
of this very run (truncated, corrupted, a foreign pickle, zip or safetensors file, a dict
without our keys, another student or teacher) ends in one :class:`BlazeportError` naming the
file and the fix; the file is never modified, moved or deleted.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from blazeport.backends import TFLiteBackend, TorchBackend
from blazeport.data import sample_images
from blazeport.errors import BlazeportError
from blazeport.specs import WEIGHTS_DIR, student_spec
from blazeport.verify import verify
from blazeport.weights import save_safetensors

# Student detections enter AP with a score threshold below the spec's, so the precision-recall
# curve is not cut short (COCO evaluates ranked detections); references use the spec's own.
AP_PREDICTION_THRESHOLD = 0.25


class NonFiniteLoss(BlazeportError):
    """The loss became NaN or infinite; the run stopped and the last checkpoint is intact."""


@dataclass
class TrainConfig:
    teacher: str = "short_range"
    student: str = "resnet"
    images: list[str] = field(default_factory=list)
    out: str = "runs/distill"
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    loss: str = "recipe"
    temperature: float = 2.0
    alpha: float = 0.6
    seed: int = 0
    val_fraction: float = 0.1
    limit: int | None = None  # use at most this many images (tests, smoke runs)
    resume: bool = False
    device: str = "auto"
    amp: bool = True
    threads: int | None = None
    progress: bool = True
    fail_at_step: int | None = None  # testing hook: inject a NaN loss at this global step

    def validate(self, world: int = 1) -> None:
        """Raise a one-line :class:`BlazeportError` for the first argument that cannot work.

        :func:`train` calls this before computing or writing anything, so the CLI and the Python
        API refuse the same things. Several of these used to pass silently (``batch_size=0`` ran
        batch 1, ``epochs=0`` wrote a summary of nothing) or failed minutes later with a traceback.
        """
        from blazeport.distill.loss_terms import LossConfig
        from blazeport.models import STUDENTS
        from blazeport.specs import get_spec

        def whole(name: str, value: Any, least: int, why: str = "") -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise BlazeportError(f"{name} must be a whole number of at least {least} (got {value!r}){why}")

        def real(name: str, value: Any, low: float, high: float, low_open: bool, high_open: bool, why: str = "") -> None:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
            if not ok:
                span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
                raise BlazeportError(f"{name} must be a finite number in {span} (got {value!r}){why}")

        if not self.images:
            raise BlazeportError("--images: give at least one folder or file of photos")
        whole("--epochs", self.epochs, 1)
        whole("--batch-size", self.batch_size, max(1, world),
              f" with {world} processes (each takes batch-size / {world})" if world > 1 else "")
        real("--lr", self.lr, 0.0, math.inf, True, True)
        real("weight_decay", self.weight_decay, 0.0, math.inf, False, True)
        real("warmup_epochs", self.warmup_epochs, 0.0, math.inf, False, True)
        real("--val-fraction", self.val_fraction, 0.0, 1.0, True, True,
             ": the held-out images choose best.pt, so neither the validation nor the training split may be empty")
        real("--temperature", self.temperature, 0.0, math.inf, True, True)
        real("--alpha", self.alpha, 0.0, 1.0, False, False)
        whole("--seed", self.seed, 0)
        if self.seed >= 2**32:
            raise BlazeportError(f"--seed must be below 2**32 (got {self.seed}): numpy's generator takes 32-bit seeds")
        if self.limit is not None:
            whole("--limit", self.limit, 1)
        if self.threads is not None:
            whole("--threads", self.threads, 1)
        if self.student not in STUDENTS:
            raise BlazeportError(f"unknown student {self.student!r}; known: {', '.join(sorted(STUDENTS))}")
        spec = get_spec(self.teacher)  # an unknown name lists the known ones
        if spec.tflite is None:
            raise BlazeportError(f"teacher {spec.name} has no original .tflite to check it against; use a converted "
                                 "original (e.g. --teacher short_range)")
        if STUDENTS[self.student].input_size != spec.input_size:
            raise BlazeportError(f"student {self.student} takes {STUDENTS[self.student].input_size}px, teacher "
                                 f"{spec.name} {spec.input_size}px: choose a teacher of the student's input size")
        LossConfig.parse(self.loss, alpha=self.alpha, temperature=self.temperature)
        if self.device != "auto":
            try:
                device = torch.device(self.device)
            except (RuntimeError, TypeError, ValueError):
                raise BlazeportError(f"--device {self.device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
            if device.type == "cuda" and not torch.cuda.is_available():
                raise BlazeportError(f"--device {self.device}: no CUDA GPU is available here; use --device cpu")
        out = Path(self.out)
        for folder in (out, *out.parents):
            if folder.exists():
                if not folder.is_dir():
                    raise BlazeportError(f"--out {out}: {folder} is a file, not a folder; choose another --out")
                break


CHECKPOINT_MARK = "blazeport distill checkpoint"  # the "format" key of every checkpoint we write
CHECKPOINT_VERSION = 2  # 1: RNG states as tuples / numpy arrays, readable only by a full unpickle
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "rng", "epoch", "history", "best", "config")


def _rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as lists, numbers and tensors, so that a checkpoint
    holding them loads under ``torch.load(weights_only=True)`` (numpy arrays would not)."""
    version, key, gauss = random.getstate()
    name, mt, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {"python": [version, list(key), gauss],
            "numpy": {"name": str(name), "key": torch.from_numpy(mt.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    version, key, gauss = state["python"]
    random.setstate((version, tuple(key), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["key"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Serialize in memory, then write with the package's one atomic writer (temp + rename), so a
    kill mid-write leaves the previous checkpoint whole."""
    import io

    from blazeport.files import write_atomic

    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_MARK, "version": CHECKPOINT_VERSION, **state}, buf)
    write_atomic(path, buf.getvalue())


def _spec_name(teacher: Any) -> str:
    """A teacher's canonical spec name (aliases resolved), or the text itself if unknown."""
    from blazeport.specs import get_spec

    try:
        return get_spec(str(teacher)).name
    except BlazeportError:
        return str(teacher)


def read_checkpoint(path: Path, cfg: TrainConfig, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load ``path`` without running anything in it, and check it is a checkpoint of this run.

    Raises one :class:`BlazeportError` naming the file and the fix for a file that is unreadable,
    truncated, corrupted, foreign, or written for another student or teacher. The file itself is
    only read: a refused checkpoint is left exactly as it was.
    """
    import pickle

    fix = f"it was left as it is: choose another --out, or move or delete {path} to start over"
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise BlazeportError(f"cannot read {path} ({exc.strerror or exc}); {fix}") from None
    except pickle.UnpicklingError as exc:
        # torch's weights-only unpickler refused it before building (let alone running) anything
        if "numpy" in str(exc) and "multiarray" in str(exc):  # version 1 stored numpy's RNG state as an array
            raise BlazeportError(
                f"{path} looks like a checkpoint of an older blazeport, which stored numpy arrays that cannot be read "
                f"without a full unpickle (nothing in it was run); {fix}") from None
        raise BlazeportError(
            f"{path} is not a blazeport checkpoint: it is corrupted or holds Python objects other than tensors and "
            f"plain values, which are refused unread (nothing in it was run); {fix}") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, ValueError... for broken archives
        raise BlazeportError(
            f"{path} is not a readable checkpoint (truncated or not a torch file: {type(exc).__name__}); {fix}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_MARK:
        raise BlazeportError(f"{path} is not a checkpoint written by `blazeport distill`; {fix}")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise BlazeportError(f"{path} is a checkpoint of format version {ckpt.get('version')!r}; this blazeport reads "
                             f"version {CHECKPOINT_VERSION} only; {fix}")
    problem = _checkpoint_problem(ckpt)
    if problem:
        raise BlazeportError(f"{path} is a damaged checkpoint ({problem}); {fix}")
    saved = ckpt["config"]
    if saved.get("student") != cfg.student or _spec_name(saved.get("teacher")) != _spec_name(cfg.teacher):
        raise BlazeportError(
            f"{path} is a checkpoint of --student {saved.get('student')} --teacher {saved.get('teacher')}, not of "
            f"--student {cfg.student} --teacher {cfg.teacher}; resume with those, or {fix}")
    return ckpt


def _checkpoint_problem(ckpt: dict[str, Any]) -> str | None:
    """What is missing or of the wrong type in a loaded checkpoint, or None."""
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        return f"no {', '.join(missing)}"
    expected = {"model": dict, "optimizer": dict, "scheduler": dict, "scaler": dict, "rng": dict, "epoch": int,
                "history": list, "best": (int, float), "config": dict}
    for key, kind in expected.items():
        if not isinstance(ckpt[key], kind) or isinstance(ckpt[key], bool):
            return f"{key} is a {type(ckpt[key]).__name__}"
    if not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        return "model holds values that are not tensors"
    if not {"state", "param_groups"} <= ckpt["optimizer"].keys():
        return "optimizer state incomplete"
    rng = ckpt["rng"]
    if not ({"python", "numpy", "torch"} <= rng.keys() and isinstance(rng["torch"], torch.Tensor)
            and isinstance(rng["numpy"], dict) and isinstance(rng["numpy"].get("key"), torch.Tensor)):
        return "RNG state incomplete"
    if ckpt["epoch"] < 0 or not all(isinstance(h, dict) for h in ckpt["history"]):
        return "epoch or history malformed"
    return None


def check_teacher(spec: Any, module: nn.Module) -> dict[str, Any]:
    """Run the converted teacher and its original ``.tflite`` on a real photo; raise if they differ."""
    if spec.tflite is None:
        raise BlazeportError(f"teacher {spec.name} has no original .tflite to check it against; use a converted original")
    check = verify(TorchBackend(module), TFLiteBackend(WEIGHTS_DIR / spec.tflite), spec, sample_images(("astronaut",)))
    if not check["passes_gate"]:
        raise BlazeportError(
            f"teacher {spec.name} does not match {spec.tflite} on a real photo (max |diff| {check['max_abs_diff']}): its "
            f"weights did not load correctly. Re-run `blazeport convert weights/{spec.tflite}` and try again."
        )
    return check


class _Joint(nn.Module):
    """Student and the loss module's trainable parts under one module, for DDP."""

    def __init__(self, student: nn.Module, loss: nn.Module, memory_format: torch.memory_format):
        super().__init__()
        self.student, self.loss, self.memory_format = student, loss, memory_format

    def forward(self, x: torch.Tensor, t_out: tuple[torch.Tensor, torch.Tensor],
                t_feats: list[torch.Tensor] | None) -> dict[str, torch.Tensor]:
        x = x.contiguous(memory_format=self.memory_format)  # the batch arrives as an NCHW view of NHWC samples
        feats = self.student.features(x) if t_feats is not None else None
        out = self.student.head(feats) if feats is not None else self.student(x)
        return self.loss(out, t_out, feats, t_feats)


def _lr_lambda(total_steps: int, warmup_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


@torch.no_grad()
def validate(student: nn.Module, teacher: nn.Module, batches: list[torch.Tensor], spec: Any,
             anchors: np.ndarray) -> dict[str, float]:
    """MAE of raw regressors and sigmoid scores against the teacher, and AP50/AP of the student's
    detections against the teacher's (pycocotools), on the held-out images."""
    from blazeport.evaluate import coco_ap
    from blazeport.postprocess import postprocess
    from blazeport.preprocess import Letterbox

    student.eval()
    reg_err, score_err, n = 0.0, 0.0, 0
    preds, refs = [], []
    for x in batches:
        s_reg, s_cls = (t.float() for t in student(x))
        t_reg, t_cls = (t.float() for t in teacher(x))
        reg_err += (s_reg - t_reg).abs().mean().item() * len(x)
        clip = spec.score_clip
        s_score, t_score = torch.sigmoid(s_cls.clamp(-clip, clip)), torch.sigmoid(t_cls.clamp(-clip, clip))
        score_err += (s_score - t_score).abs().mean().item() * len(x)
        n += len(x)
        pads = [Letterbox(0, 0, 0, 0)] * len(x)  # compared in the model's input frame
        preds += postprocess(s_reg.cpu().numpy(), s_cls.cpu().numpy(), anchors, spec, pads, AP_PREDICTION_THRESHOLD)
        refs += [[d.box for d in dets] for dets in postprocess(t_reg.cpu().numpy(), t_cls.cpu().numpy(), anchors, spec, pads)]
    ap = coco_ap(preds, refs, [(spec.input_size, spec.input_size)] * len(preds))
    return {"val_mae_regressors": reg_err / n, "val_mae_scores": score_err / n, "val_AP50": ap["AP50"], "val_AP": ap["AP"],
            "val_faces": ap["references"]}


def _plot(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for key in sorted(k for k in history[0] if k.startswith("train_")):
        axes[0].plot(epochs, [h[key] for h in history], label=key[6:])
    axes[0].set_yscale("log")
    axes[0].set_title("training loss terms")
    for key in ("val_AP50", "val_AP"):
        axes[1].plot(epochs, [h[key] for h in history], marker="o", label=key[4:])
    axes[1].set_title("student vs teacher (held out)")
    axes[1].set_ylim(0, 1)
    for key in ("val_mae_scores", "val_mae_regressors"):
        axes[2].plot(epochs, [h[key] for h in history], label=key[8:])
    axes[2].set_yscale("log")
    axes[2].set_title("MAE against the teacher")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a distillation job; return the summary written to ``out/summary.json``."""
    import torch.distributed as dist
    from tqdm import tqdm

    import blazeport
    from blazeport.anchors import anchors_for
    from blazeport.distill.dataset import DistillDataset, ImageSet
    from blazeport.distill.loss_terms import LossConfig
    from blazeport.distill.losses import DistillLoss
    from blazeport.models import build_student
    from blazeport.profile import count_macs, count_params

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cfg.validate(world)
    if cfg.device == "auto":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main_proc = rank == 0
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    last_path, best_path = out / "last.pt", out / "best.pt"
    if not cfg.resume:
        for held in (last_path, best_path):
            if held.exists():
                raise BlazeportError(f"{out} already holds a run ({held.name}); pass --resume to continue it or choose "
                                     "another --out")
    ckpt = None
    if cfg.resume:
        if last_path.exists():
            ckpt = read_checkpoint(last_path, cfg, device)
        elif best_path.exists():
            raise BlazeportError(f"cannot resume {out}: it has best.pt but no last.pt; choose another --out, or move "
                                 f"{best_path} away to start over")
        if best_path.exists():
            read_checkpoint(best_path, cfg)  # checked now, so an epoch never overwrites a foreign best.pt

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    # 1. teacher, checked against its original before anything else
    detector = blazeport.load(cfg.teacher, backend="torch")
    spec, teacher = detector.spec, detector.backend.module
    teacher_check = check_teacher(spec, teacher)
    # channels-last: oneDNN's NHWC depthwise kernels make the teacher ~3x faster on CPU
    teacher = teacher.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)
    anchors = anchors_for(spec)

    # 2. data
    images = ImageSet.load(cfg.images, spec.input_size, cfg.limit)
    train_idx, val_idx = images.split(cfg.val_fraction)
    train_set = DistillDataset(images, train_idx, spec.input_size, cfg.seed, augment=True)
    val_set = DistillDataset(images, val_idx, spec.input_size, cfg.seed, augment=False)
    val_batches = [torch.from_numpy(np.stack([val_set[i] for i in range(s, min(s + 64, len(val_set)))]))
                   .permute(0, 3, 1, 2).to(device) for s in range(0, len(val_set), 64)]

    # 3. student, loss, optimizer
    student = build_student(cfg.student)  # validate() checked the name and the input size
    loss_cfg = LossConfig.parse(cfg.loss, alpha=cfg.alpha, temperature=cfg.temperature)
    needs_feats = loss_cfg.needs_features
    t_channels = getattr(teacher, "feature_channels", None) if needs_feats else None
    loss_fn = DistillLoss(loss_cfg, anchors, spec, student.feature_channels, t_channels)
    # The student trains channels-last only on CUDA. On CPU, torch 2.13's oneDNN backward of a channels-last
    # 1x1 stride-2 conv with few channels (resnet_slim's 12 -> 16 shortcut) corrupts the heap and aborts
    # the process on AVX-512 hosts. NCHW takes another kernel: the student's own step is ~1.3x slower
    # (resnet, batch 32, 2 threads: 635 vs 902 img/s); whole training runs ~10% slower (318 vs 363 img/s).
    student_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    joint = _Joint(student, loss_fn, student_format).to(device, memory_format=student_format)
    model = nn.parallel.DistributedDataParallel(joint) if world > 1 else joint
    optimizer = torch.optim.AdamW(joint.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(train_set.order(rank, world)) // max(1, cfg.batch_size // world))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(cfg.epochs * steps_per_epoch, max(1, int(cfg.warmup_epochs * steps_per_epoch))))
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, history, best = 0, [], -1.0
    if ckpt is not None:
        try:
            joint.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            _set_rng_state(ckpt["rng"])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise BlazeportError(
                f"{last_path} does not fit this run (saved with --loss {ckpt['config'].get('loss')!r}, this run has "
                f"--loss {cfg.loss!r}: {first}); it was left as it is: resume with the saved options, or choose another "
                f"--out") from None
        start_epoch, history, best = ckpt["epoch"] + 1, ckpt["history"], float(ckpt["best"])
        if main_proc:
            print(f"resumed {out} at epoch {start_epoch} of {cfg.epochs}", file=sys.stderr, flush=True)
    # Only now, with teacher, images and checkpoint loaded and checked, does the run folder appear.
    if main_proc:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BlazeportError(f"cannot create --out {out} ({exc.strerror or exc}); choose another --out") from None
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))

    writer = None
    if main_proc:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))
    global_step = start_epoch * steps_per_epoch
    per_rank_batch = max(1, cfg.batch_size // world)
    t_start = time.perf_counter()
    images_seen = 0
    for epoch in range(start_epoch, cfg.epochs):
        train_set.set_epoch(epoch)
        model.train()
        order = train_set.order(rank, world)
        batches = [order[i : i + per_rank_batch] for i in range(0, steps_per_epoch * per_rank_batch, per_rank_batch)]
        sums: dict[str, float] = {}
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not (cfg.progress and main_proc),
                   dynamic_ncols=True)
        t_epoch = time.perf_counter()
        for idx in bar:
            # NHWC samples viewed as NCHW: channels-last memory, no copy
            x = torch.from_numpy(np.stack([train_set[i] for i in idx])).permute(0, 3, 1, 2).to(device)  # (B, 3, S, S)
            with torch.autocast(device.type, enabled=use_amp), torch.no_grad():
                t_feats = teacher.features(x) if needs_feats else None
                t_out = teacher.head(t_feats) if needs_feats else teacher(x)
            with torch.autocast(device.type, enabled=use_amp):
                losses = model(x, t_out, t_feats)
            total = losses["total"]
            if cfg.fail_at_step is not None and global_step == cfg.fail_at_step:
                total = total * float("nan")
            if not torch.isfinite(total):
                kept = f"{last_path} (epoch {history[-1]['epoch']})" if history else "no checkpoint yet"
                raise NonFiniteLoss(
                    f"loss became {total.item()} at epoch {epoch + 1}, step {global_step} "
                    f"({', '.join(f'{k}={v.item():.4g}' for k, v in losses.items())}); stopped. Last checkpoint kept: {kept}. "
                    "Lower --lr or change --loss, then --resume."
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(joint.parameters(), 10.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            global_step += 1
            images_seen += len(idx) * world
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            ips = len(idx) * world * (bar.n + 1) / (time.perf_counter() - t_epoch)
            bar.set_postfix(loss=f"{total.item():.4f}", img_s=f"{ips:.0f}")
            if writer:
                for k, v in losses.items():
                    writer.add_scalar(f"train/{k}", v.item(), global_step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], global_step)
        epoch_seconds = time.perf_counter() - t_epoch
        if world > 1:
            dist.barrier()
        if not main_proc:
            continue
        metrics = validate(student, teacher, val_batches, spec, anchors)
        record = {"epoch": epoch + 1, **{f"train_{k}": v / len(batches) for k, v in sums.items()}, **metrics,
                  "lr": scheduler.get_last_lr()[0], "images_per_second": len(batches) * per_rank_batch * world / epoch_seconds}
        history.append(record)
        for k, v in metrics.items():
            writer.add_scalar(f"val/{k[4:]}", v, epoch + 1)
        improved = metrics["val_AP50"] > best
        best = max(best, metrics["val_AP50"])
        state = {"model": joint.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "scaler": scaler.state_dict(), "rng": _rng_state(), "epoch": epoch, "history": history, "best": best,
                 "config": asdict(cfg)}
        save_checkpoint(state, last_path)
        if improved:
            save_checkpoint(state, best_path)
        (out / "metrics.json").write_text(json.dumps(history, indent=2))
        _plot(history, out / "curves.png")
        tqdm.write(f"epoch {epoch + 1}: loss {record['train_total']:.4f}  val AP50 {metrics['val_AP50']:.3f}  "
                   f"AP {metrics['val_AP']:.3f}  score MAE {metrics['val_mae_scores']:.4f}"
                   f"{'  (best)' if improved else ''}", file=sys.stderr)
    if world > 1:
        dist.barrier()
    if not main_proc:
        return {}
    writer.close()
    # the best epoch's student, as a model blazeport can load by path
    best_state = read_checkpoint(best_path if best_path.exists() else last_path, cfg)
    joint.load_state_dict(best_state["model"])
    student_cpu = joint.student.to("cpu").eval()
    best_record = max(history, key=lambda h: h["val_AP50"]) if history else {}
    summary = {
        "teacher": spec.name,
        "teacher_check_max_abs_diff": teacher_check["max_abs_diff"],
        "student": cfg.student,
        "params": count_params(student_cpu),
        "macs": count_macs(student_cpu, spec.input_size),
        "loss": loss_cfg.describe(),
        "images": {"train": len(train_idx), "val": len(val_idx), "skipped_unreadable": len(images.skipped)},
        "epochs": cfg.epochs,
        "best_epoch": best_record.get("epoch"),
        "best": best_record,
        "final": history[-1] if history else {},
        "train_images_per_second": float(np.mean([h["images_per_second"] for h in history])) if history else None,
        "seconds_this_session": round(time.perf_counter() - t_start, 1),
        "images_seen_this_session": images_seen,
        "device": str(device),
        "world_size": world,
        "host": {"machine": platform.machine(), "processor": platform.processor(), "torch": torch.__version__,
                 "threads": torch.get_num_threads()},
        "config": asdict(cfg),
    }
    save_safetensors(student_cpu, student_spec(spec, cfg.student, student_cpu.family), out / "student.safetensors",
                     extra={"teacher": spec.name, "summary": json.dumps({k: summary[k] for k in ("best", "loss", "epochs")})})
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


__all__ = ["NonFiniteLoss", "TrainConfig", "check_teacher", "read_checkpoint", "save_checkpoint", "train", "validate"]
