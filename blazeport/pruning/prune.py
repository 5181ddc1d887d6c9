"""``blazeport prune``: remove a student's channels by BatchNorm ``|gamma|`` (network slimming).

Recipe (Liu et al. 2017, as applied to a MobileNetV2 student after KD in the write-up this product
grew from): distill with ``--sparsity`` so unneeded channels' BN scale factors shrink
(:mod:`blazeport.pruning.slimming`); rank every prunable channel of the network together by
``|gamma|`` and cut at one global threshold chosen by a ratio (or by a MACs budget); keep at least
``round_to`` channels in every layer so none collapses; round each kept width *up* to a multiple of
``round_to`` (mobile kernels like multiples of 8), keeping the next most important channels; then
fine-tune with ``blazeport distill --init``.

The channels of a network are not independent: a residual add ties the outputs of every block of
a stage to its shortcut, a depthwise conv's outputs are its inputs, the neck adds its levels, and
the SSD head's inputs follow its feature maps. Torch-Pruning's :class:`DependencyGraph` (the kept
library for this) finds those groups by tracing one forward; each group is ranked by the mean
``|gamma|`` of its coupled BatchNorms (``BNScaleImportance`` without per-group normalisation, so
one threshold compares all layers, as in the paper) and pruned as one. The head's classifier and
regressor outputs (anchors x coordinates) are never pruned.

A pruned student is written like any other (:func:`blazeport.modelfiles.weights.save_safetensors`) plus a
``pruned`` metadata entry; loading rebuilds the unpruned architecture from its config and replays
the widths found in the file's tensors (:func:`apply_widths`), so the same DependencyGraph decides
the shapes on both sides and nothing but tensors and JSON is stored.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from blazeport.errors import BlazeportError
from blazeport.modelfiles.counting import count_macs, count_params
from blazeport.pruning.slimming import batchnorms

__all__ = ["PrunePlan", "apply_widths", "conv_widths", "plan_macs", "plan_ratio", "prune"]


@dataclass
class PrunePlan:
    """What a prune removes: for each group's root conv, the channel indices to drop, and the layers
    whose threshold would have emptied them (kept at the floor instead)."""

    ratio: float  # the requested share of prunable channels
    threshold: float
    remove: dict[str, list[int]] = field(default_factory=dict)  # root conv name -> channel indices
    floored: list[str] = field(default_factory=list)
    prunable: int = 0  # channels in all groups
    removed: int = 0

    @property
    def achieved(self) -> float:
        return self.removed / self.prunable if self.prunable else 0.0


def _head_outputs(module: nn.Module) -> list[nn.Module]:
    """The layers whose output channels are the contract (anchors x coordinates): never pruned."""
    head = getattr(module, "head", None)
    if head is None or not hasattr(head, "cls"):
        raise BlazeportError(f"{type(module).__name__}: pruning needs a student with an SSD head (head.cls, head.reg); "
                             "a backbone that meets the head contract by itself cannot be pruned here")
    return [*head.cls, *head.reg]


def _graph(module: nn.Module, size: int) -> Any:
    import torch_pruning as tp

    module.eval()
    try:
        with torch.enable_grad():  # the graph is traced through autograd
            return tp.DependencyGraph().build_dependency(
                module, example_inputs=torch.zeros(1, 3, size, size),
                output_transform=lambda out: out[0].sum() + out[1].sum(), verbose=False)
    except BlazeportError:
        raise
    except Exception as exc:  # tracing a user's backbone: any failure is one message
        raise BlazeportError(f"{type(module).__name__}: Torch-Pruning could not trace its channel dependencies "
                             f"({type(exc).__name__}: {exc})") from None


def _groups(module: nn.Module, graph: Any) -> Iterator[tuple[str, nn.Module, Any]]:
    """(root conv name, root conv, group) for every group of channels that can be pruned together."""
    names = {m: n for n, m in module.named_modules()}
    for group in graph.get_all_groups(ignored_layers=_head_outputs(module), root_module_types=[nn.Conv2d]):
        root = group[0].dep.target.module
        yield names[root], root, group


def conv_widths(module: nn.Module) -> dict[str, int]:
    """Every conv's output channels by module name (the per-layer table of ``--json``)."""
    return {n: m.out_channels for n, m in module.named_modules() if isinstance(m, nn.Conv2d)}


