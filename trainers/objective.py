"""The multi-layer one-class objective shared by every dataset (paper section III, eqs. 2-6).

A ``feature net`` is any module whose forward returns ``dict[int, Tensor (B, d)]``: one flat
feature vector per selected layer, keyed by the layer index. Everything here works on such dicts,
so CIFAR-10, MVTec AD and video use the same centroids, losses, radii and scores.

Run axis: every function reduces over the last axes only, so the same code serves one run
(features (B, d), centroid (d,), distances (B,), radius ()) and K runs trained together as one
grouped model (features (K, B, d), centroids (K, d), distances (K, B), radii (K,)).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import Tensor, nn

BOUNDARIES = ("hard", "soft")
LAYER_REDUCTIONS = ("mean", "sum")  # eq. 4 averages the layers' losses; the authors' code sums them
CENTROID_EPS = 0.1  # Deep SVDD's rule: coordinates closer than this to 0 are pushed to +-eps


def squared_distances(features: Tensor, center: Tensor) -> Tensor:
    """Squared Euclidean distance of each row of ``features`` (..., B, d) to ``center`` (..., d)."""
    return ((features - center.unsqueeze(-2)) ** 2).sum(dim=-1)


def hard_boundary_loss(dist: Tensor) -> Tensor:
    """Eq. 3 (without the printed 1/nu, as both codes): mean squared distance over the mini-batch."""
    return dist.mean(dim=-1)


def soft_boundary_loss(dist: Tensor, radius: Tensor | float, nu: float) -> Tensor:
    """Eq. 2: R^2 + mean(max(0, d^2 - R^2)) / nu, with R fixed (non-trainable), one per run."""
    r2 = torch.as_tensor(radius, dtype=dist.dtype, device=dist.device) ** 2
    return r2 + torch.clamp(dist - r2.unsqueeze(-1), min=0).mean(dim=-1) / nu


def quantile_radius(dist: Tensor, nu: float) -> Tensor:
    """Radius R = the (1 - nu) quantile of the distances d = sqrt(d^2) (linear interpolation)."""
    return torch.quantile(dist.detach().float().sqrt(), 1.0 - nu, dim=-1)


def reconstruction_errors(x: Tensor, x_rec: Tensor, runs: int | None = None) -> Tensor:
    """Per-sample sum of squared errors: (B,); with ``runs`` = K, of a grouped batch (B, K*C, ...): (K, B).

    The AE's pretraining loss is its batch mean; the video objective adds it to the one-class term,
    and the video score uses it per clip (eq. 8's reconstruction term).
    """
    if x.shape != x_rec.shape:
        raise ValueError(f"reconstruction shape {tuple(x_rec.shape)} does not match the input {tuple(x.shape)}")
    err = (x_rec.float() - x.float()) ** 2
    if runs is None:
        return err.flatten(1).sum(dim=1)
    return err.reshape(x.shape[0], runs, -1).sum(dim=2).transpose(0, 1)


def reconstruction_loss(x: Tensor, x_rec: Tensor, runs: int | None = None) -> Tensor:
    """The batch mean of ``reconstruction_errors``: () or, per run, (K,)."""
    return reconstruction_errors(x, x_rec, runs).mean(dim=-1)


def push_from_zero(center: Tensor, eps: float = CENTROID_EPS) -> Tensor:
    """Move coordinates with |c| < eps to -eps / +eps (exact zeros stay 0), as in Deep SVDD.

    A coordinate at ~0 would let the network reach the centroid trivially with zero weights.
    """
    center = center.clone()
    center[(center.abs() < eps) & (center < 0)] = -eps
    center[(center.abs() < eps) & (center > 0)] = eps
    return center


def _batchnorms(module: nn.Module | None) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if module is not None else []


@torch.no_grad()
def _reestimate(feature_net: nn.Module, scope: nn.Module, batches: Iterable[Tensor]) -> int:
    """Replace the running statistics of every BatchNorm in ``scope`` (part of ``feature_net``) by
    their average over ``batches``: one no-grad pass with ``scope`` in train mode, the rest in eval mode."""
    bns = _batchnorms(scope)
    if not bns:
        return 0
    was_training = feature_net.training
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the whole pass
    feature_net.eval()
    scope.train()
    for x in batches:
        feature_net(x)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    feature_net.train(was_training)
    return len(bns)


def calibrate_new_batchnorm(feature_net: nn.Module, batches: Iterable[Tensor]) -> int:
    """Estimate the running statistics of BatchNorm layers in freshly built heads (``feature_net.selectors``).

    Centroids are computed in eval mode, where BatchNorm uses running statistics; for selectors that
    were never trained those are still the initial (0, 1), so the centroids would not match the
    features the heads produce once training starts. One no-grad pass in train mode over the training
    set (cumulative average) fixes that; the pretrained encoder's statistics are left untouched.
    Returns the number of BatchNorm layers calibrated.
    """
    heads = getattr(feature_net, "selectors", None)
    return _reestimate(feature_net, heads, batches) if heads is not None else 0


def recalibrate_batchnorm(feature_net: nn.Module, batches: Iterable[Tensor]) -> int:
    """Re-estimate the running statistics of every BatchNorm in ``feature_net`` with its current weights.

    Training normalises with batch statistics; testing (and the centroids) with running averages that
    lag behind weights which changed during the last ~1/momentum steps. After a short run (the CPU
    presets take a few dozen steps) the lag is large: eval-mode distances of the training images can
    be several times their train-mode values. One pass over the training set removes it ("precise BN").
    """
    return _reestimate(feature_net, feature_net, batches)


@torch.no_grad()
def compute_centroids(
    feature_net: nn.Module, batches: Iterable[Tensor], eps: float = CENTROID_EPS
) -> dict[int, Tensor]:
    """Per-layer mean feature over all normal training batches, in one pass with the net in eval mode."""
    was_training = feature_net.training
    feature_net.eval()
    sums: dict[int, Tensor] = {}
    count = 0
    for x in batches:
        feats = feature_net(x)
        for k, f in feats.items():
            s = f.float().sum(dim=-2)  # over the batch axis; a grouped model's run axis stays
            sums[k] = sums[k] + s if k in sums else s
        count += x.shape[0]
    feature_net.train(was_training)
    if count == 0:
        raise ValueError("cannot compute centroids from an empty training set")
    return {k: push_from_zero(s / count, eps) for k, s in sums.items()}


class MultiLayerObjective(nn.Module):
    """Centroids c_j and radii R_j of the chosen layers, and what is computed from them.

    Buffers (saved in checkpoints): ``center_<j>`` and ``radius_<j>`` per layer index j; for K
    grouped runs a centroid is (K, d) and a radius (K,) (``run(r)`` is run r's own objective).
    """

    def __init__(self, centers: Mapping[int, Tensor], boundary: str = "soft", nu: float = 0.1,
                 layer_reduction: str = "mean"):
        super().__init__()
        if boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
        if layer_reduction not in LAYER_REDUCTIONS:
            raise ValueError(f"layer_reduction must be one of {LAYER_REDUCTIONS}, got {layer_reduction!r}")
        self.layer_reduction = layer_reduction
        if not 0.0 < nu <= 1.0:
            raise ValueError(f"nu must be in (0, 1], got {nu}")
        self.boundary = boundary
        self.nu = nu
        self.layer_indices = [int(k) for k in centers]
        for k, c in centers.items():
            self.register_buffer(f"center_{k}", c.detach().float().clone())
            self.register_buffer(f"radius_{k}", torch.zeros(c.shape[:-1], dtype=torch.float32, device=c.device))

    def center(self, k: int) -> Tensor:
        return getattr(self, f"center_{k}")

    def radius(self, k: int) -> Tensor:
        return getattr(self, f"radius_{k}")

    def radii(self) -> dict[int, Any]:
        """R_j per layer, on the host: a float (one run) or a list of K floats (grouped runs)."""
        return {k: self.radius(k).tolist() for k in self.layer_indices}

    def run(self, r: int) -> "MultiLayerObjective":
        """Run r's own objective (its centroids and radii) from a grouped one."""
        out = MultiLayerObjective({k: self.center(k)[r] for k in self.layer_indices}, self.boundary, self.nu,
                                  self.layer_reduction)
        for k in self.layer_indices:
            out.radius(k).copy_(self.radius(k)[r])
        return out

    def distances(self, features: Mapping[int, Tensor]) -> dict[int, Tensor]:
        """Squared distance to the centroid per layer: {j: (B,)}."""
        return {k: squared_distances(features[k].float(), self.center(k)) for k in self.layer_indices}

    def loss(self, distances: Mapping[int, Tensor]) -> Tensor:
        """Eq. 4 without the weight decay (that lives in the optimizer): the layers' losses averaged
        (eq. 4) or summed (the authors' code; with a reconstruction term beside it, or Adam's coupled
        L2 decay, the two are not just a rescaling of each other)."""
        if self.boundary == "hard":
            per_layer = [hard_boundary_loss(distances[k]) for k in self.layer_indices]
        else:
            per_layer = [soft_boundary_loss(distances[k], self.radius(k), self.nu) for k in self.layer_indices]
        stacked = torch.stack(per_layer)  # (layers,) or (layers, K)
        return stacked.mean(dim=0) if self.layer_reduction == "mean" else stacked.sum(dim=0)

    @torch.no_grad()
    def update_radii(self, distances: Mapping[int, Tensor]) -> None:
        """Re-estimate every R_j as the (1 - nu) quantile of this mini-batch's distances."""
        for k in self.layer_indices:
            self.radius(k).copy_(quantile_radius(distances[k], self.nu))

    def layer_scores(self, distances: Mapping[int, Tensor]) -> dict[int, Tensor]:
        """Eq. 6 per layer: d^2 (hard) or d^2 - R^2 (soft)."""
        if self.boundary == "hard":
            return {k: distances[k] for k in self.layer_indices}
        return {k: distances[k] - self.radius(k).unsqueeze(-1) ** 2 for k in self.layer_indices}

    def combined_score(self, layer_scores: Mapping[int, Tensor]) -> Tensor:
        """Eq. 6: the mean of the per-layer scores."""
        return torch.stack([layer_scores[k] for k in self.layer_indices]).mean(dim=0)


def max_over_patches(scores: Tensor, patches_per_image: int) -> Tensor:
    """Eq. 7: image score = max over its patches; ``scores`` holds patches of one image contiguously."""
    if scores.shape[0] % patches_per_image:
        raise ValueError(f"{scores.shape[0]} patch scores is not a multiple of {patches_per_image}")
    return scores.reshape(-1, patches_per_image).amax(dim=1)
