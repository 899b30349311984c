"""MOCCA on video: python main_shanghaitech.py -dp <ShanghaiTech root> -ee -tt -zl 1024 -ll -use.

Also UCSD Ped2 and CUHK Avenue (``--dataset ped2|avenue``) in the common frames layout. Training is
single-stage end to end, as the paper does for video (``trainers.video_pipeline``).
"""
from __future__ import annotations

import sys
from typing import Sequence

from trainers.video_pipeline import run_video
from utils.cli import video_config
from utils.errors import exit_on_user_error


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> dict | None:
    config = video_config(sys.argv[1:] if argv is None else argv)
    if config["disable_logging"]:
        config["no_progress"] = True
    return run_video(config, (lambda s: None) if config["disable_logging"] else print)


if __name__ == "__main__":
    main()
