"""The CIFAR-10 LeNet: layer index map, feature net, autoencoder shapes."""
import pytest
import torch

from models.lenet import LAYER_INDICES, LAYER_NAMES, LeNetAutoencoder, PooledFeatureNet


def test_layer_map_points_at_the_modules_whose_outputs_are_used():
    ae = LeNetAutoencoder(128).eval()
    x = torch.randn(2, 3, 32, 32)
    seen = {}
    hooks = [getattr(ae.encoder, LAYER_NAMES[k]).register_forward_hook(
        lambda m, i, o, k=k: seen.__setitem__(k, o)) for k in LAYER_INDICES]
    outs = ae.encoder.layer_outputs(x)
    for h in hooks:
        h.remove()
    assert [tuple(o.shape) for o in outs] == [(2, 32, 32, 32), (2, 64, 16, 16), (2, 128, 8, 8), (2, 128)]
    for k in LAYER_INDICES:
        assert torch.equal(outs[k], seen[k])


def test_feature_net_pools_and_keeps_requested_order():
    ae = LeNetAutoencoder(64)
    feats = PooledFeatureNet(ae.encoder, [3, 0, 2])(torch.randn(4, 3, 32, 32))
    assert list(feats) == [3, 0, 2]
    assert [tuple(f.shape) for f in feats.values()] == [(4, 64), (4, 32), (4, 128)]


def test_autoencoder_output_shape_and_range():
    out = LeNetAutoencoder(128)(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 3, 32, 32) and out.min() >= 0 and out.max() <= 1


def test_parameter_count_matches_deep_svdd_encoder():
    assert sum(p.numel() for p in LeNetAutoencoder(128).encoder.parameters()) == 520_544


def test_bad_layers_and_code_length():
    with pytest.raises(ValueError):
        PooledFeatureNet(LeNetAutoencoder(128).encoder, [4])
    with pytest.raises(ValueError):
        PooledFeatureNet(LeNetAutoencoder(128).encoder, [1, 1])
    with pytest.raises(ValueError):
        LeNetAutoencoder(100)
