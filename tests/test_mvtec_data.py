"""MVTec AD loading, caching, error messages and batched augmentation."""
from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from datasets import mvtec
from datasets.mvtec import (
    IMAGE_SIZE_OBJECT, IMAGE_SIZE_TEXTURE, MVTEC_CATEGORIES, PATCH_SIZE, PATCHES_PER_IMAGE, ROTATION_DEGREES,
    TEXTURES, assemble_patches, category_spec, crop, extract_patches, load_mvtec, random_patches,
    random_rotate, rotate, rotated_crop, to_model_range, train_batch_transform,
)
from tests.mvtec_fixtures import make_mvtec_category
from utils.errors import USER_ERRORS

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mvtec"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Never touch the user's cache."""
    monkeypatch.setenv("MOCCA_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def bottle_root(tmp_path) -> Path:
    root = tmp_path / "mvtec"
    make_mvtec_category(root, "bottle", n_train=3, n_good=2, n_defect=2, size=96)
    return root


# --- category facts ----------------------------------------------------------------------------


def test_category_facts():
    assert len(MVTEC_CATEGORIES) == 15 and set(ROTATION_DEGREES) == set(MVTEC_CATEGORIES)
    assert TEXTURES == {"carpet", "grid", "leather", "tile", "wood"}
    for c in ("bottle", "hazelnut", "metal_nut", "screw"):
        assert ROTATION_DEGREES[c] == (-45.0, 45.0)
    for c in ("capsule", "toothbrush", "cable", "pill", "transistor", "zipper"):
        assert ROTATION_DEGREES[c] == (0.0, 0.0)
    for c in TEXTURES:
        assert ROTATION_DEGREES[c] == (0.0, 45.0)
        assert category_spec(c).image_size == 512 and category_spec(c).input_size == 64
    assert category_spec("cable").input_size == category_spec("cable").image_size == 128
    assert PATCHES_PER_IMAGE == 64 == mvtec.patches_per_image


# --- loading -----------------------------------------------------------------------------------


def test_layout_parsing_and_labels(bottle_root):
    data = load_mvtec(bottle_root, "bottle")
    assert data.train.shape == (3, 3, IMAGE_SIZE_OBJECT, IMAGE_SIZE_OBJECT) and data.train.dtype == torch.uint8
    assert data.test.shape == (6, 3, 128, 128)
    assert data.test_defects == ["crack", "crack", "good", "good", "scratch", "scratch"]
    assert data.test_labels.tolist() == [1, 1, 0, 0, 1, 1] and data.test_labels.dtype == torch.long
    assert [Path(p).relative_to(bottle_root).as_posix() for p in data.test_paths][:3] == [
        "bottle/test/crack/000.png", "bottle/test/crack/001.png", "bottle/test/good/000.png"]
    assert not data.is_texture and data.rotation == (-45.0, 45.0) and data.input_size == 128
    assert data.test_masks is not None and data.test_masks.shape == (6, 1, 128, 128)  # always read and checked


def test_rgb_order(bottle_root):
    red_bgr = np.zeros((80, 80, 3), np.uint8)
    red_bgr[..., 2] = 255
    cv2.imwrite(str(bottle_root / "bottle" / "train" / "good" / "000.png"), red_bgr)
    img = load_mvtec(bottle_root, "bottle").train[0]
    assert img[0].min() == 255 and img[1].max() == 0 and img[2].max() == 0


def test_texture_and_grey_categories(tmp_path):
    make_mvtec_category(tmp_path, "leather", n_train=2, n_good=1, n_defect=1, size=520, defects=("cut",))
    make_mvtec_category(tmp_path, "screw", n_train=2, n_good=1, n_defect=1, size=96, defects=("bent",))
    assert cv2.imread(str(tmp_path / "screw/train/good/000.png"), cv2.IMREAD_UNCHANGED).ndim == 2
    tex = load_mvtec(tmp_path, "leather")
    assert tex.is_texture and tex.rotation == (0.0, 45.0) and tex.input_size == PATCH_SIZE
    assert tex.train.shape == (2, 3, IMAGE_SIZE_TEXTURE, IMAGE_SIZE_TEXTURE)
    grey = load_mvtec(tmp_path, "screw")
    assert grey.train.shape == (2, 3, 128, 128)
    assert torch.equal(grey.train[:, 0], grey.train[:, 1]) and torch.equal(grey.train[:, 0], grey.train[:, 2])


def test_masks_loaded_when_asked(bottle_root):
    data = load_mvtec(bottle_root, "bottle", with_masks=True)
    m = data.test_masks
    assert m.shape == (6, 1, 128, 128) and set(m.unique().tolist()) <= {0, 1}
    area = m.flatten(1).sum(1)
    assert (area[data.test_labels == 0] == 0).all() and (area[data.test_labels == 1] > 0).all()


def test_to_model_range():
    x = torch.tensor([0, 127, 255], dtype=torch.uint8)
    y = to_model_range(x)
    assert y.dtype == torch.float32 and y[0] == -1 and y[2] == 1 and abs(float(y[1]) + 1 / 255) < 1e-6
    with pytest.raises(TypeError):
        to_model_range(y)


# --- errors ------------------------------------------------------------------------------------


def _error(root, category="bottle") -> str:
    with pytest.raises(USER_ERRORS) as info:
        load_mvtec(root, category)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_category(bottle_root):
    message = _error(bottle_root, "bottles")
    assert "bottles" in message and all(c in message for c in MVTEC_CATEGORIES)


def test_missing_folders(tmp_path, bottle_root):
    assert "not found" in _error(tmp_path / "nowhere")
    assert "category folder not found" in _error(bottle_root, "cable")
    assert "pass its parent" in _error(bottle_root / "bottle")
    os.rename(bottle_root / "bottle/test", bottle_root / "bottle/test_")
    assert "bottle/test" in _error(bottle_root)
    os.rename(bottle_root / "bottle/train/good", bottle_root / "bottle/train/ok")
    assert "train/good" in _error(bottle_root)


def test_empty_folder(bottle_root):
    for f in (bottle_root / "bottle/train/good").iterdir():
        f.unlink()
    assert "empty folder" in _error(bottle_root)


def test_unreadable_png_is_named(bottle_root):
    bad = bottle_root / "bottle/test/good/001.png"
    bad.write_bytes(b"not a png at all")
    assert "001.png" in _error(bottle_root) and "cannot decode" in _error(bottle_root)


def test_truncated_png_is_named(bottle_root):
    bad = bottle_root / "bottle/train/good/002.png"
    bad.write_bytes(bad.read_bytes()[:200])
    assert "train/good/002.png" in _error(bottle_root)


def test_image_without_mask(bottle_root):
    (bottle_root / "bottle/ground_truth/scratch/001_mask.png").unlink()
    message = _error(bottle_root)
    assert "test/scratch/001.png" in message and "001_mask.png" in message


def test_mask_without_image(bottle_root):
    (bottle_root / "bottle/test/crack/000.png").unlink()
    message = _error(bottle_root)
    assert "ground_truth/crack/000_mask.png" in message and "no test image" in message


def test_too_small_image(bottle_root):
    cv2.imwrite(str(bottle_root / "bottle/train/good/001.png"), np.zeros((63, 100, 3), np.uint8))
    assert "001.png" in _error(bottle_root) and "64" in _error(bottle_root)


# --- cache -------------------------------------------------------------------------------------


def test_cache_reused_and_invalidated(bottle_root, monkeypatch):
    first = load_mvtec(bottle_root, "bottle", with_masks=True)
    real_imdecode = cv2.imdecode  # every image file is decoded from its checked bytes

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    second = load_mvtec(bottle_root, "bottle", with_masks=True)
    assert torch.equal(first.train, second.train) and torch.equal(first.test, second.test)
    assert torch.equal(first.test_masks, second.test_masks)
    second.train[0] += 1  # returned tensors are writable copies, not the read-only cache

    calls = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a, **k: calls.append(1) or real_imdecode(*a, **k))
    changed = bottle_root / "bottle/train/good/001.png"
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = load_mvtec(bottle_root, "bottle")
    assert len(calls) == 3 and torch.equal(third.train, first.train)  # train re-decoded, test reused


