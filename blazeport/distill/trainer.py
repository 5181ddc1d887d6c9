"""The distillation run: teacher check, training loop, validation, the run's outputs.

:func:`train` runs a whole job from a :class:`~blazeport.distill.config.TrainConfig`;
``blazeport distill`` is a thin wrapper. The same code runs single-process or under ``torchrun``
with DistributedDataParallel (gloo on CPU, NCCL on GPU), with mixed precision on GPU. A
:class:`Run` holds one job's state, one method per phase: :meth:`Run.setup` (seeds, teacher,
images, student, loss, optimizer), :meth:`Run.resume`, :meth:`Run.open_out`,
:meth:`Run.train_epoch`, :meth:`Run.validate_epoch` (held-out metrics, checkpoints, logs) and
:meth:`Run.finish` (the best epoch's student and the summary).

What makes a run trustworthy, in order:

1. Every argument is checked (:meth:`TrainConfig.validate`) before anything is computed or
   written, and the teacher, the images and a checkpoint to resume are all loaded and checked
   before the run folder is created: a mistyped argument or an empty image folder leaves nothing
   behind.
2. The teacher is checked against its original ``.tflite`` on a real photo before training
   (:func:`~blazeport.distill.validation.check_teacher`, through :func:`blazeport.verify.verify`);
   a teacher that silently did not load is the most common failure of distillation tools. Each
   epoch, :func:`~blazeport.distill.validation.validate` measures the student against the teacher
   on the held-out images; the best AP50 chooses ``best.pt``.
3. Checkpoints (:mod:`blazeport.distill.checkpoint`: ``torch.save`` files, read back only with
   ``torch.load(weights_only=True)``, written atomically) are ``last.pt`` every epoch and
   ``best.pt`` on the best validation AP50. ``--resume`` continues exactly: sampling is seeded per
   (seed, epoch, index) and RNG states are restored, so a killed and resumed run ends with the
   same metrics as an uninterrupted one.
4. A NaN or infinite loss stops the run with :class:`NonFiniteLoss`, naming the step; the last
   checkpoint is left as it was.

At the end the best epoch's student is written as ``student.safetensors`` (loadable with
:func:`blazeport.load`, its spec from :func:`blazeport.specs.student_spec`), and
:mod:`blazeport.distill.logs` writes ``summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import blazeport
from blazeport.anchors import anchors_for
from blazeport.counting import count_macs, count_params
from blazeport.distill.checkpoint import (
    checkpoint_state,
    checkpoint_to_resume,
    read_checkpoint,
    restore,
    save_checkpoint,
)
from blazeport.distill.config import TrainConfig, init_weights
from blazeport.distill.dataset import AugmentConfig
from blazeport.distill.logs import RunLogs
from blazeport.distill.loss_terms import LossConfig
from blazeport.distill.losses import DistillLoss
from blazeport.distill.mosaic import mosaic_batch, mosaic_generator
from blazeport.distill.shards import ShardIndex, ShardTrain, Spool, is_shard_spec
from blazeport.distill.stream import FolderTrain, HeldOut, ImageIndex, StreamDataset, to_batch
from blazeport.distill.validation import check_teacher, validate
from blazeport.errors import BlazeportError
from blazeport.models import architecture_name, build_student
from blazeport.progress import progress_bar
from blazeport.pruning.slimming import sparsity_step
from blazeport.specs import ModelSpec, student_spec
from blazeport.weights import save_safetensors

__all__ = ["NonFiniteLoss", "Run", "TrainConfig", "check_teacher", "train", "validate"]

VAL_BATCH = 64  # held-out images per validation batch


class NonFiniteLoss(BlazeportError):
    """The loss became NaN or infinite; the run stopped and the last checkpoint is intact."""


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


def _no_strided_pointwise(module: nn.Module) -> bool:
    """No 1x1 conv with stride > 1: the pattern whose channels-last backward crashes oneDNN on CPU."""
    return not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1 for m in module.modules())


def _lr_lambda(total_steps: int, warmup_steps: int):
    """Linear warm-up, then cosine decay to 2% of the base learning rate."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


