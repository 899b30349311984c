"""The LeNet-type CIFAR-10 autoencoder of Deep SVDD, used by MOCCA for CIFAR-10 (paper IV-D).

Encoder: 3 conv blocks (conv -> BN -> LeakyReLU -> max-pool) and one linear layer to the code.
MOCCA taps the raw output of each conv and of the linear layer; the "selector" for CIFAR-10 is a
global average pooling over the spatial dimensions (paper section III).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.layers import check_layer_indices

# The one map from a layer index (the -ile flag) to the module whose output is used.
LAYER_NAMES: dict[int, str] = {0: "conv1", 1: "conv2", 2: "conv3", 3: "fc1"}
LAYER_INDICES: tuple[int, ...] = tuple(LAYER_NAMES)
LAST_LAYER = LAYER_INDICES[-1]
BN_EPS = 1e-4  # as Deep SVDD
_GAIN = nn.init.calculate_gain("leaky_relu")


def _bn2d(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, affine=False)


def conv_block_outputs(blocks, x: Tensor, upto: int) -> tuple[list[Tensor], Tensor | None]:
    """Run (conv, bn) blocks (conv -> BN -> LeakyReLU -> max-pool), collecting the raw conv outputs.

    Stops once layer ``upto`` is collected (returns None as the input of the next layer); otherwise
    also returns the pooled output of the last block.
    """
    outs: list[Tensor] = []
    for conv, bn in blocks:
        x = conv(x)
        outs.append(x)
        if len(outs) > upto:
            return outs, None
        x = F.max_pool2d(F.leaky_relu(bn(x)), 2)
    return outs, x


class LeNetEncoder(nn.Module):
    """3x32x32 -> code of size ``code_length``; ``layer_outputs`` exposes the raw layer outputs."""

    def __init__(self, code_length: int = 128):
        super().__init__()
        self.code_length = code_length
        self.conv1 = nn.Conv2d(3, 32, 5, padding=2, bias=False)
        self.bn1 = _bn2d(32)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2, bias=False)
        self.bn2 = _bn2d(64)
        self.conv3 = nn.Conv2d(64, 128, 5, padding=2, bias=False)
        self.bn3 = _bn2d(128)
        self.fc1 = nn.Linear(128 * 4 * 4, code_length, bias=False)
        for conv in (self.conv1, self.conv2, self.conv3):
            nn.init.xavier_uniform_(conv.weight, gain=_GAIN)

    def layer_outputs(self, x: Tensor, upto: int = LAST_LAYER) -> list[Tensor]:
        """Raw outputs of layers 0..upto (conv outputs before BN/activation/pooling, as the taps)."""
        outs, x = conv_block_outputs(((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)), x, upto)
        if x is not None:
            outs.append(self.fc1(x.flatten(1)))
        return outs

    def forward(self, x: Tensor) -> Tensor:
        return self.layer_outputs(x)[-1]


class LeNetDecoder(nn.Module):
    """code -> 3x32x32 in [0, 1] (sigmoid), mirror of the encoder with nearest upsampling."""

    def __init__(self, code_length: int = 128):
        super().__init__()
        if code_length % 16:
            raise ValueError(f"code length must be divisible by 16 (decoder reshapes to (zl/16, 4, 4)), got {code_length}")
        self.code_length = code_length
        self.deconv1 = nn.ConvTranspose2d(code_length // 16, 128, 5, padding=2, bias=False)
        self.bn4 = _bn2d(128)
        self.deconv2 = nn.ConvTranspose2d(128, 64, 5, padding=2, bias=False)
        self.bn5 = _bn2d(64)
        self.deconv3 = nn.ConvTranspose2d(64, 32, 5, padding=2, bias=False)
        self.bn6 = _bn2d(32)
        self.deconv4 = nn.ConvTranspose2d(32, 3, 5, padding=2, bias=False)
        for deconv in (self.deconv1, self.deconv2, self.deconv3, self.deconv4):
            nn.init.xavier_uniform_(deconv.weight, gain=_GAIN)

    def forward(self, z: Tensor) -> Tensor:
        x = F.leaky_relu(z.reshape(z.shape[0], self.code_length // 16, 4, 4))
        for deconv, bn in ((self.deconv1, self.bn4), (self.deconv2, self.bn5), (self.deconv3, self.bn6)):
            x = F.interpolate(F.leaky_relu(bn(deconv(x))), scale_factor=2, mode="nearest")
        return torch.sigmoid(self.deconv4(x))


class LeNetAutoencoder(nn.Module):
    """Encoder -> BatchNorm1d on the code -> decoder (one BN, as Deep SVDD; the authors' code has two)."""

    def __init__(self, code_length: int = 128):
        super().__init__()
        self.encoder = LeNetEncoder(code_length)
        self.code_bn = nn.BatchNorm1d(code_length, eps=BN_EPS, affine=False)
        self.decoder = LeNetDecoder(code_length)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.code_bn(self.encoder(x)))


class PooledFeatureNet(nn.Module):
    """The CIFAR-10 feature net: chosen layers of the encoder, 4-D maps global-average-pooled.

    Returns ``{layer index: (B, d)}`` in the order given; the encoder only runs as deep as needed.
    """

    def __init__(self, encoder: LeNetEncoder, layer_indices: Sequence[int]):
        super().__init__()
        self.encoder = encoder
        self.layer_indices = list(check_layer_indices(layer_indices, LAYER_NAMES))

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        outs = self.encoder.layer_outputs(x, upto=max(self.layer_indices))
        return {k: outs[k].mean(dim=(2, 3)) if outs[k].dim() == 4 else outs[k] for k in self.layer_indices}
