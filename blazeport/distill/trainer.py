"""The distillation run: teacher check, training loop, validation, the run's outputs.

:func:`train` runs a whole job from a :class:`~blazeport.distill.config.TrainConfig`;
``blazeport distill`` is a thin wrapper. The same code runs single-process or under ``torchrun``
with DistributedDataParallel (gloo on CPU, NCCL on GPU), with mixed precision on GPU. A
:class:`Run` holds one job's state, one method per phase: :meth:`Run.setup` (seeds, teacher,
images, student, loss, optimizer), :meth:`Run.resume`, :meth:`Run.open_out`,
:meth:`Run.train_epoch`, :meth:`Run.validate_epoch` (held-out metrics, checkpoints, logs) and
:meth:`Run.finish` (the best epoch's student and the summary).

What makes a run trustworthy, in order:

0. A run folder has one owner (:mod:`blazeport.distill.lock`): right after its arguments are
   checked, the run takes ``OUT/.lock`` (rank 0 under DDP); a second run into the same ``--out``,
   ``--resume`` included, is refused at once in one line naming the owner, before any teacher,
   student or photo is loaded. The lock is released however the run ends.
1. Every argument is checked (:meth:`TrainConfig.validate`) before anything is computed or
   written, and the teacher, the images and a checkpoint to resume are all loaded and checked
   before anything is written into the run folder (the lock creates it; a run that stops before
   writing removes it again): a mistyped argument or an empty image folder leaves nothing behind.
2. The teacher is checked against its original ``.tflite`` on a real photo before training
   (:func:`~blazeport.distill.validation.check_teacher`, through :func:`blazeport.modelfiles.verify.verify`);
   a teacher that silently did not load is the most common failure of distillation tools. Each
   epoch, :func:`~blazeport.distill.validation.validate` measures the student against the teacher
   on the held-out images; the best AP50 chooses ``best.pt``.
3. Checkpoints (:mod:`blazeport.distill.checkpoint`: ``torch.save`` files, read back only with
   ``torch.load(weights_only=True)``, written atomically) are ``last.pt`` every epoch (and inside
   epochs with ``--checkpoint-every`` / ``--checkpoint-minutes``: :mod:`blazeport.distill.midepoch`)
   and ``best.pt`` on the best validation AP50. ``--resume`` continues exactly: sampling is seeded
   per (seed, epoch, index) and RNG states are restored, so a killed and resumed run ends with the
   same metrics as an uninterrupted one.
4. A NaN or infinite loss stops the run with :class:`NonFiniteLoss`, naming the step; the last
   checkpoint is left as it was.

At the end the best epoch's student is written as ``student.safetensors`` (loadable with
:func:`blazeport.load`, its spec from :func:`blazeport.specs.student_spec`), and
:mod:`blazeport.distill.logs` writes ``summary.json``. Every file of the run but TensorBoard's
event file goes through :func:`blazeport.files.write_atomic`: a full disk stops the run with one
error naming the file, never leaving a 0-byte or half-written one.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from blazeport import files
from blazeport.distill.augment import noisy_terms
from blazeport.distill.checkpoint import (
    checkpoint_state,
    checkpoint_to_resume,
    read_checkpoint,
    restore,
    save_checkpoint,
)
from blazeport.distill.config import TrainConfig, init_weights
from blazeport.distill.dataset import AugmentConfig
from blazeport.distill.inputs import Data, Teacher
from blazeport.distill.labels import batch_labels
from blazeport.distill.lock import run_folder_lock
from blazeport.distill.logs import RunLogs, json_bytes
from blazeport.distill.loss_terms import LossConfig
from blazeport.distill.losses import DistillLoss
from blazeport.distill.midepoch import CheckpointCadence, Position
from blazeport.distill.mosaic import mosaic_generator, mosaic_with_plan
from blazeport.distill.noisy import NoisyStudent
from blazeport.distill.results import keep_epoch, run_summary, write_student
from blazeport.distill.shards import ShardTrain
from blazeport.distill.split import recorded_split_rule
from blazeport.distill.stream import to_batch
from blazeport.distill.validation import check_teacher, validate
from blazeport.errors import BlazeportError
from blazeport.models import build_student
from blazeport.progress import progress_bar
from blazeport.pruning.slimming import sparsity_step

__all__ = ["NonFiniteLoss", "Run", "TrainConfig", "check_teacher", "train", "validate"]


class NonFiniteLoss(BlazeportError):
    """The loss became NaN or infinite; the run stopped and the last checkpoint is intact."""


class _Joint(nn.Module):
    """Student and the loss module's trainable parts under one module, for DDP."""

    def __init__(self, student: nn.Module, loss: nn.Module, memory_format: torch.memory_format):
        super().__init__()
        self.student, self.loss, self.memory_format = student, loss, memory_format

    def forward(self, x: torch.Tensor, t_out: tuple[torch.Tensor, torch.Tensor], t_feats: list[torch.Tensor] | None,
                labels: list[torch.Tensor | None] | None = None) -> dict[str, torch.Tensor]:
        x = x.contiguous(memory_format=self.memory_format)  # the batch arrives as an NCHW view of NHWC samples
        feats = self.student.features(x) if t_feats is not None else None
        out = self.student.head(feats) if feats is not None else self.student(x)
        return self.loss(out, t_out, feats, t_feats, labels)


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


