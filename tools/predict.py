"""Score your own images with a trained model: one CSV row per image, with a decision.

    python -m tools.predict -ck <run>/model.pt <image files or folders> --out scores.csv [--threshold T]

The images get the preprocessing of the run that trained the model, read from the ``config.yaml``
beside the checkpoint: CIFAR-10 models resize to 32x32 and apply GCN-L1 with the normal class's
min-max constants; MVTec AD models resize to the run's input size and scale to [-1, 1] (textures:
512x512, scored as the max over their 64 patches, eq. 7). The decision is ``score > threshold``:
by default the one stored at training (0 for the soft boundary: d^2 > R^2 on average over the
layers; the (1 - nu) quantile of the training scores for the hard boundary).
"""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
import yaml

from trainers.mocca import MOCCA
from utils import cli
from utils.errors import UserError, exit_on_user_error
from utils.io import read_image, write_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def image_files(inputs: Sequence[str]) -> list[Path]:
    """The files given, and the image files inside the folders given (sorted), in that order."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(f for f in item.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {item}")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise UserError(f"{item} does not exist: give image files or folders")
    return files


def read_rgb(path: Path, size: int) -> np.ndarray:
    """(size, size, 3) uint8 RGB for CIFAR-10 models; a file OpenCV cannot decode is an error naming it."""
    image = read_image(path)
    if image.shape[:2] != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image[:, :, ::-1])


def run_config(checkpoint: Path) -> dict:
    path = checkpoint.parent / "config.yaml"
    if not path.is_file():
        raise UserError(f"no config.yaml beside {checkpoint}: predict needs the run folder that trained the model")
    return yaml.safe_load(path.read_text()) or {}


def preprocess(files: list[Path], arch: dict, config: dict) -> tuple[torch.Tensor, int | None]:
    """Model-ready tensors for ``files`` and the patches per image (eq. 7) for textures, else None."""
    if arch["model"] == "lenet":
        from datasets.cifar10 import preprocess as cifar_preprocess

        return cifar_preprocess(np.stack([read_rgb(f, 32) for f in files]), int(config["normal_class"])), None
    if arch["model"] == "residual2d":
        from datasets.mvtec import (PATCHES_PER_IMAGE, category_spec, decode_image, downscale, extract_patches,
                                    to_model_range)

        # as main_mvtec, with its decoder: the category's size, then (objects) down to the run's input size
        spec = category_spec(str(config["normal_class"]), texture=config.get("texture"))
        x = torch.from_numpy(np.stack([decode_image(f, spec.image_size, grey=False) for f in files]))
        if not spec.is_texture and int(arch["input_size"]) != spec.image_size:
            x = downscale(x, int(arch["input_size"]))
        x = x.contiguous()
        if spec.is_texture:
            return to_model_range(extract_patches(x)), PATCHES_PER_IMAGE
        return to_model_range(x), None
    raise UserError(f"predict scores image models (CIFAR-10, MVTec AD); this checkpoint holds {arch['model']!r}")


def predict(checkpoint: Path, inputs: Sequence[str], out: Path, threshold: float | None = None,
            device: str = "auto") -> list[dict]:
    """Score the images; write ``out`` (atomically) and return its rows."""
    try:
        model = MOCCA.load(checkpoint, device=device)
    except ValueError as err:
        raise UserError(str(err)) from err
    arch = {**model.arch, **model.net_arch}
    files = image_files(inputs)
    x, patches = preprocess(files, arch, run_config(checkpoint))
    scores = model.score(x, patches)
    cut = model.threshold if threshold is None else threshold
    if cut is None:
        raise UserError(f"{checkpoint} stores no decision threshold (trained before thresholds were "
                        "stored): pass --threshold")
    layers = list(scores.per_layer)
    rows = []
    for i, f in enumerate(files):
        row = {"path": str(f), "score": float(scores.combined[i])}
        row.update({f"score_layer_{j}": float(scores.per_layer[j][i]) for j in layers})
        row.update({"threshold": cut, "anomalous": int(scores.combined[i] > cut)})
        rows.append(row)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(out, buf.getvalue())
    return rows


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> list[dict]:
    p = cli.FlagParser("python -m tools.predict", description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("-ck", "--model-ckp", dest="checkpoint", required=True, help="model.pt of a trained run")
    p.add_argument("--out", required=True, help="CSV to write: path, score, score_layer_<j>, threshold, anomalous")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the stored one)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    rows = predict(Path(args.checkpoint), args.inputs, Path(args.out), args.threshold, args.device)
    print(f"{len(rows)} images scored, {sum(r['anomalous'] for r in rows)} above the threshold "
          f"{rows[0]['threshold']:.4g} -> {args.out}")
    return rows


if __name__ == "__main__":
    main()
