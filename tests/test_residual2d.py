"""MVTec residual autoencoder: layer map, shapes, parameter counts, selectors and the feature net."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.residual2d import (
    LAYER_INDICES, LAYER_NAMES, ResidualAutoencoder, ResidualEncoder, ResidualFeatureNet, Selector,
    count_parameters, layer_shapes,
)

# Section 3.2 of the reference notes (code_length 64).
TABLE = {
    128: {0: (32, 126, 126), 1: (32, 126, 126), 2: (64, 63, 63), 3: (128, 32, 32), 4: (256, 16, 16),
          5: (256,), 6: (64,), 7: (64,)},
    64: {0: (32, 62, 62), 1: (32, 62, 62), 2: (64, 31, 31), 3: (128, 16, 16), 4: (256, 8, 8),
         5: (256,), 6: (64,), 7: (64,)},
}


@pytest.fixture(scope="module")
def encoder64() -> ResidualEncoder:
    torch.manual_seed(0)
    return ResidualEncoder(64, 64).eval()


def test_layer_map():
    assert LAYER_INDICES == tuple(range(8)) and tuple(LAYER_NAMES) == LAYER_INDICES
    enc = ResidualEncoder(64, 16)
    assert all(hasattr(enc, LAYER_NAMES[i]) for i in range(7))


@pytest.mark.parametrize("size", [128, 64])
def test_layer_shapes_match_table(size):
    assert layer_shapes(size, 64) == TABLE[size]


def test_layer_outputs_are_the_modules_outputs(encoder64):
    x = torch.randn(3, 3, 64, 64)
    e = encoder64
    with torch.no_grad():
        outs = e.layer_outputs(x)
        assert len(outs) == 8
        expected = [e.conv(x)]
        expected.append(e.res(F.leaky_relu(expected[0], 0.01)))
        expected.append(e.dwn1(expected[1]))
        expected.append(e.dwn2(expected[2]))
        expected.append(e.dwn3(expected[3]))
        expected.append(F.leaky_relu(e.bn(e.fc1(expected[4].reshape(3, -1))), 0.01))
        expected.append(e.fc2(expected[5]))
        expected.append(torch.sigmoid(expected[6]))
        for i, (got, want) in enumerate(zip(outs, expected)):
            assert torch.allclose(got, want, atol=1e-6), f"layer {i} ({LAYER_NAMES[i]})"
        assert torch.equal(e(x), outs[7])
        assert len(e.layer_outputs(x, upto=2)) == 3


def test_parameter_counts():
    assert count_parameters(ResidualEncoder(128, 64)) == 18_020_768  # reference section 3.2
    assert count_parameters(ResidualEncoder(64, 64)) == 5_437_856
    ae = ResidualAutoencoder(128, 128)
    assert abs(count_parameters(ae.encoder) - 18.0e6) < 0.1e6
    assert abs(count_parameters(ae) - 36.4e6) < 0.1e6


@pytest.mark.parametrize("size", [128, 64])
def test_autoencoder_output_shape(size):
    ae = ResidualAutoencoder(size, 32)
    x = torch.rand(2, 3, size, size) * 2 - 1
    y = ae(x)
    assert y.shape == x.shape and ae.encoder(x).shape == (2, 32)
    y.pow(2).sum().backward()
    assert ae.encoder.conv.weight.grad is not None


def test_bad_input_size():
    with pytest.raises(ValueError, match="multiple of 8"):
        ResidualAutoencoder(100, 64)


def test_selector_shapes():
    maps = Selector((32, 20, 20)).eval()
    assert maps(torch.randn(5, 32, 20, 20)).shape == (5, 128)
    vec = Selector((256,), hidden=64, out=16).eval()
    assert vec(torch.randn(5, 256)).shape == (5, 16)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in maps.modules()) == 1
    assert not any(isinstance(m, torch.nn.Conv2d) for m in vec.modules())
    with pytest.raises(ValueError):
        Selector((3, 4))


def test_selector_parameter_count():
    shapes = layer_shapes(128, 64)
    assert sum(count_parameters(Selector(shapes[i])) for i in LAYER_INDICES) == 450_053  # authors' 8 selectors


def test_feature_net_keys_follow_given_order(encoder64):
    x = torch.randn(4, 3, 64, 64)
    net = ResidualFeatureNet(encoder64, [7, 0, 3], use_selectors=False).eval()
    with torch.no_grad():
        feats = net(x)
        outs = encoder64.layer_outputs(x)
    assert list(feats) == [7, 0, 3]
    assert {k: tuple(v.shape) for k, v in feats.items()} == {7: (4, 64), 0: (4, 32), 3: (4, 128)}
    assert net.feature_dims == {7: 64, 0: 32, 3: 128}
    assert torch.allclose(feats[0], outs[0].mean(dim=(2, 3)))
    assert torch.allclose(feats[3], outs[3].mean(dim=(2, 3)))
    assert torch.equal(feats[7], outs[7])


def test_feature_net_with_selectors(encoder64):
    x = torch.randn(4, 3, 64, 64)
    net = ResidualFeatureNet(encoder64, [5, 1], use_selectors=True).eval()
    with torch.no_grad():
        feats = net(x)
        outs = encoder64.layer_outputs(x)
        assert list(feats) == [5, 1] and all(v.shape == (4, 128) for v in feats.values())
        assert torch.equal(feats[1], net.selectors["1"](outs[1]))
        assert torch.equal(feats[5], net.selectors["5"](outs[5]))
    assert net.encoder is encoder64  # shared, so stage 2 starts from the pretrained weights


def test_feature_net_stops_at_deepest_layer(encoder64):
    net = ResidualFeatureNet(encoder64, [2, 0], use_selectors=False)
    calls = []
    hook = encoder64.dwn3.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            net(torch.randn(2, 3, 64, 64))
        assert calls == []
        ResidualFeatureNet(encoder64, [2, 4], use_selectors=False)(torch.randn(2, 3, 64, 64))
        assert calls == [1, 1]  # one shape probe at construction, one forward
    finally:
        hook.remove()


def test_feature_net_batch_of_one_and_training():
    enc = ResidualEncoder(64, 8)
    net = ResidualFeatureNet(enc, list(LAYER_INDICES), use_selectors=False).eval()
    with torch.no_grad():
        assert all(v.shape[0] == 1 and v.dim() == 2 for v in net(torch.randn(1, 3, 64, 64)).values())
    net.train()
    loss = sum(v.pow(2).sum() for v in net(torch.randn(2, 3, 64, 64)).values())
    loss.backward()
    assert enc.conv.weight.grad is not None and enc.fc2.weight.grad is not None


@pytest.mark.parametrize("bad", [[], [8], [-1], [1, 1], [0.5], ["3"]])
def test_bad_layer_indices(encoder64, bad):
    with pytest.raises(ValueError, match="0=conv, .* 7=code"):
        ResidualFeatureNet(encoder64, bad, use_selectors=False)