class Run:
    """One distillation job: its state, and one method per phase (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, world: int, rank: int, device: torch.device, teacher: Teacher, data: Data):
        self.cfg, self.world, self.rank, self.device = cfg, world, rank, device
        self.aug = AugmentConfig.parse(cfg.augment, cfg.zoom)
        self.main = rank == 0  # the process that validates, checkpoints and logs
        self.out = Path(cfg.out)
        self.teacher, self.data = teacher, data
        self.start_epoch, self.history, self.best = 0, [], -1.0
        self.position: Position | None = None  # where a mid-epoch checkpoint left the epoch it resumes
        self.cadence = CheckpointCadence(cfg.checkpoint_every, cfg.checkpoint_minutes)
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
        loss_fn = DistillLoss(self.loss_cfg, teacher.anchors, teacher.spec, student.feature_channels, t_channels,
                              labels_alpha=cfg.boxes_alpha if cfg.boxes else None)
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
        self.noisy = NoisyStudent(self.aug, teacher.anchors, teacher.spec.anchors, teacher.spec.input_size,
                                  teacher.spec.score_clip) if noisy_terms(self.aug) else None
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
        self.history, self.best = ckpt["history"], float(ckpt["best"])
        self.position = Position.from_dict(ckpt.get("position"))  # None: written at an epoch's end
        if self.position is None:
            self.start_epoch = ckpt["epoch"] + 1
            self.global_step = self.start_epoch * self.steps_per_epoch
            where = f"epoch {self.start_epoch + 1}"
        else:  # inside an epoch (blazeport.distill.midepoch): that epoch's order again, from its step
            self.position.check_fits(self.out / "last.pt", self.steps_per_epoch, self.world, self.batch,
                                     self._shard_workers())
            self.start_epoch = self.position.epoch
            self.global_step = self.start_epoch * self.steps_per_epoch + self.position.step
            where = f"epoch {self.start_epoch + 1}, step {self.position.step} of {self.steps_per_epoch}"
        if self.main:
            print(f"resumed {self.out} at {where} ({self.cfg.epochs} epochs)", file=sys.stderr, flush=True)

    def _shard_workers(self) -> int | None:
        """``--workers`` where the epoch's stream depends on it (shards), None for folders."""
        return self.cfg.workers if isinstance(self.data.train_set, ShardTrain) else None

    def open_out(self) -> None:
        """Write ``config.json`` (only now, with teacher, images and checkpoint loaded and checked; the
        folder exists already, created by the lock) and start the logs."""
        if self.main:
            try:
                self.out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BlazeportError(f"cannot create --out {self.out} ({exc.strerror or exc}); choose another --out") from None
            files.write_atomic(self.out / "config.json", json_bytes(asdict(self.cfg)))  # a full disk leaves no half file
            self.logs = RunLogs(self.out)
        self.t_start = time.perf_counter()

    def train_epoch(self, epoch: int) -> tuple[dict[str, float], int, float]:
        """One epoch on this rank's share (from a mid-epoch checkpoint's step when resuming one): the sums of
        each loss term, the number of steps, seconds."""
        self.model.train()
        pos, self.position = (self.position if self.position is not None and self.position.epoch == epoch else None), None
        start = pos.step if pos is not None else 0
        # decoded by --workers processes; a resumed epoch starts at its step
        batches = self.data.train_set.epoch(epoch, self.rank, self.world, self.batch, start)
        if self.world > 1 and isinstance(self.data.train_set, ShardTrain):
            names = self.data.train_set.shard_names(epoch, self.rank, self.world)
            print(f"rank {self.rank} of {self.world}, epoch {epoch + 1}: {len(names)} shard(s) {' '.join(names[:8])}"
                  f"{' ...' if len(names) > 8 else ''}", file=sys.stderr, flush=True)
        sums: dict[str, float] = dict(pos.sums) if pos is not None else {}
        bar = progress_bar(batches, total=self.steps_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
                           unit="batch", enabled=self.cfg.progress and self.main, dynamic_ncols=True)
        t_session, steps = time.perf_counter(), start
        t_epoch = t_session - (pos.seconds if pos is not None else 0.0)
        for batch, skipped, *labels in bar:  # with --boxes a third item: each sample's hand-drawn faces
            self.skipped.update(skipped)
            losses = self._step(to_batch(batch, self.device), epoch, labels[0] if labels else None)
            steps += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            ips = len(batch) * self.world * (steps - start) / (time.perf_counter() - t_session)
            bar.set_postfix(loss=f"{losses['total'].item():.4f}", img_s=f"{ips:.0f}")
            if self.logs:
                self.logs.step(losses, self.scheduler.get_last_lr()[0], self.global_step)
            if self.main and self.cadence.due(self.global_step, steps, self.steps_per_epoch):
                self._checkpoint_inside(epoch, steps, sums, time.perf_counter() - t_epoch)
        return sums, steps, time.perf_counter() - t_epoch

    def _checkpoint_inside(self, epoch: int, steps: int, sums: dict[str, float], seconds: float) -> None:
        """(Main process.) ``last.pt`` after step ``steps`` of ``epoch``: everything to continue exactly
        from here (:mod:`blazeport.distill.midepoch`); ``best.pt`` is only chosen at an epoch's end."""
        position = Position(epoch=epoch, step=steps, sums=dict(sums), seconds=seconds,
                            steps_per_epoch=self.steps_per_epoch, world=self.world, batch=self.batch,
                            workers=self._shard_workers())
        save_checkpoint(checkpoint_state(self.joint, self.optimizer, self.scheduler, self.scaler, epoch, self.history,
                                         self.best, self.cfg, position), self.out / "last.pt")
        self.cadence.written()
        if self.cfg.kill_at_step is not None and self.global_step == self.cfg.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)  # testing hook: a real SIGKILL right after this checkpoint

    def _step(self, x: torch.Tensor, epoch: int, faces: tuple[np.ndarray | None, ...] | None = None) -> dict[str, torch.Tensor]:
        """One optimizer step on the batch ``x`` (B, 3, S, S), labelled by the teacher on the very same tensor,
        or, with Noisy Student terms, on the clean tensor before :mod:`blazeport.distill.noisy` changes it;
        ``faces``: each sample's hand-drawn faces (``--boxes``, :mod:`blazeport.distill.labels`)."""
        teacher, needs_feats, device_type = self.teacher.module, self.loss_cfg.needs_features, self.device.type
        x, plan = mosaic_with_plan(x, self.aug.mosaic, mosaic_generator(self.cfg.seed, self.global_step, self.rank))
        labels = batch_labels(faces, plan, x.shape[-1], x.device) if faces is not None else None
        with torch.autocast(device_type, enabled=self.amp), torch.no_grad():
            t_feats = teacher.features(x) if needs_feats else None
            t_out = teacher.head(t_feats) if needs_feats else teacher(x)
        if self.noisy is not None:  # labelled before the change: the student sees the changed batch
            x, t_out, changes = self.noisy.student_batch(x, t_out, self.cfg.seed, self.global_step, self.rank)
            if labels is not None:
                labels = [c.carry_boxes(f, x.shape[-1]) if f is not None else None for c, f in zip(changes, labels, strict=True)]
        with torch.autocast(device_type, enabled=self.amp):
            losses = self.model(x, t_out, t_feats, labels)
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
        keep_epoch(self, epoch)
        self.cadence.written()
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
        summary = run_summary(self, student, test)
        write_student(self, student, self.out / "student.safetensors",
                      {k: summary[k] for k in ("best", "test", "loss", "epochs")})
        self.logs.finish(summary)
        return summary


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
    with run_folder_lock(cfg.out, rank, world):  # one run per folder: refused before anything is read or loaded
        return _train(cfg, world, rank, device)


def _train(cfg: TrainConfig, world: int, rank: int, device: torch.device) -> dict[str, Any]:
    """:func:`train` once this process owns ``--out`` (rank 0) or rank 0 does (the other ranks)."""
    ckpt = checkpoint_to_resume(cfg, Path(cfg.out), device)  # before the teacher loads: a bad file fails fast
    if ckpt is not None:  # the split this run started with, whichever rule this blazeport gives new runs
        cfg.split_rule = recorded_split_rule(ckpt["config"], Path(cfg.out) / "last.pt")
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
