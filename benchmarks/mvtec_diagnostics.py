"""Why a short MVTec run scores what it scores: reference AUCs next to a run's own.

For one category at one image size this prints the test AUC of
  * the raw-pixel squared distance to the mean training image (no network at all);
  * the per-layer centroid distance of an encoder (random init, or the AE checkpoint given), with the
    centroid taken over the training images as they are and over rotation-augmented ones (what the
    method uses; the test images are never rotated);
  * a trained one-class checkpoint (``--model``), scored with its saved BatchNorm statistics and again
    after re-estimating them over the training set (``--recalibrate-bn``), with the mean training
    distance in eval and in train mode (a gap means the running statistics lag the weights).

    .venv/bin/python -m benchmarks.mvtec_diagnostics bottle --image-size 64 [--ae R/ae.pt] [--model R/model.pt]
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from datasets.mvtec import category_spec, downscale, load_mvtec, to_model_range, train_batch_transform
from models.residual2d import ResidualAutoencoder, pool_features
from trainers.mocca import MOCCA
from trainers.objective import recalibrate_batchnorm
from trainers.one_class import ONE_CLASS_KIND, OneClassModel
from trainers.pretrain import AE_KIND
from trainers.scoring import detection_metrics
from utils.checkpoint import load_checkpoint
from utils.errors import UserError, exit_on_user_error

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "mvtec"
BATCH = 32


def auc(labels: np.ndarray, scores: Tensor) -> float:
    return detection_metrics(labels, scores.double().numpy())["auc"]


@torch.no_grad()
def layer_features(encoder: torch.nn.Module, x: Tensor) -> list[Tensor]:
    """Pooled outputs of every encoder layer (eval mode), batch by batch."""
    encoder.eval()
    parts = [[pool_features(o) for o in encoder.layer_outputs(x[i:i + BATCH])] for i in range(0, len(x), BATCH)]
    return [torch.cat(layer) for layer in zip(*parts)]


def centroid_aucs(encoder: torch.nn.Module, train: Tensor, train_aug: Tensor, test: Tensor,
                  labels: np.ndarray) -> list[tuple[int, float, float]]:
    """Per layer: AUC of ||f - c||^2 with c from the plain and from the augmented training images."""
    f_test, f_plain, f_aug = (layer_features(encoder, x) for x in (test, train, train_aug))
    return [(j, auc(labels, (t - p.mean(0)).pow(2).sum(1)), auc(labels, (t - a.mean(0)).pow(2).sum(1)))
            for j, (t, p, a) in enumerate(zip(f_test, f_plain, f_aug))]


@torch.no_grad()
def model_report(path: Path, input_size: int, train_aug: Tensor, test: Tensor, labels: np.ndarray) -> list[str]:
    """AUC per layer with the saved and with re-estimated BatchNorm statistics, and the train/eval gap."""
    ckpt = load_checkpoint(path, ONE_CLASS_KIND)
    arch = ckpt["arch"]
    if arch.get("input_size") != input_size:
        raise UserError(f"{path} was trained at {arch.get('input_size')} px; pass --image-size to match")
    model = MOCCA.load(path, device="cpu").model
    obj, layers = model.objective, model.objective.layer_indices

    def distances(m: OneClassModel, x: Tensor, train_mode: bool = False) -> dict[int, Tensor]:
        m.net.train(train_mode)
        parts = [obj.distances(m.net(x[i:i + BATCH])) for i in range(0, len(x), BATCH)]
        return {k: torch.cat([p[k] for p in parts]) for k in layers}

    lines = []
    recalibrated = copy.deepcopy(model)
    recalibrate_batchnorm(recalibrated.net, (train_aug[i:i + BATCH] for i in range(0, len(train_aug), BATCH)))
    for name, m in (("saved statistics", model), ("re-estimated statistics", recalibrated)):
        test_d, eval_d, train_d = distances(m, test), distances(m, train_aug), distances(m, train_aug, True)
        for k in layers:
            lines.append(f"| {name} | {k} | {auc(labels, test_d[k]):.3f} | {eval_d[k].mean():.4g} | {train_d[k].mean():.4g} |")
    return lines


@exit_on_user_error
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("category")
    p.add_argument("-dp", "--data-path", default=str(SHARED))
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--ae", type=Path, help="an ae.pt; default: a randomly initialised encoder")
    p.add_argument("--model", type=Path, help="a model.pt of a one-class run at this image size")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    spec = category_spec(args.category)
    if spec.is_texture:
        raise UserError("the diagnostics cover object categories (whole images); textures are patches")
    data = load_mvtec(args.data_path, spec.name)
    size = args.image_size
    train_u8, test_u8 = downscale(data.train, size), downscale(data.test, size)
    rotate = train_batch_transform(spec.name)
    train, test = to_model_range(train_u8), to_model_range(test_u8)
    train_aug = to_model_range(rotate(train_u8, torch.Generator().manual_seed(args.seed)))
    labels = data.test_labels.numpy()
    print(f"{spec.name} at {size} px: {len(train)} training images, {len(test)} test images "
          f"({int(labels.sum())} anomalous), training rotation {spec.rotation}")
    print(f"raw pixels, squared distance to the mean training image: AUC {auc(labels, (test - train.mean(0)).pow(2).flatten(1).sum(1)):.3f}")

    ae = ResidualAutoencoder(size, 128)
    if args.ae:
        ckpt = load_checkpoint(args.ae, AE_KIND)
        ae = ResidualAutoencoder(size, ckpt["arch"]["code_length"])
        ae.load_state_dict(ckpt["state"])
    print(f"\nencoder: {args.ae or 'random initialisation'}")
    print("| layer | AUC, centroid of plain training images | AUC, centroid of rotated training images |")
    print("|---|---|---|")
    for j, plain, rotated in centroid_aucs(ae.encoder, train, train_aug, test, labels):
        print(f"| {j} | {plain:.3f} | {rotated:.3f} |")
    if args.model:
        print(f"\none-class model: {args.model}")
        print("| BatchNorm | layer | test AUC | mean train distance, eval mode | same, train mode |")
        print("|---|---|---|---|---|")
        print("\n".join(model_report(args.model, size, train_aug, test, labels)))


if __name__ == "__main__":
    main()
