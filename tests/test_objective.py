"""The multi-layer objective against hand-computed values."""
import pytest
import torch

from trainers.objective import (
    MultiLayerObjective,
    compute_centroids,
    hard_boundary_loss,
    max_over_patches,
    push_from_zero,
    quantile_radius,
    soft_boundary_loss,
    squared_distances,
)


def test_squared_distance_by_hand():
    f = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    c = torch.tensor([1.0, 0.0])
    assert squared_distances(f, c).tolist() == [4.0, 1.0]


def test_hard_loss_is_mean_squared_distance():
    assert hard_boundary_loss(torch.tensor([1.0, 3.0, 8.0])).item() == pytest.approx(4.0)


def test_soft_loss_by_hand():
    # R = 2 -> R^2 = 4; excess over R^2: [0, 0, 4, 12] -> mean 4; nu = 0.5 -> 4 + 4 / 0.5 = 12
    dist = torch.tensor([1.0, 4.0, 8.0, 16.0])
    assert soft_boundary_loss(dist, 2.0, 0.5).item() == pytest.approx(12.0)


def test_soft_loss_with_zero_radius_is_mean_over_nu():
    dist = torch.tensor([1.0, 3.0])
    assert soft_boundary_loss(dist, 0.0, 0.1).item() == pytest.approx(20.0)


def test_radius_is_quantile_of_distances_not_squares():
    dist = torch.arange(1, 11, dtype=torch.float32) ** 2  # sqrt -> 1..10
    # numpy-style linear interpolation: 0.9 quantile of 1..10 = 1 + 0.9 * 9 = 9.1
    assert quantile_radius(dist, 0.1).item() == pytest.approx(9.1)


def test_centroid_eps_rule():
    c = torch.tensor([0.05, -0.05, 0.0, 0.5, -0.3, 0.1])
    assert push_from_zero(c, 0.1).tolist() == pytest.approx([0.1, -0.1, 0.0, 0.5, -0.3, 0.1])


class TwoLayerNet(torch.nn.Module):
    def forward(self, x):
        return {0: x, 2: 2 * x}


def test_centroids_are_means_over_all_batches():
    data = [torch.tensor([[1.0, 3.0]]), torch.tensor([[3.0, 5.0], [2.0, 4.0]])]
    centers = compute_centroids(TwoLayerNet(), data)
    assert centers[0].tolist() == pytest.approx([2.0, 4.0])
    assert centers[2].tolist() == pytest.approx([4.0, 8.0])


def test_objective_loss_is_mean_over_layers_and_scores_follow_eq6():
    obj = MultiLayerObjective({0: torch.zeros(2), 2: torch.ones(2)}, boundary="hard")
    feats = {0: torch.tensor([[1.0, 1.0]]), 2: torch.tensor([[1.0, 3.0]])}
    dist = obj.distances(feats)
    assert dist[0].item() == 2.0 and dist[2].item() == 4.0
    assert obj.loss(dist).item() == pytest.approx(3.0)
    assert obj.combined_score(obj.layer_scores(dist)).item() == pytest.approx(3.0)


def test_layer_sum_reduction_adds_the_layers_losses_and_leaves_scores_alone():
    """The authors' objective (video default): sum over layers; eq. 6 still averages the scores."""
    obj = MultiLayerObjective({0: torch.zeros(2), 2: torch.ones(2)}, boundary="hard", layer_reduction="sum")
    dist = obj.distances({0: torch.tensor([[1.0, 1.0]]), 2: torch.tensor([[1.0, 3.0]])})  # 2 and 4
    assert obj.loss(dist).item() == pytest.approx(6.0)
    assert obj.combined_score(obj.layer_scores(dist)).item() == pytest.approx(3.0)
    soft = MultiLayerObjective({0: torch.zeros(1), 1: torch.zeros(1)}, "soft", nu=0.5, layer_reduction="sum")
    # R = 0: each layer's loss is mean(d^2) / nu -> mean(1, 3) / 0.5 = 4 and mean(2, 2) / 0.5 = 4; sum 8
    assert soft.loss({0: torch.tensor([1.0, 3.0]), 1: torch.tensor([2.0, 2.0])}).item() == pytest.approx(8.0)
    with pytest.raises(ValueError):
        MultiLayerObjective({0: torch.zeros(1)}, layer_reduction="max")


def test_soft_scores_subtract_squared_radius_and_radius_updates():
    obj = MultiLayerObjective({1: torch.zeros(1)}, boundary="soft", nu=0.5)
    dist = {1: torch.tensor([1.0, 9.0])}  # distances 1 and 3 -> median 2
    obj.update_radii(dist)
    assert obj.radii()[1] == pytest.approx(2.0)
    assert obj.layer_scores(dist)[1].tolist() == pytest.approx([-3.0, 5.0])
    assert "radius_1" in obj.state_dict() and "center_1" in obj.state_dict()


def test_bad_boundary_and_nu_are_rejected():
    with pytest.raises(ValueError):
        MultiLayerObjective({0: torch.zeros(1)}, boundary="medium")
    with pytest.raises(ValueError):
        MultiLayerObjective({0: torch.zeros(1)}, nu=0.0)


def test_max_over_patches():
    scores = torch.tensor([1.0, 5.0, 2.0, 0.0, -1.0, 3.0])
    assert max_over_patches(scores, 3).tolist() == [5.0, 3.0]
    with pytest.raises(ValueError):
        max_over_patches(scores, 4)


def test_new_head_batchnorm_is_calibrated_before_centroids_and_encoder_stats_kept():
    from trainers.objective import calibrate_new_batchnorm

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.BatchNorm1d(2)
            self.selectors = torch.nn.ModuleDict({"0": torch.nn.BatchNorm1d(2)})

        def forward(self, x):
            return {0: self.selectors["0"](self.encoder(x))}

    net = Net()
    net.encoder.running_mean.fill_(5.0)
    data = [torch.randn(64, 2) * 3 + 10 for _ in range(4)]
    assert calibrate_new_batchnorm(net, data) == 1
    assert net.encoder.running_mean.tolist() == [5.0, 5.0]  # pretrained statistics untouched
    mean_in = torch.cat([net.encoder.eval()(x) for x in data]).mean(0)
    assert net.selectors["0"].running_mean.tolist() == pytest.approx(mean_in.tolist(), abs=1e-4)
    assert net.selectors["0"].momentum == 0.1


def test_recalibrated_batchnorm_makes_eval_mode_match_train_mode():
    """After a few big steps the running averages lag; one pass over the data re-estimates them."""
    from trainers.objective import recalibrate_batchnorm

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    data = torch.randn(256, 3) * 2 + 1
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(3):  # large steps: the running mean cannot follow
        opt.zero_grad()
        (net(data) - 3).pow(2).mean().backward()
        opt.step()
    net.train()
    with torch.no_grad():
        train_mode = net(data)
    lagging = net.eval()(data)
    assert not torch.allclose(lagging, train_mode, atol=1e-2)
    assert recalibrate_batchnorm(net, [data[:128], data[128:]]) == 1
    assert not net.training  # mode restored
    with torch.no_grad():
        assert torch.allclose(net(data), train_mode, atol=2e-2)  # only the unbiased-variance factor differs
    assert net[1].momentum == 0.1
