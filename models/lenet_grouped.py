"""K independent CIFAR-10 LeNet autoencoders evaluated as one model (grouped convolutions).

The LeNet of ``models.lenet`` is far too small to fill a GPU. Here run ``r`` of ``K`` owns channel
group ``r`` of every layer:

- input ``(B, K*3, 32, 32)``: channels ``3r..3r+2`` hold run ``r``'s images (see ``stack_runs``);
- convolutions / transposed convolutions with ``groups=K``: group ``r`` only sees run ``r``'s
  channels and its own weights (the per-run weights concatenated along the group dimension);
- BatchNorm over ``K*C`` channels: a channel belongs to exactly one run, so the per-channel batch
  statistics and running statistics are exactly the per-run ones;
- the linear layer as a batched matmul with weight ``(K, out, in)``.

Parameters of different runs never mix, so the gradient of the *sum* of the K runs' losses with
respect to run ``r``'s slice is run ``r``'s own gradient, and Adam / L2 (elementwise) update each
slice exactly as the K sequential runs would. ``from_models`` / ``to_models`` copy weights and
BatchNorm buffers from / to ordinary ``LeNetAutoencoder`` objects, so runs start from the weights
the sequential pipeline would build and end as ordinary per-run checkpoints.

Parameter order (``parameters()``) mirrors ``LeNetAutoencoder`` so optimizer states can be split
into per-run states and merged back (``trainers.runs``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.layers import check_layer_indices
from models.lenet import BN_EPS, LAST_LAYER, LAYER_NAMES, LeNetAutoencoder, LeNetDecoder, LeNetEncoder, _GAIN, conv_block_outputs

_CONVS = ("conv1", "conv2", "conv3")
_ENC_BNS = ("bn1", "bn2", "bn3")
_DECONVS = ("deconv1", "deconv2", "deconv3", "deconv4")
_DEC_BNS = ("bn4", "bn5", "bn6")


def stack_runs(x: Tensor) -> Tensor:
    """``(K, B, C, H, W)`` per-run batches -> ``(B, K*C, H, W)`` grouped input (run r = channel group r)."""
    k, b, c, h, w = x.shape
    return x.transpose(0, 1).reshape(b, k * c, h, w)


def split_runs(x: Tensor, k: int) -> Tensor:
    """``(B, K*C, H, W)`` grouped maps -> ``(K, B, C, H, W)`` (a view where possible)."""
    b, kc, h, w = x.shape
    return x.reshape(b, k, kc // k, h, w).transpose(0, 1)


def _bn2d(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, affine=False)


def _init_conv_slices(weight: Tensor, k: int) -> None:
    """Xavier-uniform per run slice (the fan of one run's conv, as ``models.lenet``)."""
    with torch.no_grad():
        for chunk in weight.chunk(k, dim=0):
            nn.init.xavier_uniform_(chunk, gain=_GAIN)


class GroupedLinear(nn.Module):
    """K bias-free linear layers: ``(K, B, in) -> (K, B, out)`` with weight ``(K, out, in)``."""

    def __init__(self, k: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, out_features, in_features))
        with torch.no_grad():
            for w in self.weight:  # nn.Linear's default init, per run
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("kbi,koi->kbo", x, self.weight)


def _copy_bn(dst: nn.modules.batchnorm._BatchNorm, srcs: Sequence[nn.modules.batchnorm._BatchNorm]) -> None:
    with torch.no_grad():
        dst.running_mean.copy_(torch.cat([s.running_mean for s in srcs]))
        dst.running_var.copy_(torch.cat([s.running_var for s in srcs]))
        dst.num_batches_tracked.copy_(srcs[0].num_batches_tracked)


def _split_bn(src: nn.modules.batchnorm._BatchNorm, dsts: Sequence[nn.modules.batchnorm._BatchNorm]) -> None:
    k = len(dsts)
    with torch.no_grad():
        for d, m, v in zip(dsts, src.running_mean.chunk(k), src.running_var.chunk(k)):
            d.running_mean.copy_(m)
            d.running_var.copy_(v)
            d.num_batches_tracked.copy_(src.num_batches_tracked)


