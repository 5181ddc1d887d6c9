"""What the subcommands share: argument types, JSON output, reading the photos they verify on."""

from __future__ import annotations

import argparse
import json
import sys

from blazeport.data import list_images
from blazeport.errors import BlazeportError
from blazeport.preprocess import MAX_PIXELS, ImageReadError, read_image


def positive_int(text: str) -> int:
    """argparse type for counts such as --threads: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def add_max_pixels(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-pixels", type=positive_int, metavar="N",
                        help=f"skip (and count) images over N pixels, read from the file header before decoding "
                        f"(default {MAX_PIXELS:,})")


def print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def read_images(paths: list[str], max_pixels: int | None) -> list:
    images = []
    for p in list_images(paths):
        try:
            images.append(read_image(p, max_pixels=max_pixels))
        except ImageReadError as exc:
            print(f"skipped: {exc}", file=sys.stderr)
    if not images:
        raise BlazeportError(f"no readable images in {' '.join(paths)}")
    return images
