"""What a distillation run leaves behind: student files (the best epoch's, and with ``--keep-every`` one per
N-th epoch) and the summary written to ``summary.json``.

A student file is an inference file (spec, weights, the run's record as its summary): what ``blazeport detect``,
``eval`` and :func:`blazeport.load` open. The functions take the :class:`~blazeport.distill.trainer.Run` they
describe, read only.
"""

from __future__ import annotations

import copy
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from blazeport.modelfiles.counting import count_macs, count_params
from blazeport.modelfiles.weights import save_safetensors
from blazeport.models import architecture_name
from blazeport.specs import student_spec

Run = Any  # blazeport.distill.trainer.Run, which imports this module: not imported back (no import circle)

__all__ = ["keep_epoch", "run_summary", "write_student"]


def write_student(run: Run, student: nn.Module, path: Path, record: dict[str, Any]) -> None:
    """An inference file of ``student`` (its spec from the teacher's, weights, ``record`` as its summary)."""
    spec = run.teacher.spec
    pruned = "_pruned" if getattr(student, "pruned", False) else ""  # fine-tuned from a `blazeport prune` output
    s_spec = student_spec(spec, run.cfg.student, student.family,
                          name=f"{spec.name}_{architecture_name(run.cfg.student)}{pruned}")
    save_safetensors(student, s_spec, path, extra={"teacher": spec.name, "summary": json.dumps(record)})


def keep_epoch(run: Run, epoch: int) -> None:
    """``--keep-every N``: the student as it stands after epoch ``epoch`` (0-based), as
    ``epochs/student_eNNNN.safetensors``, to measure on other photos where more epochs stop helping.
    Copied to the CPU so training's weights are untouched."""
    if not run.cfg.keep_every or (epoch + 1) % run.cfg.keep_every:
        return
    student = copy.deepcopy(run.joint.student).to("cpu").eval()
    (run.out / "epochs").mkdir(exist_ok=True)
    write_student(run, student, run.out / "epochs" / f"student_e{epoch + 1:04d}.safetensors",
                  {"epoch": epoch + 1, "record": run.history[-1], "loss": run.loss_cfg.describe()})


def run_summary(run: Run, student: nn.Module, test: dict[str, float] | None) -> dict[str, Any]:
    """``summary.json``: the chosen epoch, its test figures, sizes, speed and the whole config."""
    history, cfg, spec = run.history, run.cfg, run.teacher.spec
    best_record = max(history, key=lambda h: h["val_AP50"]) if history else {}
    return {
        "teacher": spec.name,
        "teacher_check_max_abs_diff": run.teacher.check["max_abs_diff"],
        "student": cfg.student,
        "params": count_params(student),
        "macs": count_macs(student, spec.input_size),
        "loss": run.loss_cfg.describe(),
        "test": test,  # None when --test-fraction left no test images
        "images": {"train": len(run.data.train_set), "val": len(run.data.val_batches.dataset),
                   "test": len(run.data.test_batches.dataset), "skipped_unreadable": len(run.skipped)},
        "epochs": cfg.epochs,
        "best_epoch": best_record.get("epoch"),
        "best": best_record,
        "final": history[-1] if history else {},
        "train_images_per_second": float(np.mean([h["images_per_second"] for h in history])) if history else None,
        "seconds_this_session": round(time.perf_counter() - run.t_start, 1),
        "images_seen_this_session": run.images_seen,
        "device": str(run.device),
        "world_size": run.world,
        "host": {"machine": platform.machine(), "processor": platform.processor(), "torch": torch.__version__,
                 "threads": torch.get_num_threads()},
        "config": asdict(cfg),
    }
