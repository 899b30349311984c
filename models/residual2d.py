"""MVTec AD residual autoencoder (LSA-style 2-D residual blocks) and MOCCA's per-layer features.

Architecture as in the authors' MVTec model (reference notes section 3.2): bias-free convolutions,
affine BatchNorm, LeakyReLU(0.01); encoder = conv 3->32 (3x3, no padding) -> residual block ->
three downsample blocks (32->64->128->256) -> fc1 -> BN -> LeakyReLU -> fc2 -> sigmoid; the
decoder mirrors it with transposed-convolution upsample blocks and has no output activation
(inputs are in [-1, 1]).

Layer indices (what a user selects for the one-class objective). The paper's Table VII numbers the
MVTec layers 0..6 ("four residual blocks followed by two fully connected layers", 0 closest to the
input); these are indices 0..6 here. Index 7, the sigmoid code, is an extra the authors' code also
offers (its default when no layer is given).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from models.layers import check_layer_indices

LAYER_NAMES: dict[int, str] = {
    0: "conv",  # Conv2d 3->32, 3x3, no padding; raw output (no BN, no activation)
    1: "res",  # ResidualBlock 32->32 applied to LeakyReLU(layer 0)
    2: "dwn1",  # DownsampleBlock 32->64
    3: "dwn2",  # DownsampleBlock 64->128
    4: "dwn3",  # DownsampleBlock 128->256
    5: "fc1",  # LeakyReLU(BN1d(fc1(flatten(layer 4)))), 256-d
    6: "fc2",  # fc2(layer 5): the code before the sigmoid
    7: "code",  # sigmoid(layer 6): the AE code the decoder consumes
}
LAYER_INDICES: tuple[int, ...] = tuple(range(8))
CHANNELS = (32, 64, 128, 256)  # conv/res, dwn1, dwn2, dwn3
HIDDEN = 256  # width of fc1 and of the decoder's first linear layer
DOWNSAMPLING = 8  # three stride-2 blocks


def _act() -> nn.Module:
    return nn.LeakyReLU(0.01)


class ResidualOp(nn.Module):
    """act(BN(f2(act(BN(f1(x))))) + shortcut(x)), shortcut = BN(f3(x)) or identity."""

    def __init__(self, f1: nn.Module, f2: nn.Module, f3: Optional[nn.Module] = None):
        super().__init__()
        self.f1, self.bn1 = f1, nn.BatchNorm2d(f1.out_channels)
        self.f2, self.bn2 = f2, nn.BatchNorm2d(f2.out_channels)
        self.f3 = f3
        self.bn3 = nn.BatchNorm2d(f3.out_channels) if f3 is not None else None
        self.act = _act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.bn2(self.f2(self.act(self.bn1(self.f1(x)))))
        b = x if self.f3 is None else self.bn3(self.f3(x))
        return self.act(a + b)


class ResidualBlock(ResidualOp):
    """Same size and depth: two 3x3 convolutions, identity shortcut."""

    def __init__(self, channels: int):
        super().__init__(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        )


class DownsampleBlock(ResidualOp):
    """Halves the size: 3x3 stride-2 then 3x3 conv, 1x1 stride-2 projection shortcut."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.Conv2d(c_in, c_out, 1, stride=2, bias=False),
        )


