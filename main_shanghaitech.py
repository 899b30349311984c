"""MOCCA on video: python main_shanghaitech.py -dp <ShanghaiTech root> -ee -tt -zl 1024 -ll -use.

Also UCSD Ped2 and CUHK Avenue (``--dataset ped2|avenue``) in the common frames layout. Training is
single-stage end to end, as the paper does for video (``trainers.video_pipeline``).
"""
from __future__ import annotations

import sys
from typing import Sequence

from models.video3d import LAYER_NAMES
from trainers.settings import choose_layers, pipeline_settings, video_settings
from trainers.video_pipeline import run_video
from utils import results
from utils.cli import video_config
from utils.errors import UserError, exit_on_user_error


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> dict | None:
    config = video_config(sys.argv[1:] if argv is None else argv)
    if config["pretrain"] or config["train"]:
        raise UserError("video models train in one stage, as in the paper: use -ee (end to end) and -tt, not -ptr/-tr")
    if config["disable_logging"]:
        config["no_progress"] = True
    layers = choose_layers(config["idx_list_enc"], tuple(LAYER_NAMES))
    run_dir = results.run_dir_for(config, config["dataset"], "video", layers)
    return run_video(video_settings(config, layers), pipeline_settings(config), config, run_dir,
                     (lambda s: None) if config["disable_logging"] else print)


if __name__ == "__main__":
    main()
