"""CIFAR-10 data: preprocessing constants, layouts and the one-class split."""
import tarfile

import numpy as np
import pytest
import torch

from datasets.cifar10 import (
    GCN_L1_MIN_MAX,
    global_contrast_normalization,
    load_one_class,
    min_max_scale,
    resolve_layout,
)
from tests.cifar_fixtures import make_cifar_folder
from utils.errors import USER_ERRORS


@pytest.fixture(autouse=True)
def _cache(isolated_cache):
    """Every test here decodes into the session's temp cache."""


def test_gcn_l1_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 6.0]).reshape(1, 1, 2, 2)  # mean 3, centred [-2,-1,0,3], L1 mean 1.5
    assert global_contrast_normalization(x).flatten().tolist() == pytest.approx([-4 / 3, -2 / 3, 0.0, 2.0])


def test_min_max_uses_the_normal_class_constants():
    lo, hi = GCN_L1_MIN_MAX[3]
    x = torch.tensor([lo, hi, (lo + hi) / 2])
    assert min_max_scale(x, 3).tolist() == pytest.approx([0.0, 1.0, 0.5])


def test_one_class_split_from_image_folders(tmp_path):
    root = make_cifar_folder(tmp_path / "cifar", n_train=5, n_test=3)
    data = load_one_class(root, normal_class=2)
    assert data.train.shape == (5, 3, 32, 32) and data.test.shape == (30, 3, 32, 32)
    assert data.test_labels.sum() == 27  # 9 other classes x 3 images are anomalies
    assert (data.test_labels == (data.test_classes != 2)).all()
    assert data.train.dtype == torch.float32


def test_tarball_and_parent_folder_layouts(tmp_path):
    make_cifar_folder(tmp_path / "src" / "cifar10-jpg", n_train=2, n_test=1)
    archive = tmp_path / "data" / "cifar10-jpg.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar10-jpg", arcname="cifar10-jpg")
    kind, root = resolve_layout(archive.parent)  # a folder holding one archive
    assert kind == "folder" and (root / "train" / "airplane").is_dir()
    assert resolve_layout(tmp_path / "src") == ("folder", tmp_path / "src" / "cifar10-jpg")


def test_decoded_images_are_cached(tmp_path, monkeypatch):
    root = make_cifar_folder(tmp_path / "cifar", n_train=2, n_test=1)
    first = load_one_class(root, 0)
    import cv2
    monkeypatch.setattr(cv2, "imread", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded twice")))
    second = load_one_class(root, 0)
    assert torch.equal(first.train, second.train)


@pytest.mark.parametrize("problem, match", [
    ("missing", "does not exist"),
    ("empty", "no CIFAR-10 data"),
    ("corrupt", "cannot decode image"),
])
def test_bad_data_paths_are_user_errors(tmp_path, problem, match):
    root = tmp_path / "cifar"
    if problem == "empty":
        root.mkdir()
    if problem == "corrupt":
        make_cifar_folder(root, n_train=2, n_test=1)
        (root / "train" / "airplane" / "0000.png").write_bytes(b"not a png")
    with pytest.raises(USER_ERRORS, match=match):
        load_one_class(root, 0)


def test_wrong_class_index():
    with pytest.raises(USER_ERRORS, match="0-9"):
        load_one_class("/nonexistent", 10)


def test_download_fails_clearly_offline(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(USER_ERRORS, match="offline"):
        load_one_class(tmp_path / "dl", 0, download=True)


def test_no_download_without_the_flag(tmp_path):
    with pytest.raises(USER_ERRORS):
        load_one_class(tmp_path, 0)
    assert not any(tmp_path.iterdir())  # nothing fetched or written
