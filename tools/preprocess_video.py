"""Official ShanghaiTech Campus -> the authors' layout: background removed, resized, JPEG frames, once.

    python -m tools.preprocess_video --src <official ShanghaiTech> --dst <root> [--background-recipe lsa|native]
"""
from __future__ import annotations

import argparse
from typing import Sequence

from datasets.background import DEFAULT_DILATE_ITERATIONS, DEFAULT_RECIPE, DEFAULT_THRESHOLD, RECIPES
from datasets.video import SHANGHAITECH_SIZE, preprocess_shanghaitech
from utils import cli
from utils.errors import exit_on_user_error


def _parser() -> argparse.ArgumentParser:
    pre = cli.FlagParser(prog="python -m tools.preprocess_video", description=__doc__.splitlines()[0])
    pre.add_argument("--src", required=True, help="official ShanghaiTech root (training/videos, testing/frames)")
    pre.add_argument("--dst", required=True, help="output root (the -dp of training)")
    pre.add_argument("--size", type=int, nargs=2, default=list(SHANGHAITECH_SIZE), metavar=("H", "W"))
    pre.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="summed |RGB - background| cut")
    pre.add_argument("--dilate-iterations", type=int, default=DEFAULT_DILATE_ITERATIONS)
    pre.add_argument("--background-recipe", dest="background_recipe", choices=sorted(RECIPES), default=DEFAULT_RECIPE,
                     help="lsa: resize, then MOG2 with OpenCV defaults, 3x3-cross dilation (LSA); native: MOG2 "
                          "at native size (history = frames, no shadows), 3x3-square dilation, then resize")
    pre.add_argument("--jpeg-quality", type=int, default=100)
    return pre


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    counts = preprocess_shanghaitech(
        args.src, args.dst, args.size, threshold=args.threshold,
        dilate_iterations=args.dilate_iterations, background_recipe=args.background_recipe,
        jpeg_quality=args.jpeg_quality,
    )
    print(f"done: {counts['written']} clips written, {counts['skipped']} already present")


if __name__ == "__main__":
    main()