class GroupedLeNetEncoder(nn.Module):
    """K LeNet encoders: ``(B, K*3, 32, 32)`` -> codes ``(K, B, code_length)``."""

    def __init__(self, k: int, code_length: int = 128):
        super().__init__()
        if k < 1:
            raise ValueError(f"need at least one run, got k={k}")
        self.k = k
        self.code_length = code_length
        self.conv1 = nn.Conv2d(k * 3, k * 32, 5, padding=2, bias=False, groups=k)
        self.bn1 = _bn2d(k * 32)
        self.conv2 = nn.Conv2d(k * 32, k * 64, 5, padding=2, bias=False, groups=k)
        self.bn2 = _bn2d(k * 64)
        self.conv3 = nn.Conv2d(k * 64, k * 128, 5, padding=2, bias=False, groups=k)
        self.bn3 = _bn2d(k * 128)
        self.fc1 = GroupedLinear(k, 128 * 4 * 4, code_length)
        for name in _CONVS:
            _init_conv_slices(getattr(self, name).weight, k)

    def layer_outputs(self, x: Tensor, upto: int = LAST_LAYER) -> list[Tensor]:
        """Raw outputs of layers 0..upto: conv maps as ``(B, K*C, H, W)``, the fc1 code as ``(K, B, zl)``."""
        outs, x = conv_block_outputs(((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)), x, upto)
        if x is None:
            return outs
        b = x.shape[0]
        flat = x.reshape(b, self.k, -1).transpose(0, 1)  # (K, B, 128*4*4), per-run flatten order as LeNet
        outs.append(self.fc1(flat))
        return outs

    def forward(self, x: Tensor) -> Tensor:
        return self.layer_outputs(x)[-1]

    @classmethod
    def from_encoders(cls, encoders: Sequence[LeNetEncoder]) -> "GroupedLeNetEncoder":
        zl = {e.code_length for e in encoders}
        if len(zl) != 1:
            raise ValueError(f"all encoders must have the same code length, got {sorted(zl)}")
        w = encoders[0].conv1.weight
        out = cls(len(encoders), zl.pop()).to(device=w.device, dtype=w.dtype)
        out.load_encoders(encoders)
        return out

    @torch.no_grad()
    def load_encoders(self, encoders: Sequence[LeNetEncoder]) -> None:
        if len(encoders) != self.k:
            raise ValueError(f"expected {self.k} encoders, got {len(encoders)}")
        for name in _CONVS:
            getattr(self, name).weight.copy_(torch.cat([getattr(e, name).weight for e in encoders]))
        for name in _ENC_BNS:
            _copy_bn(getattr(self, name), [getattr(e, name) for e in encoders])
        self.fc1.weight.copy_(torch.stack([e.fc1.weight for e in encoders]))

    @torch.no_grad()
    def store_encoders(self, encoders: Sequence[LeNetEncoder]) -> None:
        """Copy run r's weights and BN buffers into ``encoders[r]``."""
        if len(encoders) != self.k:
            raise ValueError(f"expected {self.k} encoders, got {len(encoders)}")
        for name in _CONVS:
            for e, w in zip(encoders, getattr(self, name).weight.chunk(self.k)):
                getattr(e, name).weight.copy_(w)
        for name in _ENC_BNS:
            _split_bn(getattr(self, name), [getattr(e, name) for e in encoders])
        for e, w in zip(encoders, self.fc1.weight):
            e.fc1.weight.copy_(w)

    def to_encoders(self) -> list[LeNetEncoder]:
        w = self.conv1.weight
        encoders = [LeNetEncoder(self.code_length).to(device=w.device, dtype=w.dtype) for _ in range(self.k)]
        self.store_encoders(encoders)
        return encoders


