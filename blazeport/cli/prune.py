"""``blazeport prune``: network-slimming channel pruning of a student, written as a verified .safetensors."""

from __future__ import annotations

import argparse
import math
from typing import Any

from blazeport.cli.common import add_max_pixels, positive_int, print_json, read_images
from blazeport.errors import BlazeportError
from blazeport.options import add_overwrite, add_trust_code


def _macs(text: str) -> float:
    """``12e6``, ``12M`` or ``12000000``; nan, inf and counts <= 0 are refused here (nan compared false
    with every MACs figure and pruned to the maximum)."""
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(text[-1:].lower(), 1.0)
    try:
        value = float(text[:-1] if scale != 1.0 else text) * scale
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"not a MACs count: {text!r} (a positive number, e.g. 12M or 12e6)")
    return value


def _ratio(text: str) -> float:
    """A share strictly between 0 and 1, refused at parsing otherwise (nan and inf included)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < 1.0:  # false for nan too
        raise argparse.ArgumentTypeError(f"expected the share of channels to remove, a number between 0 and 1 "
                                         f"(e.g. 0.5), got {text!r}")
    return value


def cmd_prune(args: argparse.Namespace) -> int:
    from blazeport.pruning.workflow import prune_file  # torch: needed to prune, not for `--help`

    if args.ratio is None and args.macs is None:
        raise BlazeportError("give --ratio R (share of channels to remove) or --macs M (a budget, e.g. 12M)")
    images = read_images(args.images, args.max_pixels) if args.images else None
    r = prune_file(args.model, args.output, ratio=args.ratio, macs=args.macs, round_to=args.round_to, images=images,
                   trust_code=args.trust_code, overwrite=args.overwrite)
    if args.json:
        print_json(r)
        return 0
    print(f"pruned {r['source']} -> {r['output']}  (spec {r['spec']})")
    print(f"  channels  {r['channels_removed']} of {r['channels_prunable']} removed (ratio {r['ratio_achieved']:.3f}, "
          f"|gamma| threshold {r['threshold']:.3g}, widths rounded up to multiples of {r['round_to']})")
    print(f"  params    {r['params_before']:,} -> {r['params_after']:,}  ({r['params_after'] / r['params_before']:.2f}x)")
    print(f"  MACs      {r['macs_before']:,} -> {r['macs_after']:,}  ({r['macs_after'] / r['macs_before']:.2f}x)")
    if r["floored_layers"]:
        print(f"  kept at the floor of {r['round_to']} channels (the threshold would have emptied them): "
              f"{', '.join(r['floored_layers'])}")
    changed = [x for x in r["layers"] if x["after"] != x["before"]]
    print(f"  {len(changed)} of {len(r['layers'])} convs narrowed: "
          + ", ".join(f"{x['layer']} {x['before']}->{x['after']}" for x in changed[:6]) + (" ..." if len(changed) > 6 else ""))
    a = r["agreement_with_unpruned"]
    if a["AP50"] is None:  # no references: the unpruned student finds no face on them
        print(f"before fine-tuning: AP against the unpruned student cannot be measured, it finds no faces on these "
              f"{r['images']} photo(s) (give --images with faces it finds)")
    else:
        print(f"before fine-tuning, against the unpruned student on {r['images']} photos: AP50 {a['AP50']:.3f}  "
              f"AP {a['AP']:.3f}")
    print(f"next: blazeport distill --init {r['output']} --student <the same --student> --teacher <its teacher> ...")
    return 0


def add_parser(sub: Any, fmt: Any) -> None:
    """The ``prune`` subcommand's arguments."""
    p = sub.add_parser("prune", help="remove a student's channels by BatchNorm |gamma| (network slimming)",
                       description="Network slimming: rank every prunable channel of a distilled student by its BatchNorm "
                       "scale |gamma| (train with `blazeport distill --sparsity 1e-4` first so unneeded ones shrink), cut at "
                       "one global threshold (--ratio) or to a MACs budget (--macs), keep at least --round-to channels per "
                       "layer and round every width up to a multiple of it. Torch-Pruning's dependency graph keeps "
                       "residual adds, depthwise groups, the neck and the SSD head consistent. The output reloads, exports "
                       "and benchmarks like any student; fine-tune it with `blazeport distill --init OUT`.",
                       formatter_class=fmt)
    p.add_argument("model", metavar="MODEL", help="a student .safetensors (from `blazeport distill`)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--ratio", type=_ratio, help="share of the prunable channels to remove, e.g. 0.5")
    how.add_argument("--macs", type=_macs, help="prune until the model has at most this many MACs (e.g. 12M)")
    p.add_argument("--round-to", type=positive_int, default=8,
                   help="every pruned width becomes a multiple of this, and no layer keeps fewer (default 8)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.safetensors", help="the pruned student")
    p.add_argument("--images", nargs="+",
                   help="photos or folders on which to compare the pruned and unpruned detections (default: 5 bundled)")
    p.add_argument("--json", action="store_true", help="print the report as JSON, with every conv's width before and after")
    add_max_pixels(p)
    add_trust_code(p)
    add_overwrite(p)
    p.set_defaults(func=cmd_prune)
