"""MOCCA's video model: LSA's 3-D residual autoencoder with causal convolutions and LSTM heads.

Layout (authors' ``shanghaitech_*`` models, after LSA, Abati et al. CVPR 2019); input (3, T, H, W)
in [0, 1]. Every size below is derived from ``input_shape``; the authors hard-code 3x16x256x512.

Head index -> layer (``LAYER_NAMES``), what its LSTM reads, and the shape at 16x256x512:

====  =======  ==============================================  =====================
head  name     module                                          output (C, T, H, W)
====  =======  ==============================================  =====================
0     conv_1   Downsample 3->8,   stride (1,2,2)               8 x 16 x 128 x 256
1     conv_2   Downsample 8->16,  stride (1,2,2)               16 x 16 x 64 x 128
2     conv_3   Downsample 16->32, stride (2,2,2)               32 x 8 x 32 x 64
3     conv_4   Downsample 32->64, stride (1,2,2)               64 x 8 x 16 x 32
4     conv_5   Downsample 64->64, stride (2,2,2)               64 x 4 x 8 x 16
5     tdl_1    tanh(time-shared FC 64*H5*W5 -> 512)            T5 x 512
6     tdl_2    sigmoid(time-shared FC 512 -> code_length) = z  T5 x code_length
====  =======  ==============================================  =====================

Heads 0-4 feed their LSTM the block output averaged over H and W, (B, T, C), or with
``use_selectors`` the output of a 3-D Selector, also (B, T, C). Heads 5-6 feed the (B, T5, .)
sequences directly. A head's feature is the LSTM output at the last time step: size ``hidden_size``
(x2 when bidirectional). Only the selected heads get an LSTM (and a selector); the authors build
all seven, so with all heads and selectors at 16x256x512 the parameter count matches theirs.

Spatial and temporal sizes: a stride-2 block maps n -> ceil(n / 2); the decoder picks each
transposed convolution's output padding so that it lands exactly on the matching encoder size, so
any input size reconstructs to itself (the authors' fixed paddings need T % 4 == 0 and H, W % 32 == 0,
where both choices coincide).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from models.layers import check_layer_indices

LAYER_NAMES: dict[int, str] = {0: "conv_1", 1: "conv_2", 2: "conv_3", 3: "conv_4", 4: "conv_5", 5: "tdl_1", 6: "tdl_2"}
# The authors' dictionary keys for the same heads (for reading their logs / result tables).
AUTHORS_KEYS: dict[int, str] = {
    **{i: f"conv_lstm_o_{i}" for i in range(5)}, 5: "tdl_lstm_o_0", 6: "tdl_lstm_o_1",
}
BLOCK_CHANNELS = (8, 16, 32, 64, 64)
BLOCK_STRIDES = ((1, 2, 2), (1, 2, 2), (2, 2, 2), (1, 2, 2), (2, 2, 2))
DECODER_CHANNELS = (64, 32, 16, 8, 8)
TDL_FEATURES = 512
SELECTOR_FEATURES = 256

Shape = tuple[int, int, int, int]  # (C, T, H, W)


def strided_size(n: int, stride: int) -> int:
    """Output length of a k=3, pad=1 (or k=1, pad=0) convolution with this stride: ceil(n / stride)."""
    return (n - 1) // stride + 1


def encoder_shapes(input_shape: Sequence[int]) -> list[Shape]:
    """(C, T, H, W) after each of the five encoder blocks, from the input shape."""
    _, t, h, w = input_shape
    shapes = []
    for channels, (st, sh, sw) in zip(BLOCK_CHANNELS, BLOCK_STRIDES):
        t, h, w = strided_size(t, st), strided_size(h, sh), strided_size(w, sw)
        shapes.append((channels, t, h, w))
    return shapes


class MaskedConv3d(nn.Conv3d):
    """Causal 3-D convolution: kernel taps after the temporal centre are zeroed, so output frame t
    only sees input frames <= t. The mask is a buffer (saved in the state dict, like the authors')."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        mask = torch.ones_like(self.weight)
        mask[:, :, self.kernel_size[0] // 2 + 1 :] = 0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class TemporallySharedFC(nn.Linear):
    """The same Linear applied to every time step of a (B, T, in) sequence -> (B, T, out)."""


class _Residual3d(nn.Module):
    """act(BN(f2(act(BN(f1 x)))) + BN(f3 x)) - LSA's residual op with a projection shortcut."""

    def __init__(self, f1: nn.Module, f2: nn.Module, f3: nn.Module, channels: int):
        super().__init__()
        self.f1, self.f2, self.f3 = f1, f2, f3
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm3d(channels), nn.BatchNorm3d(channels), nn.BatchNorm3d(channels)
        self.act = nn.LeakyReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.bn2(self.f2(self.act(self.bn1(self.f1(x)))))
        return self.act(main + self.bn3(self.f3(x)))


class DownsampleBlock3d(_Residual3d):
    """Causal 3x3x3 convs (the first strided) + strided 1x1x1 shortcut; bias-free as LSA."""

    def __init__(self, cin: int, cout: int, stride: Sequence[int]):
        super().__init__(
            MaskedConv3d(cin, cout, 3, stride=tuple(stride), padding=1, bias=False),
            MaskedConv3d(cout, cout, 3, padding=1, bias=False),
            nn.Conv3d(cin, cout, 1, stride=tuple(stride), bias=False),
            cout,
        )


class UpsampleBlock3d(_Residual3d):
    """5x5x5 transposed conv + 3x3x3 conv, transposed 5x5x5 shortcut; bias-free as LSA."""

    def __init__(self, cin: int, cout: int, stride: Sequence[int], output_padding: Sequence[int]):
        up = dict(kernel_size=5, stride=tuple(stride), padding=2, output_padding=tuple(output_padding), bias=False)
        super().__init__(
            nn.ConvTranspose3d(cin, cout, **up),
            nn.Conv3d(cout, cout, 3, padding=1, bias=False),
            nn.ConvTranspose3d(cin, cout, **up),
            cout,
        )


class Selector3d(nn.Module):
    """Authors' 3-D selector for one conv block: convs -> per-time-step flatten -> FC -> (B, T, C).

    The flattened size per time step (4C x ceil(H/2) x ceil(W/2)) comes from the block's actual
    output shape; at 16x256x512 the five selectors hold 130.7 M parameters, at small inputs few.
    """

    def __init__(self, block_shape: Shape):
        super().__init__()
        c, t, h, w = block_shape
        self.conv = nn.Sequential(
            nn.Conv3d(c, 2 * c, 3, stride=(1, 2, 2), padding=1), nn.BatchNorm3d(2 * c), nn.ReLU(),
            nn.Conv3d(2 * c, 4 * c, 3, padding=1), nn.BatchNorm3d(4 * c), nn.ReLU(),
            nn.Conv3d(4 * c, 4 * c, 1),
        )
        flat = 4 * c * strided_size(h, 2) * strided_size(w, 2)
        self.fc1 = TemporallySharedFC(flat, SELECTOR_FEATURES)
        self.bn = nn.BatchNorm1d(t)  # the authors normalise with the time axis as channels
        self.act = nn.ReLU()
        self.fc2 = TemporallySharedFC(SELECTOR_FEATURES, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).transpose(1, 2)  # (B, T, 4C, H', W')
        h = h.reshape(h.shape[0], h.shape[1], -1)
        return self.fc2(self.act(self.bn(self.fc1(h))))


class VideoEncoder(nn.Module):
    """Five causal residual blocks + two time-shared FC layers; returns all seven head outputs."""

    def __init__(self, input_shape: Sequence[int], code_length: int):
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.block_shapes = encoder_shapes(self.input_shape)
        cins = (self.input_shape[0], *BLOCK_CHANNELS[:-1])
        self.blocks = nn.ModuleList(
            DownsampleBlock3d(cin, cout, stride) for cin, cout, stride in zip(cins, BLOCK_CHANNELS, BLOCK_STRIDES)
        )
        c, _, h, w = self.block_shapes[-1]
        self.tdl_1 = TemporallySharedFC(c * h * w, TDL_FEATURES)
        self.tdl_2 = TemporallySharedFC(TDL_FEATURES, code_length)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[o0..o4 (B, C, T, H, W) block outputs, o5 tanh(tdl_1) (B, T5, 512), o6 = code z (B, T5, zl)]."""
        outputs = []
        h = x
        for block in self.blocks:
            h = block(h)
            outputs.append(h)
        seq = h.transpose(1, 2).reshape(h.shape[0], h.shape[2], -1)  # (B, T5, C*H5*W5), per time step
        o5 = torch.tanh(self.tdl_1(seq))
        outputs += [o5, torch.sigmoid(self.tdl_2(o5))]
        return outputs


class VideoDecoder(nn.Module):
    """Mirror of the encoder: two time-shared FC layers, five upsampling blocks, 1x1x1 conv to RGB.

    The FC output (B, T5, C*H5*W5) has to become a (B, C, T5, H5, W5) volume. The authors (from LSA)
    transpose it to (B, C*H5*W5, T5) and reshape that memory directly, which scatters each time step's
    features over channels, time and space ("mixes time and space"). By default we do the clean
    version - split each time step into (C, H5, W5) and move time behind channels - because it is what
    the paper's architecture describes (a decoder whose time steps follow the code's time steps, keeping
    the causal structure), the mixing is an implementation accident, and both have exactly the same
    parameters (same state dict). ``authors_reshape=True`` reproduces the authors' memory order for
    fidelity experiments.
    """

    def __init__(self, input_shape: Sequence[int], code_length: int, authors_reshape: bool = False):
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.authors_reshape = bool(authors_reshape)
        shapes = encoder_shapes(self.input_shape)
        self.deepest_shape = shapes[-1]
        c, _, h, w = self.deepest_shape
        self.tdl_1 = TemporallySharedFC(code_length, TDL_FEATURES)
        self.tdl_2 = TemporallySharedFC(TDL_FEATURES, c * h * w)
        self.act = nn.LeakyReLU()
        targets = [s[1:] for s in reversed(shapes[:-1])] + [self.input_shape[1:]]
        blocks, current, cin = [], self.deepest_shape[1:], c
        for cout, stride, target in zip(DECODER_CHANNELS, reversed(BLOCK_STRIDES), targets):
            padding = [tgt - ((n - 1) * s + 1) for n, s, tgt in zip(current, stride, target)]
            blocks.append(UpsampleBlock3d(cin, cout, stride, padding))
            current, cin = target, cout
        self.blocks = nn.Sequential(*blocks)
        self.to_rgb = nn.Conv3d(DECODER_CHANNELS[-1], self.input_shape[0], 1)

    def to_volume(self, h: torch.Tensor) -> torch.Tensor:
        """(B, T5, C*H5*W5) per-time-step features -> (B, C, T5, H5, W5) volume (see class docstring)."""
        c, t, hh, ww = self.deepest_shape
        if self.authors_reshape:
            return h.transpose(1, 2).reshape(h.shape[0], c, t, hh, ww)
        return h.reshape(h.shape[0], t, c, hh, ww).transpose(1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.act(self.tdl_2(torch.tanh(self.tdl_1(z))))  # (B, T5, C*H5*W5)
        return self.to_rgb(self.blocks(self.to_volume(h)))


class VideoAutoencoder(nn.Module):
    """Encoder + decoder + one LSTM (and optionally one selector) per selected head.

    ``forward(clip)`` returns (reconstruction with the clip's shape, {head index: (B, d) feature}) with
    the keys in ``layer_indices`` order; d = hidden_size, x2 when bidirectional. No default size or
    code length on purpose: the authors use 3x16x256x512 and code 1024 (README; CLI default 2048).
    As in the authors' code, a bidirectional head also takes the last time step, where the backward
    direction has seen only the last frame.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        code_length: int,
        hidden_size: int = 100,
        num_layers: int = 1,
        dropout: float = 0.0,
        bidirectional: bool = False,
        use_selectors: bool = False,
        layer_indices: Sequence[int] = (6,),
        authors_reshape: bool = False,
    ):
        super().__init__()
        if len(input_shape) != 4 or min(input_shape) < 1:
            raise ValueError(f"input shape must be (C, T, H, W) with positive sizes, got {tuple(input_shape)}")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.layer_indices = list(check_layer_indices([int(i) for i in layer_indices], LAYER_NAMES))
        self.use_selectors = bool(use_selectors)
        self.encoder = VideoEncoder(self.input_shape, code_length)
        self.decoder = VideoDecoder(self.input_shape, code_length, authors_reshape)
        block_shapes = self.encoder.block_shapes
        conv_heads = [i for i in self.layer_indices if i < 5]
        self.selectors = nn.ModuleDict(
            {str(i): Selector3d(block_shapes[i]) for i in conv_heads} if self.use_selectors else {}
        )
        input_sizes = {**{i: block_shapes[i][0] for i in range(5)}, 5: TDL_FEATURES, 6: code_length}
        self.lstms = nn.ModuleDict({
            str(i): nn.LSTM(
                input_sizes[i], hidden_size, num_layers=num_layers, batch_first=True,
                # single-layer LSTMs ignore dropout (and warn); pass it only where it acts
                dropout=dropout if num_layers > 1 else 0.0, bidirectional=bidirectional,
            )
            for i in self.layer_indices
        })
        self.feature_size = hidden_size * (2 if bidirectional else 1)

    def head_sequence(self, index: int, output: torch.Tensor) -> torch.Tensor:
        """The (B, T, F) sequence head ``index``'s LSTM reads."""
        if index >= 5:
            return output
        if self.use_selectors:
            return self.selectors[str(index)](output)
        return output.mean(dim=(3, 4)).transpose(1, 2)  # average over H, W -> (B, T, C)

    def heads(self, outputs: Sequence[torch.Tensor]) -> dict[int, torch.Tensor]:
        """Features of the selected heads: LSTM output at the last time step."""
        features = {}
        for i in self.layer_indices:
            sequence, _ = self.lstms[str(i)](self.head_sequence(i, outputs[i]))
            features[i] = sequence[:, -1]
        return features

    def forward(self, clip: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        if tuple(clip.shape[1:]) != self.input_shape:
            raise ValueError(f"clip shape {tuple(clip.shape[1:])} does not match the model input {self.input_shape}")
        outputs = self.encoder(clip)
        return self.decoder(outputs[6]), self.heads(outputs)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