class UpsampleBlock(ResidualOp):
    """Doubles the size: 5x5 stride-2 transposed conv then 3x3 conv, 1x1 transposed shortcut."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.ConvTranspose2d(c_in, c_out, 5, stride=2, padding=2, output_padding=1, bias=False),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.ConvTranspose2d(c_in, c_out, 1, stride=2, output_padding=1, bias=False),
        )


def _check_input_size(input_size: int) -> None:
    """The decoder can only rebuild sizes that are multiples of 8 (three x2 upsamplings)."""
    if not isinstance(input_size, int) or input_size < DOWNSAMPLING or input_size % DOWNSAMPLING:
        raise ValueError(f"input size {input_size!r} is not supported: use a multiple of {DOWNSAMPLING} (128 objects, 64 texture patches)")


class ResidualEncoder(nn.Module):
    """Encoder; ``layer_outputs`` exposes every selectable layer, ``forward`` returns the code."""

    def __init__(self, input_size: int, code_length: int, in_channels: int = 3):
        super().__init__()
        _check_input_size(input_size)
        self.input_size, self.code_length, self.in_channels = input_size, code_length, in_channels
        c0, c1, c2, c3 = CHANNELS
        self.act = _act()
        self.conv = nn.Conv2d(in_channels, c0, 3, bias=False)
        self.res = ResidualBlock(c0)
        self.dwn1 = DownsampleBlock(c0, c1)
        self.dwn2 = DownsampleBlock(c1, c2)
        self.dwn3 = DownsampleBlock(c2, c3)
        self.deepest_shape = self._trunk_shape()
        flat = self.deepest_shape[0] * self.deepest_shape[1] * self.deepest_shape[2]
        self.fc1 = nn.Linear(flat, HIDDEN)
        self.bn = nn.BatchNorm1d(HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, code_length)

    @torch.no_grad()
    def _trunk_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the last feature map, by a dummy forward through the conv trunk in eval mode."""
        was_training = self.training
        self.eval()
        x = torch.zeros(1, self.in_channels, self.input_size, self.input_size)
        out = self.dwn3(self.dwn2(self.dwn1(self.res(self.act(self.conv(x))))))
        self.train(was_training)
        return tuple(out.shape[1:])

    def layer_outputs(self, x: torch.Tensor, upto: int = LAYER_INDICES[-1]) -> list[torch.Tensor]:
        """Raw outputs of layers 0..``upto`` in order (see LAYER_NAMES); stops early to save work."""
        if upto not in LAYER_INDICES:
            raise ValueError(f"upto must be one of {LAYER_INDICES}, got {upto}")
        steps = (
            self.conv,
            lambda h: self.res(self.act(h)),
            self.dwn1,
            self.dwn2,
            self.dwn3,
            lambda h: self.act(self.bn(self.fc1(h.flatten(1)))),
            self.fc2,
            torch.sigmoid,
        )
        outs: list[torch.Tensor] = []
        h = x
        for step in steps[: upto + 1]:
            h = step(h)
            outs.append(h)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The sigmoid code z (B, code_length), what the decoder consumes."""
        return self.layer_outputs(x)[-1]


class ResidualDecoder(nn.Module):
    """code -> fc -> BN -> act -> fc -> BN -> act -> reshape -> 3 upsample blocks -> res -> 1x1 conv."""

    def __init__(self, code_length: int, deepest_shape: tuple[int, int, int], out_channels: int = 3):
        super().__init__()
        self.deepest_shape = tuple(deepest_shape)
        c, h, w = self.deepest_shape
        self.fc = nn.Sequential(
            nn.Linear(code_length, HIDDEN), nn.BatchNorm1d(HIDDEN), _act(),
            nn.Linear(HIDDEN, c * h * w), nn.BatchNorm1d(c * h * w), _act(),
        )
        c0, c1, c2, c3 = CHANNELS
        self.conv = nn.Sequential(
            UpsampleBlock(c3, c2), UpsampleBlock(c2, c1), UpsampleBlock(c1, c0),
            ResidualBlock(c0),
            nn.Conv2d(c0, out_channels, 1, bias=False),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv(self.fc(z).view(len(z), *self.deepest_shape))


class ResidualAutoencoder(nn.Module):
    """Stage-1 model: reconstruction of (B, 3, S, S) inputs in [-1, 1]; no output activation."""

    def __init__(self, input_size: int, code_length: int, in_channels: int = 3):
        super().__init__()
        self.input_size, self.code_length = input_size, code_length
        self.encoder = ResidualEncoder(input_size, code_length, in_channels)
        self.decoder = ResidualDecoder(code_length, self.encoder.deepest_shape, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


@torch.no_grad()
def encoder_layer_shapes(encoder: ResidualEncoder) -> dict[int, tuple[int, ...]]:
    """Per-sample output shape of every layer of ``encoder`` (dummy forward in eval mode)."""
    was_training = encoder.training
    encoder.eval()
    p = next(encoder.parameters())
    x = torch.zeros(1, encoder.in_channels, encoder.input_size, encoder.input_size, device=p.device, dtype=p.dtype)
    shapes = {i: tuple(o.shape[1:]) for i, o in enumerate(encoder.layer_outputs(x))}
    encoder.train(was_training)
    return shapes


def layer_shapes(input_size: int, code_length: int) -> dict[int, tuple[int, ...]]:
    """Per-sample output shape of layers 0..7 for a given input size and code length."""
    return encoder_layer_shapes(ResidualEncoder(input_size, code_length))


class Selector(nn.Module):
    """Learned head mapping one layer's output to a 128-d vector (authors' MVTec selectors).

    Feature maps (C, H, W): AdaptiveMaxPool2d(8) -> 1x1 conv C->1 -> flatten (64) -> Linear(64, 256)
    -> BN1d -> ReLU -> Linear(256, 128). Vectors (d,): Linear(d, 256) -> BN1d -> ReLU -> Linear(256, 128).
    """

    POOL = 8

    def __init__(self, in_shape: Sequence[int], hidden: int = 256, out: int = 128):
        super().__init__()
        in_shape = tuple(in_shape)
        if len(in_shape) == 3:
            reduce: list[nn.Module] = [nn.AdaptiveMaxPool2d(self.POOL), nn.Conv2d(in_shape[0], 1, 1, bias=True), nn.Flatten()]
            width = self.POOL * self.POOL
        elif len(in_shape) == 1:
            reduce, width = [nn.Flatten()], in_shape[0]
        else:
            raise ValueError(f"Selector takes a (C, H, W) or (d,) per-sample shape, got {in_shape}")
        self.in_shape, self.out_features = in_shape, out
        self.net = nn.Sequential(*reduce, nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def pool_features(output: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> global average (B, C); (B, d) unchanged. Never squeezes the batch dim."""
    return output.mean(dim=(2, 3)) if output.dim() == 4 else output.flatten(1)