class GroupedLeNetDecoder(nn.Module):
    """K LeNet decoders: codes ``(B, K*code_length)`` (run-major) -> ``(B, K*3, 32, 32)`` in [0, 1]."""

    def __init__(self, k: int, code_length: int = 128):
        super().__init__()
        if code_length % 16:
            raise ValueError(f"code length must be divisible by 16 (decoder reshapes to (zl/16, 4, 4)), got {code_length}")
        self.k = k
        self.code_length = code_length
        self.deconv1 = nn.ConvTranspose2d(k * (code_length // 16), k * 128, 5, padding=2, bias=False, groups=k)
        self.bn4 = _bn2d(k * 128)
        self.deconv2 = nn.ConvTranspose2d(k * 128, k * 64, 5, padding=2, bias=False, groups=k)
        self.bn5 = _bn2d(k * 64)
        self.deconv3 = nn.ConvTranspose2d(k * 64, k * 32, 5, padding=2, bias=False, groups=k)
        self.bn6 = _bn2d(k * 32)
        self.deconv4 = nn.ConvTranspose2d(k * 32, k * 3, 5, padding=2, bias=False, groups=k)
        for name in _DECONVS:  # transposed-conv weight (in, out/groups, k, k): run r = rows of group r
            _init_conv_slices(getattr(self, name).weight, k)

    def forward(self, z: Tensor) -> Tensor:
        x = F.leaky_relu(z.reshape(z.shape[0], self.k * (self.code_length // 16), 4, 4))
        for deconv, bn in ((self.deconv1, self.bn4), (self.deconv2, self.bn5), (self.deconv3, self.bn6)):
            x = F.interpolate(F.leaky_relu(bn(deconv(x))), scale_factor=2, mode="nearest")
        return torch.sigmoid(self.deconv4(x))

    @torch.no_grad()
    def load_decoders(self, decoders: Sequence[LeNetDecoder]) -> None:
        for name in _DECONVS:
            getattr(self, name).weight.copy_(torch.cat([getattr(d, name).weight for d in decoders]))
        for name in _DEC_BNS:
            _copy_bn(getattr(self, name), [getattr(d, name) for d in decoders])

    @torch.no_grad()
    def store_decoders(self, decoders: Sequence[LeNetDecoder]) -> None:
        for name in _DECONVS:
            for d, w in zip(decoders, getattr(self, name).weight.chunk(self.k)):
                getattr(d, name).weight.copy_(w)
        for name in _DEC_BNS:
            _split_bn(getattr(self, name), [getattr(d, name) for d in decoders])


class GroupedLeNetAutoencoder(nn.Module):
    """K ``LeNetAutoencoder`` s as one module: ``(B, K*3, 32, 32)`` -> reconstructions of the same shape."""

    def __init__(self, k: int, code_length: int = 128):
        super().__init__()
        self.k = k
        self.code_length = code_length
        self.encoder = GroupedLeNetEncoder(k, code_length)
        self.code_bn = nn.BatchNorm1d(k * code_length, eps=BN_EPS, affine=False)
        self.decoder = GroupedLeNetDecoder(k, code_length)

    def forward(self, x: Tensor) -> Tensor:
        z = self.encoder(x)  # (K, B, zl)
        z = z.transpose(0, 1).reshape(z.shape[1], self.k * self.code_length)  # (B, K*zl), run-major
        return self.decoder(self.code_bn(z))

    @classmethod
    def from_models(cls, models: Sequence[LeNetAutoencoder]) -> "GroupedLeNetAutoencoder":
        """One grouped model holding copies of ``models`` (weights and BatchNorm buffers)."""
        if not models:
            raise ValueError("need at least one model")
        zl = {m.encoder.code_length for m in models}
        if len(zl) != 1:
            raise ValueError(f"all models must have the same code length, got {sorted(zl)}")
        w = next(models[0].parameters())
        out = cls(len(models), zl.pop()).to(device=w.device, dtype=w.dtype)
        out.load_models(models)
        return out

    @torch.no_grad()
    def load_models(self, models: Sequence[LeNetAutoencoder]) -> None:
        if len(models) != self.k:
            raise ValueError(f"expected {self.k} models, got {len(models)}")
        self.encoder.load_encoders([m.encoder for m in models])
        _copy_bn(self.code_bn, [m.code_bn for m in models])
        self.decoder.load_decoders([m.decoder for m in models])

    @torch.no_grad()
    def store_models(self, models: Sequence[LeNetAutoencoder]) -> None:
        """Copy run r's weights and BN buffers into ``models[r]`` (any device)."""
        if len(models) != self.k:
            raise ValueError(f"expected {self.k} models, got {len(models)}")
        self.encoder.store_encoders([m.encoder for m in models])
        _split_bn(self.code_bn, [m.code_bn for m in models])
        self.decoder.store_decoders([m.decoder for m in models])

    def to_models(self) -> list[LeNetAutoencoder]:
        """K ordinary autoencoders (on this model's device) with run r's weights and buffers."""
        w = next(self.parameters())
        models = [LeNetAutoencoder(self.code_length).to(device=w.device, dtype=w.dtype) for _ in range(self.k)]
        self.store_models(models)
        return models


class GroupedPooledFeatureNet(nn.Module):
    """``PooledFeatureNet`` for K runs: ``{layer index: (K, B, d)}`` (conv maps global-average-pooled)."""

    def __init__(self, encoder: GroupedLeNetEncoder, layer_indices: Sequence[int]):
        super().__init__()
        check_layer_indices(layer_indices, LAYER_NAMES)
        self.encoder = encoder
        self.layer_indices = list(layer_indices)

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        k = self.encoder.k
        outs = self.encoder.layer_outputs(x, upto=max(self.layer_indices))
        feats: dict[int, Tensor] = {}
        for j in self.layer_indices:
            o = outs[j]
            if o.dim() == 4:  # (B, K*C, H, W) -> (K, B, C)
                o = o.mean(dim=(2, 3)).reshape(o.shape[0], k, -1).transpose(0, 1)
            feats[j] = o
        return feats