# --- patches -----------------------------------------------------------------------------------


def test_extract_patches_round_trip():
    images = torch.randint(0, 256, (2, 3, 512, 512), dtype=torch.uint8)
    patches = extract_patches(images)
    assert patches.shape == (2 * PATCHES_PER_IMAGE, 3, 64, 64)
    b, r, c = 1, 2, 5  # documented order: image-major, then row-major over the 8x8 grid
    assert torch.equal(patches[b * 64 + r * 8 + c], images[b, :, r * 64:(r + 1) * 64, c * 64:(c + 1) * 64])
    assert torch.equal(assemble_patches(patches), images)
    with pytest.raises(USER_ERRORS):
        extract_patches(torch.zeros(1, 3, 100, 100))


# --- augmentation --------------------------------------------------------------------------------


def _coordinate_images(b: int, size: int) -> torch.Tensor:
    """Channel 0 = row index, channel 1 = column index, channel 2 = image index."""
    rows = torch.arange(size, dtype=torch.float32)[:, None].expand(size, size)
    cols = torch.arange(size, dtype=torch.float32)[None, :].expand(size, size)
    return torch.stack([torch.stack([rows, cols, torch.full_like(rows, i)]) for i in range(b)])


def test_zero_rotation_is_identity():
    x = torch.randn(3, 3, 40, 40)
    assert random_rotate(x, (0.0, 0.0)) is x
    assert torch.equal(rotate(x, torch.zeros(3), mode="nearest"), x)
    assert torch.allclose(rotate(x, torch.zeros(3), mode="bilinear"), x, atol=1e-5)
    u8 = torch.randint(0, 256, (2, 3, 33, 47), dtype=torch.uint8)
    assert torch.equal(rotate(u8, torch.zeros(2)), u8)