@dataclass
class Teacher:
    """The converted original, checked against its ``.tflite``, frozen on the run's device."""

    spec: ModelSpec
    module: nn.Module
    check: dict[str, Any]  # check_teacher's report
    anchors: np.ndarray

    @classmethod
    def load(cls, name: str, device: torch.device) -> Teacher:
        detector = blazeport.load(name, backend="torch")
        spec, module = detector.spec, detector.backend.module
        check = check_teacher(spec, module)
        # channels-last: oneDNN's NHWC depthwise kernels make the teacher ~3x faster on CPU
        module = module.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)
        return cls(spec, module, check, anchors_for(spec))


@dataclass
class Data:
    """The photos, streamed (:mod:`blazeport.distill.stream` for folders, :mod:`blazeport.distill.shards`
    for WebDataset tars), split by a hash of each file name or ``__key__``; held-out batches are
    decoded each time they are validated, so memory does not grow with the number of photos."""

    train_set: FolderTrain | ShardTrain  # augmented, seeded per (seed, epoch, sample)
    val_batches: HeldOut
    test_batches: HeldOut  # never chooses anything; measured once, on the chosen student

    @classmethod
    def load(cls, cfg: TrainConfig, size: int, device: torch.device, rank: int = 0) -> Data:
        aug = AugmentConfig.parse(cfg.augment, cfg.zoom)
        if is_shard_spec(cfg.images):
            index = ShardIndex(cfg.images, cfg.val_fraction, cfg.test_fraction)
            train_set = ShardTrain(index, size, cfg.seed, aug, cfg.workers)
            # only rank 0 validates: the others need no held-out copy
            held = [Spool(index, which, size, cfg.cache_dir) if rank == 0 else [] for which in ("val", "test")]
            return cls(train_set, HeldOut(held[0], VAL_BATCH, device), HeldOut(held[1], VAL_BATCH, device))
        index = ImageIndex(cfg.images, cfg.limit)
        index.check_readable(range(len(index)))  # stops at the first readable photo
        train_idx, val_idx, test_idx = index.split(cfg.val_fraction, cfg.test_fraction)
        n = len(index)

        def part(indices: list[int], augment: bool) -> StreamDataset:  # the memory cache, shared out by split size
            return StreamDataset(index, indices, size, cfg.seed, augment, aug if augment else None, cfg.cache_dir,
                                 cfg.memory_cache_mb * len(indices) / n)

        return cls(FolderTrain(part(train_idx, True), cfg.workers),
                   HeldOut(part(val_idx, False), VAL_BATCH, device, cfg.workers),
                   HeldOut(part(test_idx, False), VAL_BATCH, device, cfg.workers))

    def skipped(self) -> set[str]:
        return self.val_batches.skipped | self.test_batches.skipped