def _importances(module: nn.Module, size: int) -> list[tuple[str, torch.Tensor]]:
    import torch_pruning as tp

    if not batchnorms(module):
        raise BlazeportError(f"{type(module).__name__} has no BatchNorm layers to rank channels by; prune a student "
                             "(a converted original has its BatchNorm folded away)")
    scorer = tp.importance.BNScaleImportance(normalizer=None)  # raw |gamma|: one threshold for every layer
    out = []
    with torch.no_grad():
        for name, _, group in _groups(module, _graph(module, size)):
            score = scorer(group)
            if score is not None:  # a group without BatchNorm (none in our students) is left whole
                out.append((name, score.detach().float().cpu()))
    if not out:
        raise BlazeportError(f"{type(module).__name__}: no channel group has a BatchNorm to rank it by")
    return out


def _kept(n: int, round_to: int) -> int:
    """The floor of a layer: ``round_to`` channels, or all of them when it has fewer."""
    return min(n, round_to)


def max_ratio(scores: list[tuple[str, torch.Tensor]], round_to: int) -> float:
    """The largest share of prunable channels that can go while every layer keeps its floor."""
    total = sum(len(s) for _, s in scores)
    return sum(len(s) - _kept(len(s), round_to) for _, s in scores) / total


def _plan(scores: list[tuple[str, torch.Tensor]], ratio: float, round_to: int) -> PrunePlan:
    allg = torch.cat([s for _, s in scores])
    k = math.floor(ratio * len(allg))
    threshold = float(torch.sort(allg).values[k - 1]) if k > 0 else -math.inf
    plan = PrunePlan(ratio, threshold, prunable=len(allg))
    for name, s in scores:
        n = len(s)
        above = int((s > threshold).sum())
        if above == 0:
            plan.floored.append(name)
        keep = min(n, max(_kept(n, round_to), math.ceil(above / round_to) * round_to))
        if keep < n:
            order = torch.argsort(s, descending=True, stable=True)
            plan.remove[name] = sorted(int(i) for i in order[keep:])
            plan.removed += n - keep
    return plan


def plan_ratio(module: nn.Module, size: int, ratio: float, round_to: int = 8) -> PrunePlan:
    """The plan that removes about ``ratio`` of the prunable channels (less after rounding up)."""
    if not 0.0 < ratio < 1.0:
        raise BlazeportError(f"--ratio must be between 0 and 1 (the share of channels to remove), got {ratio}")
    scores = _importances(module, size)
    most = max_ratio(scores, round_to)
    if ratio > most:
        raise BlazeportError(f"--ratio {ratio:g} would remove whole layers: keeping at least {round_to} channels in every "
                             f"layer, at most {math.floor(most * 100) / 100:.2f} of the prunable channels can go; "
                             "lower --ratio (or --round-to)")
    return _plan(scores, ratio, round_to)


def smallest_ratio(module: nn.Module, size: int, round_to: int = 8) -> float | None:
    """The smallest ``--ratio`` (to 3 decimals, rounded up) whose plan removes at least one channel, or
    None when none does: widths are rounded *up* to multiples of ``round_to``, so a small ratio
    may cut below no layer's next multiple and remove nothing (a ``_pruned0`` file equal to its source).

    The channels a plan removes never fall as the ratio grows (a higher threshold leaves fewer
    channels above it in every layer), so the smallest channel count is found by bisection."""
    scores = _importances(module, size)
    n = sum(len(s) for _, s in scores)
    lo, hi = 0, math.floor(max_ratio(scores, round_to) * n)  # lo removes nothing; find the least k that does

    def removes(k: int) -> bool:
        return _plan(scores, (k + 0.5) / n, round_to).removed > 0  # +0.5: floor(ratio * n) is k, float error aside

    if hi < 1 or not removes(hi):
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if removes(mid) else (mid, hi)
    shown = math.ceil(hi / n * 1000) / 1000
    while _plan(scores, shown, round_to).removed == 0:  # rounding to 3 decimals landed on a float just below
        shown = round(shown + 0.001, 3)
    return shown