def test_rotation_keeps_shape_direction_and_reflects():
    x = torch.randn(4, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    y = random_rotate(x, (-45.0, 45.0), g)
    assert y.shape == x.shape and y.dtype == x.dtype and not torch.equal(y, x)
    assert torch.equal(y, random_rotate(x, (-45.0, 45.0), torch.Generator().manual_seed(0)))
    # 90 degrees counter-clockwise (as displayed) is an exact pixel permutation
    assert torch.equal(rotate(x, torch.full((4,), 90.0)), torch.rot90(x, 1, dims=(2, 3)))
    # reflection padding: a constant image stays constant (zero padding would blacken the corners)
    flat = torch.full((2, 3, 32, 32), 7.0)
    assert torch.equal(rotate(flat, torch.tensor([30.0, 45.0])), flat)
    u8 = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    assert random_rotate(u8, (0.0, 45.0)).dtype == torch.uint8


def test_random_patches_are_windows():
    images = _coordinate_images(5, 100)
    patches = random_patches(images, 64, torch.Generator().manual_seed(1))
    assert patches.shape == (5, 3, 64, 64)
    for i, p in enumerate(patches):
        top, left = int(p[0, 0, 0]), int(p[1, 0, 0])
        assert torch.equal(p, images[i, :, top:top + 64, left:left + 64])


def test_fused_rotated_crop_matches_rotate_then_crop():
    x = torch.randn(3, 3, 96, 96)
    angles, top, left = torch.tensor([0.0, 17.0, 44.0]), torch.tensor([0, 10, 32]), torch.tensor([32, 5, 0])
    full = crop(rotate(x, angles, mode="bilinear"), top, left, 64)
    assert torch.allclose(rotated_crop(x, angles, top, left, 64, mode="bilinear"), full, atol=1e-4)


def test_train_batch_transform():
    g = torch.Generator().manual_seed(0)
    obj = torch.randint(0, 256, (4, 3, 128, 128), dtype=torch.uint8)
    assert train_batch_transform("capsule")(obj, g) is obj
    rotated = train_batch_transform("bottle")(obj, g)
    assert rotated.shape == obj.shape and not torch.equal(rotated, obj)
    tex = torch.randint(0, 256, (4, 3, 512, 512), dtype=torch.uint8)
    out = train_batch_transform("carpet")(to_model_range(tex), g)
    assert out.shape == (4, 3, 64, 64) and out.dtype == torch.float32 and out.abs().max() <= 1


def test_training_without_rotation():
    """--no-rotation: objects pass through untouched; textures still get one random (unrotated) patch."""
    g = torch.Generator().manual_seed(0)
    obj = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert train_batch_transform("bottle", rotation=False)(obj, g) is obj
    tex = torch.arange(2 * 128 * 128, dtype=torch.float32).view(2, 1, 128, 128)
    patches = train_batch_transform("carpet", rotation=False)(tex, g)
    for img, patch in zip(tex, patches):  # a window of the image itself: consecutive rows and columns
        top, left = divmod(int(patch[0, 0, 0]) - int(img[0, 0, 0]), 128)
        assert torch.equal(patch, img[:, top:top + 64, left:left + 64])


# --- real data ---------------------------------------------------------------------------------


@pytest.mark.skipif(not (REAL_DATA / "bottle").is_dir(), reason="real MVTec AD bottle data not present")
def test_real_bottle():
    start = time.perf_counter()
    data = load_mvtec(REAL_DATA, "bottle", with_masks=True)
    decode_s = time.perf_counter() - start
    start = time.perf_counter()
    again = load_mvtec(REAL_DATA, "bottle", with_masks=True)
    cached_s = time.perf_counter() - start
    print(f"\nbottle: first load {decode_s:.1f} s, cached load {cached_s:.2f} s")
    assert data.train.shape == (209, 3, 128, 128) and data.train.dtype == torch.uint8
    assert data.test.shape == (len(data.test_labels), 3, 128, 128)
    assert set(data.test_labels.tolist()) == {0, 1}
    assert torch.equal(data.test, again.test) and cached_s < decode_s
    assert (data.test_masks.flatten(1).sum(1) > 0).tolist() == data.test_labels.bool().tolist()