class ResidualFeatureNet(nn.Module):
    """Encoder + per-layer heads: ``forward(x) -> {layer index: (B, d) float}`` for the MOCCA core.

    Keys are the real layer indices, in the order given (fixes the authors' key/order mismatch).
    Without selectors, feature maps are global-average pooled (d = channels) and vectors are
    returned as they are; with selectors every layer gives 128-d. The encoder is shared, not
    copied: wrap ``autoencoder.encoder`` to start stage 2 from the pretrained weights.
    """

    def __init__(self, encoder: ResidualEncoder, layer_indices: Sequence[int], use_selectors: bool):
        super().__init__()
        self.encoder = encoder
        self.layer_indices = check_layer_indices(layer_indices, LAYER_NAMES)
        self.use_selectors = use_selectors
        self.deepest = max(self.layer_indices)
        shapes = encoder_layer_shapes(encoder)
        self.selectors = nn.ModuleDict(
            {str(i): Selector(shapes[i]) for i in self.layer_indices} if use_selectors else {}
        )
        p = next(encoder.parameters())
        self.selectors.to(device=p.device, dtype=p.dtype)
        self.feature_dims: dict[int, int] = {
            i: (self.selectors[str(i)].out_features if use_selectors else shapes[i][0]) for i in self.layer_indices
        }

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        outs = self.encoder.layer_outputs(x, upto=self.deepest)
        if self.use_selectors:
            return {i: self.selectors[str(i)](outs[i]) for i in self.layer_indices}
        return {i: pool_features(outs[i]) for i in self.layer_indices}


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