def plan_macs(module: nn.Module, size: int, macs: float, round_to: int = 8) -> PrunePlan:
    """The least pruning whose MACs are at most ``macs`` (bisection on the ratio; MACs fall with it)."""
    scores = _importances(module, size)
    before = count_macs(module, size)
    if macs >= before:
        raise BlazeportError(f"--macs {macs:,.0f}: the model already has {before:,} MACs; nothing to prune")
    lo, hi = 0.0, max_ratio(scores, round_to)

    def macs_at(r: float) -> int:
        return count_macs(apply_plan(copy.deepcopy(module), size, _plan(scores, r, round_to)), size)

    smallest = macs_at(hi)
    if smallest > macs:
        raise BlazeportError(f"--macs {macs:,.0f} is below what this model can reach keeping {round_to} channels per layer "
                             f"({smallest:,} MACs, ratio {hi:.2f}); raise --macs or lower --round-to")
    for _ in range(12):  # to 1/4096 of the ratio: finer than one channel of these students
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if macs_at(mid) <= macs else (mid, hi)
    return _plan(scores, hi, round_to)


def apply_plan(module: nn.Module, size: int, plan: PrunePlan) -> nn.Module:
    """Prune ``module`` in place by ``plan`` (group by group, through the dependency graph)."""
    import torch_pruning as tp

    graph = _graph(module, size)
    roots = {n: m for n, m, _ in _groups(module, graph)}
    for name, idxs in plan.remove.items():
        graph.get_pruning_group(roots[name], tp.prune_conv_out_channels, idxs=idxs).prune()
    return module


def apply_widths(module: nn.Module, state: dict[str, torch.Tensor], size: int) -> nn.Module:
    """Shrink a freshly built (unpruned) ``module`` in place to the widths of a pruned file's tensors.

    Each group's root conv is cut to the output channels its weight has in ``state`` (the last
    channels go: the weights are loaded afterwards, so which indices go does not matter, only the
    shapes, and the dependency graph carries them to every coupled layer as when it was pruned).
    """
    import torch_pruning as tp

    graph = _graph(module, size)
    for name, root, _ in list(_groups(module, graph)):
        key = f"{name}.weight"
        if key not in state:
            continue
        want, have = int(state[key].shape[0]), root.out_channels
        if 0 < want < have:
            graph.get_pruning_group(root, tp.prune_conv_out_channels, idxs=list(range(want, have))).prune()
    module.pruned = True
    return module


def prune(module: nn.Module, size: int, *, ratio: float | None = None, macs: float | None = None,
          round_to: int = 8) -> tuple[nn.Module, dict[str, Any]]:
    """A pruned copy of ``module`` and the report: params and MACs before and after, the achieved
    ratio, the threshold, floored layers, and every conv's width before and after."""
    if (ratio is None) == (macs is None):
        raise BlazeportError("give exactly one of --ratio R or --macs M")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise BlazeportError(f"--round-to must be a whole number of at least 1, got {round_to!r}")
    if macs is not None and not (math.isfinite(macs) and macs > 0):  # nan compares false: it pruned to the maximum
        raise BlazeportError(f"--macs must be a positive number of multiply-accumulates (e.g. 12e6), got {macs}")
    module = copy.deepcopy(module).eval()
    before = {"params": count_params(module), "macs": count_macs(module, size), "widths": conv_widths(module)}
    plan = plan_ratio(module, size, ratio, round_to) if ratio is not None else plan_macs(module, size, macs, round_to)
    pruned = apply_plan(module, size, plan)
    pruned.pruned = True
    after = {"params": count_params(pruned), "macs": count_macs(pruned, size), "widths": conv_widths(pruned)}
    layers = [{"layer": n, "before": w, "after": after["widths"][n]} for n, w in before["widths"].items()]
    return pruned, {
        "ratio_requested": ratio, "macs_requested": macs, "round_to": round_to, "ratio_threshold": plan.ratio,
        "ratio_achieved": round(plan.achieved, 4), "threshold": plan.threshold,
        "channels_prunable": plan.prunable, "channels_removed": plan.removed, "floored_layers": plan.floored,
        "params_before": before["params"], "params_after": after["params"],
        "macs_before": before["macs"], "macs_after": after["macs"], "layers": layers,
    }
