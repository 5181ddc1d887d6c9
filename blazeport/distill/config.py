"""A distillation job's arguments, :class:`TrainConfig`, and the checks every one of them passes.

:func:`blazeport.distill.trainer.train` calls :meth:`TrainConfig.validate` before it computes or
writes anything, so the CLI and the Python API refuse the same things, each with one line that
names the argument. Several of these used to pass silently (``batch_size=0`` ran batch 1,
``epochs=0`` wrote a summary of nothing) or failed minutes later with a traceback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from blazeport.distill.augment import DEFAULT_AUGMENT, AugmentConfig, noisy_terms
from blazeport.distill.changes import GEOMETRIC
from blazeport.distill.labels import read_labels
from blazeport.distill.loss_terms import LossConfig
from blazeport.distill.split import CONTENT_RULE, SPLIT_RULES
from blazeport.errors import BlazeportError
from blazeport.files import same_file
from blazeport.specs import spec_named


@dataclass
class TrainConfig:
    teacher: str = "short_range"
    student: Any = "resnet"  # a --student string; the Python API also takes an nn.Module (see __post_init__)
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
    test_fraction: float = 0.1  # never chooses anything: the run's honest figures
    limit: int | None = None  # use at most this many images (tests, smoke runs)
    resume: bool = False
    device: str = "auto"
    amp: bool = True
    threads: int | None = None
    progress: bool = True
    init: str | None = None  # start the student from this .safetensors (same architecture): fine-tuning
    zoom: tuple[float, float] = (0.6, 1.5)  # augmentation zoom range; < 1 shrinks faces (small-face practice)
    augment: str = DEFAULT_AUGMENT  # failure-mode augmentations' probabilities (dataset.AUGMENT_TERMS), or "none"
    sparsity: float = 0.0  # network slimming: L1 on BatchNorm scales (about 1e-4), for `blazeport prune` afterwards
    workers: int = 0  # DataLoader processes that decode photos (0: in the training process)
    cache_dir: str | None = None  # on-disk cache of downscaled photos (.npy), never beside the photos
    memory_cache_mb: float = 1024.0  # downscaled photos kept in memory, at most this much (split between workers)
    # how photos are split (blazeport.distill.split): new runs hash each photo's bytes; a resumed run keeps the
    # rule its checkpoint records (file-name when it records none), so its photos stay in their splits
    split_rule: str = CONTENT_RULE
    # mid-epoch checkpoints (blazeport.distill.midepoch): last.pt after every N-th step and/or M minutes after the last
    checkpoint_every: int | None = None
    checkpoint_minutes: float | None = None
    keep_every: int | None = None  # keep the student of every N-th epoch (OUT/epochs/student_eNNNN.safetensors)
    boxes: str | None = None  # hand-drawn faces (blazeport boxes.json or COCO) beside the teacher: blazeport.distill.labels
    boxes_alpha: float = 0.5  # a labelled sample's weight on its boxes; 1 - alpha on the teacher (Hinton's KD)
    fail_at_step: int | None = None  # testing hook: inject a NaN loss at this global step
    kill_at_step: int | None = None  # testing hook: SIGKILL this process right after a mid-epoch checkpoint at this step

    def __post_init__(self) -> None:
        """The Python API may pass the student as an ``nn.Module`` instance (a backbone, or a whole
        detector): it trains from that instance's weights, and the run records its import path."""
        self._backbone = None
        if isinstance(self.student, torch.nn.Module):
            from blazeport.models.backbones import module_path

            self._backbone, self.student = self.student, module_path(self.student)

    def validate(self, world: int = 1) -> None:
        """Raise a one-line :class:`BlazeportError` for the first argument that cannot work
        (``world``: the number of DDP processes, which share the batch)."""
        if not self.images:
            raise BlazeportError("--images: give at least one folder or file of photos")
        self._check_numbers(world)
        LossConfig.parse(self.loss, alpha=self.alpha, temperature=self.temperature)
        self._check_device()
        self._check_models()
        self._check_out()

    def _check_numbers(self, world: int) -> None:
        _whole("--epochs", self.epochs, 1)
        _whole("--batch-size", self.batch_size, max(1, world),
               f" with {world} processes (each takes batch-size / {world})" if world > 1 else "")
        _real("--lr", self.lr, 0.0, math.inf, True, True)
        _real("weight_decay", self.weight_decay, 0.0, math.inf, False, True)
        _real("warmup_epochs", self.warmup_epochs, 0.0, math.inf, False, True)
        _real("--val-fraction", self.val_fraction, 0.0, 1.0, True, True,
              ": the held-out images choose best.pt, so neither the validation nor the training split may be empty")
        _real("--test-fraction", self.test_fraction, 0.0, 1.0, False, True)
        if self.split_rule not in SPLIT_RULES:
            raise BlazeportError(f"split_rule must be one of {', '.join(SPLIT_RULES)} (got {self.split_rule!r})")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise BlazeportError(f"--val-fraction {self.val_fraction} + --test-fraction {self.test_fraction} leave no images "
                                 "to train on; their sum must be below 1")
        _real("--temperature", self.temperature, 0.0, math.inf, True, True)
        _real("--alpha", self.alpha, 0.0, 1.0, False, False)
        _whole("--seed", self.seed, 0)
        if self.seed >= 2**32:
            raise BlazeportError(f"--seed must be below 2**32 (got {self.seed}): numpy's generator takes 32-bit seeds")
        if self.limit is not None:
            _whole("--limit", self.limit, 1)
        if self.threads is not None:
            _whole("--threads", self.threads, 1)
        _whole("--workers", self.workers, 0)
        if self.checkpoint_every is not None:
            _whole("--checkpoint-every", self.checkpoint_every, 1, " (optimizer steps)")
        if self.keep_every is not None:
            _whole("--keep-every", self.keep_every, 1, " (epochs)")
        if self.checkpoint_minutes is not None:
            _real("--checkpoint-minutes", self.checkpoint_minutes, 0.0, math.inf, True, True)
        _real("--memory-cache-mb", self.memory_cache_mb, 0.0, math.inf, False, True)
        if self.limit is not None and any(str(s).endswith(".tar") for s in self.images):
            raise BlazeportError("--limit applies to folders of photos, not to tar shards: give fewer shards instead")
        _real("--boxes-alpha", self.boxes_alpha, 0.0, 1.0, False, False)
        if self.boxes is not None:
            if any(str(s).endswith(".tar") for s in self.images):
                raise BlazeportError("--boxes applies to folders of photos, not to tar shards: a shard sample that cannot "
                                     "be read is replaced by another photo, whose boxes the stream does not know")
            read_labels(self.boxes)  # a bad file: one message, before anything loads
        _real("--sparsity", self.sparsity, 0.0, 1.0, False, True)
        zoom = tuple(self.zoom) if isinstance(self.zoom, (list, tuple)) else ()
        if len(zoom) != 2 or not all(isinstance(z, (int, float)) and math.isfinite(z) for z in zoom) or \
                not 0.1 <= zoom[0] <= zoom[1] <= 10:
            raise BlazeportError(f"--zoom must be MIN,MAX with 0.1 <= MIN <= MAX <= 10 (got {self.zoom!r})")
        if not isinstance(self.augment, str):
            raise BlazeportError(f"--augment must be text such as {DEFAULT_AUGMENT} (got {self.augment!r})")
        aug = AugmentConfig.parse(self.augment, zoom)
        geometric = sorted(f"ns_{n}" for n in noisy_terms(aug) if n in GEOMETRIC)
        if geometric and LossConfig.parse(self.loss, alpha=self.alpha, temperature=self.temperature).needs_features:
            raise BlazeportError(f"--augment {','.join(geometric)} moves faces, and the teacher's feature maps cannot be "
                                 f"carried through that change for the mgd term of --loss {self.loss}: drop one of them")

    def _check_models(self) -> None:
        """The teacher is a converted original; the student builds, meets its head and gives finite
        outputs (:func:`~blazeport.models.student.build_student` names what is wrong). A user's
        factory is imported and called here, before the teacher or any image is loaded."""
        from blazeport.models import build_student

        spec = spec_named(self.teacher, detectors_only=True)  # an unknown name lists the known ones
        if spec.tflite is None:
            raise BlazeportError(f"teacher {spec.name} has no original .tflite to check it against; use a converted "
                                 "original (e.g. --teacher short_range)")
        student = build_student(self.student, spec, self._backbone)
        if self.init is not None:
            init_weights(student, self.init, spec)
        if LossConfig.parse(self.loss, alpha=self.alpha, temperature=self.temperature).needs_features and not (
                callable(getattr(student, "features", None)) and hasattr(student, "head") and student.feature_channels):
            raise BlazeportError(f"--loss {self.loss}: the feature-map term needs a student with features(x), head and "
                                 f"feature_channels; {self.student} meets the head contract on its own. Drop the mgd term")

    def _check_device(self) -> None:
        if self.device == "auto":
            return
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError, ValueError):
            raise BlazeportError(f"--device {self.device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BlazeportError(f"--device {self.device}: no CUDA GPU is available here; use --device cpu")

    def _check_out(self) -> None:
        out = Path(self.out)
        if self.cache_dir is not None:
            cache = Path(self.cache_dir).resolve()
            if cache.exists() and not cache.is_dir():
                raise BlazeportError(f"--cache-dir {self.cache_dir} is a file, not a folder; choose another --cache-dir")
            for src in self.images:
                folder = Path(src).resolve()
                if folder.is_dir() and (cache == folder or folder in cache.parents):
                    raise BlazeportError(f"--cache-dir {self.cache_dir} is inside --images {src}: the cache is never "
                                         "written beside your photos; choose a folder outside it")
        if self.init is not None and same_file(out / "student.safetensors", self.init):
            raise BlazeportError(f"--init {self.init} is the student.safetensors this run writes at its end; "
                                 "choose another --out (or copy the file)")
        for folder in (out, *out.parents):
            if folder.exists():
                if not folder.is_dir():
                    raise BlazeportError(f"--out {out}: {folder} is a file, not a folder; choose another --out")
                break


def init_weights(student: torch.nn.Module, path: str, teacher: Any) -> None:
    """Load ``--init``'s weights into ``student``: a student of the same teacher and architecture, every
    tensor of the same shape, or one message naming the file and what differs. Only the file's tensors
    and spec are read (:func:`~blazeport.modelfiles.weights.read_weights`): its module is never rebuilt, so a
    backbone module the file names is never imported."""
    from blazeport.modelfiles.weights import read_weights

    meta, spec, state = read_weights(path)  # checks the file; a user's file is data, never unpickled
    if spec.teacher != teacher.name:
        raise BlazeportError(f"--init {path}: a student of {spec.teacher or spec.name}, not of --teacher {teacher.name}")
    if meta.get("pruned") == "true":  # a `blazeport prune` output: the same architecture, cut to its widths
        from blazeport.pruning.prune import apply_widths

        apply_widths(student, state, spec.input_size)
    mine = {k: tuple(v.shape) for k, v in student.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state.items()}
    if mine != theirs:
        diff = sorted(set(mine) ^ set(theirs)) or [k for k in mine if mine[k] != theirs[k]]
        raise BlazeportError(f"--init {path}: its tensors do not fit --student ({len(diff)} differ, e.g. {diff[0]}); "
                             f"pass the --student it was trained as ({spec.architecture})")
    student.load_state_dict(state)


def _whole(name: str, value: Any, least: int, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise BlazeportError(f"{name} must be a whole number of at least {least} (got {value!r}){why}")


def _real(name: str, value: Any, low: float, high: float, low_open: bool, high_open: bool, why: str = "") -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise BlazeportError(f"{name} must be a finite number in {span} (got {value!r}){why}")
