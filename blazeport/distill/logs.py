"""What a distillation run writes for people to read, all from the main process.

:class:`RunLogs` owns them: TensorBoard scalars in ``RUN/tensorboard`` (each loss term and the
learning rate per step; per epoch the validation metrics and the student's BatchNorm ``|gamma|``
histogram), ``RUN/metrics.json`` (the per-epoch history), ``RUN/curves.png`` (:func:`plot_curves`),
one line per epoch on stderr, and ``RUN/summary.json`` at the end. The checkpoints and the student's weights are not logs: see
:mod:`blazeport.distill.checkpoint` and :mod:`blazeport.distill.trainer`.

Every file here but TensorBoard's (an event file its writer appends to) is rendered in memory and
written with :func:`blazeport.files.write_atomic`: on a full disk the run stops with one
:class:`~blazeport.errors.BlazeportError` naming the file, and the previous version of the file
(or none) is left, never a 0-byte or half-written one.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from blazeport import files
from blazeport.pruning.slimming import gamma_summary


def json_bytes(value: Any) -> bytes:
    """``value`` as the indented JSON every run file uses, ready for :func:`blazeport.files.write_atomic`."""
    return json.dumps(value, indent=2).encode()


class RunLogs:
    """TensorBoard, metrics.json, curves.png, the epoch line and summary.json of the run in ``out``."""

    def __init__(self, out: Path):
        self.out = out
        self.writer = SummaryWriter(str(out / "tensorboard"))

    def step(self, losses: dict[str, torch.Tensor], lr: float, step: int) -> None:
        """One training step's loss terms and learning rate."""
        for k, v in losses.items():
            self.writer.add_scalar(f"train/{k}", v.item(), step)
        self.writer.add_scalar("train/lr", lr, step)

    def epoch(self, history: list[dict[str, Any]], improved: bool, student: torch.nn.Module | None = None) -> None:
        """The epoch just recorded as ``history[-1]``: its validation scalars, the student's BatchNorm
        ``|gamma|`` distribution (what ``--sparsity`` shapes and ``blazeport prune`` cuts), the history
        and the curves rewritten, and its line on stderr."""
        record = history[-1]
        for k, v in record.items():
            if k.startswith("val_"):
                self.writer.add_scalar(f"val/{k[4:]}", v, record["epoch"])
        if student is not None:
            gammas, stats = gamma_summary(student)
            if len(gammas):
                self.writer.add_histogram("bn/abs_gamma", gammas, record["epoch"])
                for k, v in stats.items():
                    self.writer.add_scalar(f"bn/abs_gamma_{k}", v, record["epoch"])
        files.write_atomic(self.out / "metrics.json", json_bytes(history))
        plot_curves(history, self.out / "curves.png")
        tqdm.write(f"epoch {record['epoch']}: loss {record['train_total']:.4f}  val AP50 {record['val_AP50']:.3f}  "
                   f"AP {record['val_AP']:.3f}  score MAE {record['val_mae_scores']:.4f}"
                   f"{'  (best)' if improved else ''}", file=sys.stderr)

    def finish(self, summary: dict[str, Any]) -> None:
        """Close TensorBoard and write ``summary.json``."""
        self.writer.close()
        files.write_atomic(self.out / "summary.json", json_bytes(summary))


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """Loss terms, held-out AP and MAE against the teacher, per epoch, as one PNG.

    A bare :class:`~matplotlib.figure.Figure` renders with Agg without pyplot, so plotting neither
    switches the process's matplotlib backend nor keeps figures alive.
    """
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(14, 4))
    axes = fig.subplots(1, 3)
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)  # rendered in memory: the file is written whole or not at all
    files.write_atomic(path, buf.getvalue())
