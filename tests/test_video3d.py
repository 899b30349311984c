"""The 3-D video autoencoder: shapes derived from the input, heads, causality, parameter counts."""
from __future__ import annotations

import pytest
import torch

from models.video3d import (
    LAYER_NAMES,
    MaskedConv3d,
    VideoAutoencoder,
    VideoDecoder,
    count_parameters,
    encoder_shapes,
)
from trainers.objective import reconstruction_errors

SMALL = (3, 16, 32, 64)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_layer_names_cover_heads_0_to_6():
    assert list(LAYER_NAMES) == list(range(7))
    assert encoder_shapes((3, 16, 256, 512)) == [
        (8, 16, 128, 256), (16, 16, 64, 128), (32, 8, 32, 64), (64, 8, 16, 32), (64, 4, 8, 16),
    ]


@pytest.mark.parametrize("use_selectors", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_head_shapes_and_reconstruction(use_selectors, bidirectional):
    order = [6, 0, 3, 1, 5, 2, 4]
    model = VideoAutoencoder(
        SMALL, code_length=24, hidden_size=10, use_selectors=use_selectors,
        bidirectional=bidirectional, layer_indices=order,
    )
    clip = torch.rand(2, *SMALL)
    recon, features = model(clip)
    assert recon.shape == clip.shape
    assert list(features) == order  # real head indices, in the given order
    width = 20 if bidirectional else 10
    assert all(f.shape == (2, width) for f in features.values())


def test_only_selected_heads_get_lstms_and_selectors():
    model = VideoAutoencoder(SMALL, code_length=16, layer_indices=[4, 5, 6], use_selectors=True)
    assert sorted(model.lstms) == ["4", "5", "6"]
    assert sorted(model.selectors) == ["4"]
    assert model.lstms["5"].input_size == 512 and model.lstms["6"].input_size == 16
    assert model.lstms["4"].input_size == 64
    plain = VideoAutoencoder(SMALL, code_length=16, layer_indices=[0])
    assert len(plain.selectors) == 0 and plain.lstms["0"].input_size == 8


@pytest.mark.parametrize("shape", [(3, 10, 37, 51), (1, 5, 20, 28)])
@pytest.mark.parametrize("authors_reshape", [False, True])
def test_any_input_size_reconstructs_to_itself(shape, authors_reshape):
    model = VideoAutoencoder(shape, code_length=8, hidden_size=4, layer_indices=[0, 6], authors_reshape=authors_reshape)
    recon, features = model(torch.rand(1, *shape))
    assert recon.shape == (1, *shape) and features[0].shape == (1, 4)


def test_selector_sized_from_block_output_at_odd_size():
    shape = (3, 8, 44, 60)
    model = VideoAutoencoder(shape, code_length=8, hidden_size=4, use_selectors=True, layer_indices=[0, 1, 2, 3, 4])
    model.train()
    _, features = model(torch.rand(2, *shape))
    assert all(f.shape == (2, 4) for f in features.values())


def test_masked_conv_is_causal_in_time():
    conv = MaskedConv3d(2, 3, 3, padding=1, bias=False)
    x = torch.rand(1, 2, 8, 5, 5)
    y = x.clone()
    y[:, :, 5:] += 1.0  # change frames 5..7
    out_x, out_y = conv(x), conv(y)
    assert torch.equal(out_x[:, :, :5], out_y[:, :, :5])
    assert not torch.equal(out_x[:, :, 5:], out_y[:, :, 5:])
    assert conv.mask[:, :, 2].abs().sum() == 0 and conv.mask[:, :, :2].min() == 1
    assert "mask" in conv.state_dict()


def test_encoder_features_ignore_future_frames():
    model = VideoAutoencoder(SMALL, code_length=8, layer_indices=[0]).eval()
    x = torch.rand(1, *SMALL)
    y = x.clone()
    y[:, :, 12:] = torch.rand_like(y[:, :, 12:])
    with torch.no_grad():
        o_x, o_y = model.encoder(x)[0], model.encoder(y)[0]
    assert torch.allclose(o_x[:, :, :12], o_y[:, :, :12])


def test_clean_reshape_keeps_time_steps_apart_authors_mixes_them():
    shape = (3, 16, 64, 64)  # deepest (64, 4, 2, 2)
    clean, authors = VideoDecoder(shape, 8), VideoDecoder(shape, 8, authors_reshape=True)
    c, t, h, w = clean.deepest_shape
    per_step = torch.arange(t, dtype=torch.float32)[None, :, None].expand(1, t, c * h * w)
    volume = clean.to_volume(per_step)
    assert volume.shape == (1, c, t, h, w)
    assert all((volume[:, :, s] == s).all() for s in range(t))
    mixed = authors.to_volume(per_step)
    assert mixed.shape == volume.shape and not torch.equal(mixed, volume)
    assert clean.state_dict().keys() == authors.state_dict().keys()


def test_parameter_counts_small_input_and_authors_size():
    small = VideoAutoencoder(SMALL, code_length=64, layer_indices=[4, 5, 6])
    assert count_parameters(small) < 5_000_000
    with_selectors = VideoAutoencoder(SMALL, code_length=64, layer_indices=list(range(7)), use_selectors=True)
    assert count_parameters(with_selectors) < 10_000_000
    with torch.device("meta"):  # no memory, no init cost
        full = VideoAutoencoder((3, 16, 256, 512), 1024, layer_indices=list(range(7)), use_selectors=True)
    assert count_parameters(full) == 143_437_915  # the authors' 143.4 M (zl 1024, hidden 100, all heads)
    assert count_parameters(full.selectors) == 130_706_288


def test_reconstruction_error_is_per_clip_sum_of_squares():
    x = torch.zeros(2, 3, 2, 2, 2)
    x_r = x.clone()
    x_r[0, 0, 0, 0, 0] = 2.0
    x_r[1] = 1.0
    assert reconstruction_errors(x, x_r).tolist() == [4.0, 24.0]


def test_backward_reaches_encoder_decoder_and_heads():
    model = VideoAutoencoder(SMALL, code_length=8, hidden_size=6, layer_indices=[2, 6], use_selectors=True)
    clip = torch.rand(2, *SMALL)
    recon, features = model(clip)
    loss = reconstruction_errors(clip, recon).mean() + sum(f.pow(2).sum(1).mean() for f in features.values())
    loss.backward()
    names = ("encoder.blocks.0.f1.weight", "decoder.to_rgb.weight", "lstms.2.weight_ih_l0", "selectors.2.fc2.weight")
    for name in names:
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_bad_heads_and_wrong_clip_shape_are_errors():
    with pytest.raises(ValueError, match="0=conv_1, .* 6=tdl_2"):
        VideoAutoencoder(SMALL, 8, layer_indices=[7])
    with pytest.raises(ValueError, match="distinct"):
        VideoAutoencoder(SMALL, 8, layer_indices=[1, 1])
    with pytest.raises(ValueError, match=r"\[\] are invalid"):
        VideoAutoencoder(SMALL, 8, layer_indices=[])
    model = VideoAutoencoder(SMALL, 8)
    with pytest.raises(ValueError, match="does not match"):
        model(torch.rand(1, 3, 16, 32, 32))