class Run:
    """One distillation job: its state, and one method per phase (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, world: int, rank: int, device: torch.device, teacher: Teacher, data: Data):
        self.cfg, self.world, self.rank, self.device = cfg, world, rank, device
        self.aug = AugmentConfig.parse(cfg.augment, cfg.zoom)
        self.main = rank == 0  # the process that validates, checkpoints and logs
        self.out = Path(cfg.out)
        self.teacher, self.data = teacher, data
        self.start_epoch, self.history, self.best = 0, [], -1.0
        self.global_step, self.images_seen, self.t_start = 0, 0, time.perf_counter()
        self.skipped: set[str] = set()  # unreadable files this process met (train batches; held-out in Data)
        self.logs: RunLogs | None = None
        self._build_training()
        self._check_outputs()

    @classmethod
    def setup(cls, cfg: TrainConfig, world: int, rank: int, device: torch.device) -> Run:
        """Seed every RNG, load and check the teacher, load the images, build student, loss and
        optimizer (in this order: building modules draws from torch's RNG)."""
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        teacher = Teacher.load(cfg.teacher, device)
        return cls(cfg, world, rank, device, teacher, Data.load(cfg, teacher.spec.input_size, device, rank))

    def _build_training(self) -> None:
        """Student, loss module (with its trainable parts), DDP wrapper, optimizer, schedule, AMP scaler."""
        cfg, teacher, device = self.cfg, self.teacher, self.device
        student = build_student(cfg.student, teacher.spec, cfg._backbone)  # validate() built it once already: it builds
        if cfg.init is not None:
            init_weights(student, cfg.init, teacher.spec)
        self.loss_cfg = LossConfig.parse(cfg.loss, alpha=cfg.alpha, temperature=cfg.temperature)
        t_channels = getattr(teacher.module, "feature_channels", None) if self.loss_cfg.needs_features else None
        loss_fn = DistillLoss(self.loss_cfg, teacher.anchors, teacher.spec, student.feature_channels, t_channels)
        # Channels-last is oneDNN's fast layout (mobilenet at 192 px, batch 32, 1 thread: a step 1.36 s NCHW, 0.88 s
        # NHWC). But on CPU, torch 2.13's oneDNN backward of a channels-last 1x1 stride-2 conv with few channels
        # (resnet_slim's 12 -> 16 shortcut) corrupts the heap and aborts the process on AVX-512 hosts, so a student
        # with such a conv trains NCHW on CPU (resnet, batch 32, 2 threads: 318 vs 363 img/s for the whole run).
        student_format = torch.channels_last if device.type == "cuda" or _no_strided_pointwise(student) \
            else torch.contiguous_format
        self.joint = _Joint(student, loss_fn, student_format).to(device, memory_format=student_format)
        self.model = nn.parallel.DistributedDataParallel(self.joint) if self.world > 1 else self.joint
        self.optimizer = torch.optim.AdamW(self.joint.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.batch = max(1, cfg.batch_size // self.world)  # this rank's share of a batch
        self.steps_per_epoch = self.data.train_set.steps(self.rank, self.world, self.batch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(
            cfg.epochs * self.steps_per_epoch, max(1, int(cfg.warmup_epochs * self.steps_per_epoch))))
        self.amp = cfg.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    @torch.no_grad()
    def _check_outputs(self) -> None:
        """The untrained student on real training photos (eval mode: nothing changes) must give finite
        outputs; a NaN at step 0 is the backbone's own, and is refused before the run folder exists."""
        student = self.joint.student
        x = self.data.train_set.first(8, self.device)
        was = student.training
        reg, cls = student.eval()(x.contiguous(memory_format=self.joint.memory_format))
        student.train(was)
        if not (torch.isfinite(reg).all() and torch.isfinite(cls).all()):
            raise BlazeportError(f"student {self.cfg.student}: its outputs are NaN or infinite on the first training photos, "
                                 "before any step; check its forward and initialisation")

    def resume(self, ckpt: dict[str, Any]) -> None:
        """Continue from a checkpoint read by :func:`checkpoint_to_resume`: weights, optimizer, RNGs, history."""
        restore(ckpt, self.out / "last.pt", self.cfg, self.joint, self.optimizer, self.scheduler, self.scaler)
        self.start_epoch, self.history, self.best = ckpt["epoch"] + 1, ckpt["history"], float(ckpt["best"])
        self.global_step = self.start_epoch * self.steps_per_epoch
        if self.main:
            print(f"resumed {self.out} at epoch {self.start_epoch} of {self.cfg.epochs}", file=sys.stderr, flush=True)

    def open_out(self) -> None:
        """Create the run folder (only now, with teacher, images and checkpoint loaded and checked),
        write ``config.json`` and start the logs."""
        if self.main:
            try:
                self.out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BlazeportError(f"cannot create --out {self.out} ({exc.strerror or exc}); choose another --out") from None
            (self.out / "config.json").write_text(json.dumps(asdict(self.cfg), indent=2))
            self.logs = RunLogs(self.out)
        self.t_start = time.perf_counter()

    def train_epoch(self, epoch: int) -> tuple[dict[str, float], int, float]:
        """One epoch on this rank's share: the sums of each loss term, the number of steps, seconds."""
        self.model.train()
        batches = self.data.train_set.epoch(epoch, self.rank, self.world, self.batch)  # decoded by --workers processes
        if self.world > 1 and isinstance(self.data.train_set, ShardTrain):
            names = self.data.train_set.shard_names(epoch, self.rank, self.world)
            print(f"rank {self.rank} of {self.world}, epoch {epoch + 1}: {len(names)} shard(s) {' '.join(names[:8])}"
                  f"{' ...' if len(names) > 8 else ''}", file=sys.stderr, flush=True)
        sums: dict[str, float] = {}
        bar = progress_bar(batches, total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", unit="batch",
                           enabled=self.cfg.progress and self.main, dynamic_ncols=True)
        t_epoch, steps = time.perf_counter(), 0
        for batch, skipped in bar:
            self.skipped.update(skipped)
            losses = self._step(to_batch(batch, self.device), epoch)
            steps += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            ips = len(batch) * self.world * (bar.n + 1) / (time.perf_counter() - t_epoch)
            bar.set_postfix(loss=f"{losses['total'].item():.4f}", img_s=f"{ips:.0f}")
            if self.logs:
                self.logs.step(losses, self.scheduler.get_last_lr()[0], self.global_step)
        return sums, steps, time.perf_counter() - t_epoch

    def _step(self, x: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        """One optimizer step on the batch ``x`` (B, 3, S, S), labelled by the teacher on the very same tensor."""
        teacher, needs_feats, device_type = self.teacher.module, self.loss_cfg.needs_features, self.device.type
        x = mosaic_batch(x, self.aug.mosaic, mosaic_generator(self.cfg.seed, self.global_step, self.rank))
        with torch.autocast(device_type, enabled=self.amp), torch.no_grad():
            t_feats = teacher.features(x) if needs_feats else None
            t_out = teacher.head(t_feats) if needs_feats else teacher(x)
        with torch.autocast(device_type, enabled=self.amp):
            losses = self.model(x, t_out, t_feats)
        total = losses["total"]
        if self.cfg.fail_at_step is not None and self.global_step == self.cfg.fail_at_step:
            total = total * float("nan")
        if not torch.isfinite(total):
            kept = f"{self.out / 'last.pt'} (epoch {self.history[-1]['epoch']})" if self.history else "no checkpoint yet"
            raise NonFiniteLoss(
                f"loss became {total.item()} at epoch {epoch + 1}, step {self.global_step} "
                f"({', '.join(f'{k}={v.item():.4g}' for k, v in losses.items())}); stopped. Last checkpoint kept: {kept}. "
                "Lower --lr or change --loss, then --resume."
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.joint.parameters(), 10.0)
        if self.cfg.sparsity:  # after clipping: the L1 pull on BN scales keeps its strength whatever the loss's
            sparsity_step(self.joint.student, self.cfg.sparsity)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.global_step += 1
        self.images_seen += len(x) * self.world
        return losses

    def validate_epoch(self, epoch: int, sums: dict[str, float], steps: int, seconds: float) -> None:
        """(Main process.) Held-out metrics, the epoch's record, ``last.pt`` / ``best.pt``, the logs."""
        metrics = validate(self.joint.student, self.teacher.module, self.data.val_batches, self.teacher.spec,
                           self.teacher.anchors)
        self.history.append({"epoch": epoch + 1, **{f"train_{k}": v / steps for k, v in sums.items()}, **metrics,
                             "lr": self.scheduler.get_last_lr()[0],
                             "images_per_second": steps * self.batch * self.world / seconds})
        improved = metrics["val_AP50"] > self.best
        self.best = max(self.best, metrics["val_AP50"])
        state = checkpoint_state(self.joint, self.optimizer, self.scheduler, self.scaler, epoch, self.history, self.best,
                                 self.cfg)
        save_checkpoint(state, self.out / "last.pt")
        if improved:
            save_checkpoint(state, self.out / "best.pt")
        self.logs.epoch(self.history, improved, self.joint.student)

    def finish(self) -> dict[str, Any]:
        """(Main process.) The best epoch's student as ``student.safetensors``, and the summary."""
        best_path = self.out / "best.pt"
        best_state = read_checkpoint(best_path if best_path.exists() else self.out / "last.pt", self.cfg)
        self.joint.load_state_dict(best_state["model"])
        student = self.joint.student
        test = None
        if self.data.test_batches:  # the chosen student on images that chose nothing
            test = validate(student, self.teacher.module, self.data.test_batches, self.teacher.spec, self.teacher.anchors,
                            prefix="test_", by_size=True)
        student = student.to("cpu").eval()
        summary = self._summary(student, test)
        spec = self.teacher.spec
        pruned = "_pruned" if getattr(student, "pruned", False) else ""  # fine-tuned from a `blazeport prune` output
        s_spec = student_spec(spec, self.cfg.student, student.family,
                              name=f"{spec.name}_{architecture_name(self.cfg.student)}{pruned}")
        save_safetensors(student, s_spec, self.out / "student.safetensors",
                         extra={"teacher": spec.name,
                                "summary": json.dumps({k: summary[k] for k in ("best", "test", "loss", "epochs")})})
        self.logs.finish(summary)
        return summary

    def _summary(self, student: nn.Module, test: dict[str, float] | None) -> dict[str, Any]:
        history, cfg, spec = self.history, self.cfg, self.teacher.spec
        best_record = max(history, key=lambda h: h["val_AP50"]) if history else {}
        return {
            "teacher": spec.name,
            "teacher_check_max_abs_diff": self.teacher.check["max_abs_diff"],
            "student": cfg.student,
            "params": count_params(student),
            "macs": count_macs(student, spec.input_size),
            "loss": self.loss_cfg.describe(),
            "test": test,  # None when --test-fraction left no test images
            "images": {"train": len(self.data.train_set), "val": len(self.data.val_batches.dataset),
                       "test": len(self.data.test_batches.dataset), "skipped_unreadable": len(self.skipped)},
            "epochs": cfg.epochs,
            "best_epoch": best_record.get("epoch"),
            "best": best_record,
            "final": history[-1] if history else {},
            "train_images_per_second": float(np.mean([h["images_per_second"] for h in history])) if history else None,
            "seconds_this_session": round(time.perf_counter() - self.t_start, 1),
            "images_seen_this_session": self.images_seen,
            "device": str(self.device),
            "world_size": self.world,
            "host": {"machine": platform.machine(), "processor": platform.processor(), "torch": torch.__version__,
                     "threads": torch.get_num_threads()},
            "config": asdict(cfg),
        }


def _start_process(cfg: TrainConfig, world: int) -> torch.device:
    """This process's device, its DDP process group (under torchrun) and CPU threads."""
    if cfg.device == "auto":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return device


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a distillation job; return the summary written to ``out/summary.json``
    (``{}`` on a DDP process other than rank 0)."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    cfg.validate(world)
    device = _start_process(cfg, world)
    ckpt = checkpoint_to_resume(cfg, Path(cfg.out), device)  # before the teacher loads: a bad file fails fast
    run = Run.setup(cfg, world, rank, device)
    if ckpt is not None:
        run.resume(ckpt)
    run.open_out()
    for epoch in range(run.start_epoch, cfg.epochs):
        sums, steps, seconds = run.train_epoch(epoch)
        if world > 1:
            dist.barrier()
        if run.main:
            run.validate_epoch(epoch, sums, steps, seconds)
    if world > 1:
        digest = hashlib.sha256(b"".join(v.detach().cpu().numpy().tobytes()
                                         for v in run.joint.student.parameters())).hexdigest()
        print(f"rank {rank} of {world}: {run.global_step} steps, student parameters sha256 {digest[:16]}",
              file=sys.stderr, flush=True)  # the same on every rank: DDP kept them in step (BatchNorm buffers are rank 0's)
        dist.barrier()
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, sorted(run.skipped))  # every rank read its own files
        run.skipped = set().union(*gathered)
    if run.main:
        run.skipped |= run.data.skipped()
        return run.finish()
    return {}
