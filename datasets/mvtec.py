"""MVTec AD: category facts, a decode-once loader and batched GPU/CPU augmentation.

Facts (paper section IV-B, authors' data_manager): objects are resized to 128x128, textures to
512x512 and fed to the network as 64x64 patches; random rotation is used for objects whose
anomalies do not depend on orientation (-45..45 degrees) and for textures (0..45 degrees); every
image is scaled to [-1, 1].

Differences from the authors' pipeline, chosen on purpose:
- Resizing uses cv2 ``INTER_AREA``. The authors used PIL bilinear ``Resize``, which, when
  shrinking, widens its filter to the scale factor (an anti-aliased average); ``INTER_AREA`` is
  the cv2 filter closest to that, while cv2 ``INTER_LINEAR`` would alias. Images are resized
  straight to SxS (every official image is square; a non-square image is squashed, not cropped).
- The resized uint8 images are decoded once and cached (``utils.io.cached_array``); the authors
  cached ~50,000 pre-augmented float32 copies instead (about 10 GB per object category).
- Augmentation runs on whole batches (``random_rotate``, ``random_patches``) so it can run on the
  GPU and gives fresh angles every epoch. ``grid_sample`` with reflection padding and
  ``align_corners=True`` reproduces reflect-pad -> rotate -> centre-crop exactly (mirror about the
  border pixel centres, as torchvision ``Pad(padding_mode='reflect')`` does); nearest sampling as
  in the authors' ``RandomRotation``.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from utils.io import cache_key, cached_array, read_image

# ---------------------------------------------------------------------------------------------
# Category facts: the one place that says how each MVTec AD category is handled.
# ---------------------------------------------------------------------------------------------

MVTEC_CATEGORIES: tuple[str, ...] = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)
TEXTURES: frozenset[str] = frozenset({"carpet", "grid", "leather", "tile", "wood"})
OBJECTS: frozenset[str] = frozenset(MVTEC_CATEGORIES) - TEXTURES

_ROTATED_OBJECTS = ("bottle", "hazelnut", "metal_nut", "screw")  # anomalies do not depend on pose
_FIXED_OBJECTS = ("capsule", "toothbrush", "cable", "pill", "transistor", "zipper")
ROTATION_DEGREES: dict[str, tuple[float, float]] = {
    **{c: (-45.0, 45.0) for c in _ROTATED_OBJECTS},
    **{c: (0.0, 0.0) for c in _FIXED_OBJECTS},
    **{c: (0.0, 45.0) for c in sorted(TEXTURES)},
}

IMAGE_SIZE_OBJECT = 128  # objects: resized image = network input
IMAGE_SIZE_TEXTURE = 512  # textures: resized image, cut into PATCH_SIZE patches
PATCH_SIZE = 64  # textures: network input
GRID_SIDE = IMAGE_SIZE_TEXTURE // PATCH_SIZE  # 8 patches per side
PATCHES_PER_IMAGE = GRID_SIDE ** 2  # 64 test patches per texture image
patches_per_image = PATCHES_PER_IMAGE  # alias kept for callers that use the lower-case name
MIN_IMAGE_SIDE = PATCH_SIZE  # a source image whose short side is smaller is rejected

GOOD = "good"
IMAGE_SUFFIX = ".png"  # the official layout holds PNG files only; other files are ignored
OWN_DATA_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")  # a category of your own may hold any of these
MASK_SUFFIX = "_mask.png"
RESIZE_INTERPOLATION = cv2.INTER_AREA
_CACHE_VERSION = 1  # bump when the decoded array format changes


@dataclass(frozen=True)
class CategorySpec:
    """How one category is preprocessed and fed to the network."""

    name: str
    is_texture: bool
    image_size: int  # side of the resized, cached image
    input_size: int  # side of the network input (image_size for objects, PATCH_SIZE for textures)
    rotation: tuple[float, float]  # training rotation range in degrees, counter-clockwise
    official: bool = True  # one of the 15 MVTec AD categories (else: your own data in the same layout)

    @property
    def suffixes(self) -> tuple[str, ...]:
        return (IMAGE_SUFFIX,) if self.official else OWN_DATA_SUFFIXES


def category_spec(category: str, texture: bool | None = None,
                  rotation: Sequence[float] | None = None) -> CategorySpec:
    """Facts for ``category``: one of the 15 as the paper treats it, or your own category.

    Your own category (any other name) is an object (``texture`` False, the default) or a texture
    (512x512 images scored over 64x64 patches, eq. 7), trained with ``rotation`` degrees (default
    none). A rotation range may also replace an official category's; its kind may not change.
    """
    official = category in ROTATION_DEGREES
    if official and texture is not None and texture != (category in TEXTURES):
        kind = "a texture" if category in TEXTURES else "an object"
        raise ValueError(f"{category} is {kind} category of MVTec AD: drop --texture/--object")
    is_texture = category in TEXTURES if official else bool(texture)
    degrees = tuple(float(d) for d in rotation) if rotation is not None else (
        ROTATION_DEGREES[category] if official else (0.0, 0.0))
    if len(degrees) != 2 or degrees[0] > degrees[1]:
        raise ValueError(f"rotation range {list(degrees)}: give LOW HIGH degrees with LOW <= HIGH")
    size = IMAGE_SIZE_TEXTURE if is_texture else IMAGE_SIZE_OBJECT
    return CategorySpec(category, is_texture, size, PATCH_SIZE if is_texture else size, degrees, official)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


@dataclass
class MVTecData:
    """One category, resized once. Images are uint8 (N, 3, S, S), RGB; use ``to_model_range``."""

    category: str
    train: torch.Tensor  # uint8 (N, 3, S, S), train/good
    test: torch.Tensor  # uint8 (M, 3, S, S)
    test_labels: torch.Tensor  # long (M,), 0 = good, 1 = any defect
    test_defects: list[str]  # defect folder name per test image ("good" for normal ones)
    test_paths: list[str]
    train_paths: list[str]
    is_texture: bool
    rotation: tuple[float, float]
    image_size: int  # S
    input_size: int  # network input side: S for objects, PATCH_SIZE for textures
    test_masks: Optional[torch.Tensor] = None  # uint8 (M, 1, S, S) in {0, 1}, if asked for


def load_mvtec(root: str | os.PathLike, category: str | CategorySpec, with_masks: bool = False) -> MVTecData:
    """Load ``<root>/<category>`` in the official layout, decoding each image only once.

    ``root`` is the folder holding the category folders. Masks are always paired with their images,
    decoded and checked (an image each, of its image's size) when present; ``with_masks`` makes them
    required. A category of your own may have no ``ground_truth`` folder (image-level results only).
    """
    spec = category if isinstance(category, CategorySpec) else category_spec(category)
    category = spec.name
    folder = _category_folder(Path(root), spec)
    train_files = _list_images(folder / "train" / GOOD, spec.suffixes)
    test_files, test_defects = _list_test(folder, spec.suffixes)
    if spec.official or (folder / "ground_truth").is_dir():
        mask_files = _pair_masks(folder, test_files, test_defects)
    elif with_masks:
        raise ValueError(f"no masks for {folder}: pixel-level results need {folder / 'ground_truth'}/<type>/*_mask.png")
    else:
        mask_files = [None] * len(test_files)

    size = spec.image_size
    train = _cached_images(folder, "train", train_files, size, grey=False)
    test = _cached_images(folder, "test", test_files, size, grey=False)
    masks = None
    if with_masks or any(m is not None for m in mask_files):  # read and checked once, then cached
        masks = _load_masks(folder, mask_files, test_files, size)
    labels = torch.tensor([0 if d == GOOD else 1 for d in test_defects], dtype=torch.long)
    return MVTecData(
        category=category,
        train=train,
        test=test,
        test_labels=labels,
        test_defects=test_defects,
        test_paths=[str(p) for p in test_files],
        train_paths=[str(p) for p in train_files],
        is_texture=spec.is_texture,
        rotation=spec.rotation,
        image_size=size,
        input_size=spec.input_size,
        test_masks=masks,
    )


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (the authors' ToTensor + Normalize(0.5, 0.5))."""
    if images.dtype != torch.uint8:
        raise TypeError(f"to_model_range expects a uint8 tensor, got {images.dtype}")
    return images.float().div_(127.5).sub_(1.0)


def _category_folder(root: Path, spec: CategorySpec) -> Path:
    """Check the category folder and its train/good and test folders exist."""
    if not root.is_dir():
        raise FileNotFoundError(f"MVTec AD data folder not found: {root} (pass the folder that holds the category folders)")
    folder = root / spec.name
    if not folder.is_dir() and not spec.official:
        raise ValueError(f"unknown MVTec AD category {spec.name!r}: use one of {', '.join(MVTEC_CATEGORIES)}, or put "
                        f"your own data in {folder}/train/good and {folder}/test/<good|defect type>")
    if not folder.is_dir():
        hint = " (it looks like a category folder itself: pass its parent)" if (root / "train").is_dir() else ""
        raise FileNotFoundError(f"category folder not found: {folder}{hint}")
    for sub in ("train/good", "test"):
        if not (folder / sub).is_dir():
            raise FileNotFoundError(f"missing folder {folder / sub}: expected the official MVTec AD layout")
    return folder


def _list_images(folder: Path, suffixes: Sequence[str] = (IMAGE_SUFFIX,)) -> list[Path]:
    """Sorted image files of ``folder``; ValueError when there are none."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(tuple(suffixes)))
    if not files:
        raise ValueError(f"empty folder: no {'/'.join(suffixes)} images in {folder}")
    return files


def _list_test(folder: Path, suffixes: Sequence[str] = (IMAGE_SUFFIX,)) -> tuple[list[Path], list[str]]:
    """Test images in sorted defect-folder order, then sorted file order, with their folder names."""
    test_root = folder / "test"
    defect_dirs = sorted(p for p in test_root.iterdir() if p.is_dir())
    if not defect_dirs:
        raise ValueError(f"empty folder: {test_root} has no good/<defect> sub-folders")
    files: list[Path] = []
    defects: list[str] = []
    for d in defect_dirs:
        images = _list_images(d, suffixes)
        files += images
        defects += [d.name] * len(images)
    return files, defects


def _mask_name(image: Path) -> str:
    return image.stem + MASK_SUFFIX


def _pair_masks(folder: Path, test_files: list[Path], defects: list[str]) -> list[Optional[Path]]:
    """Mask path per test image (None for good ones); ValueError for any unpaired image or mask."""
    gt_root = folder / "ground_truth"
    masks: list[Optional[Path]] = []
    expected: set[Path] = set()
    for image, defect in zip(test_files, defects):
        if defect == GOOD:
            masks.append(None)
            continue
        mask = gt_root / defect / _mask_name(image)
        if not mask.is_file():
            raise ValueError(f"defect image {image} has no mask: expected {mask}")
        masks.append(mask)
        expected.add(mask)
    if gt_root.is_dir():
        for d in sorted(p for p in gt_root.iterdir() if p.is_dir()):
            for mask in sorted(d.iterdir()):
                if mask.name.lower().endswith(IMAGE_SUFFIX) and mask not in expected:
                    image = folder / "test" / d.name / mask.name.replace(MASK_SUFFIX, IMAGE_SUFFIX)
                    raise ValueError(f"mask {mask} has no test image: expected {image} (remove the mask or restore the image)")
    return masks


def _file_signature(files: Sequence[Path], base: Path) -> list[tuple[str, int, int]]:
    """Relative name, mtime (ns) and size of every file: what the cached array depends on."""
    out = []
    for f in files:
        st = f.stat()
        out.append((f.relative_to(base).as_posix(), st.st_mtime_ns, st.st_size))
    return out


def _cached_images(folder: Path, split: str, files: list[Path], size: int, grey: bool,
                   build: Callable[[], np.ndarray] | None = None) -> torch.Tensor:
    """Decode + resize ``files`` once into a uint8 (N, C, S, S) array cached on disk."""
    key = cache_key(str(folder.resolve()), split, size, grey, RESIZE_INTERPOLATION, _CACHE_VERSION,
                    _file_signature(files, folder))
    name = f"mvtec-{folder.name}-{split}-{size}"
    array = cached_array(name, key, build or (lambda: _decode_all(files, size, grey)))
    return torch.from_numpy(np.array(array))  # copy: the cache is a read-only memory map


def _load_masks(folder: Path, masks: list[Optional[Path]], images: list[Path], size: int) -> torch.Tensor:
    """Binary masks (M, 1, S, S) for the test images; zeros for good images."""
    present = [m for m in masks if m is not None]
    paired = [img for img, m in zip(images, masks) if m is not None]
    out = torch.zeros((len(masks), 1, size, size), dtype=torch.uint8)
    if present:
        decoded = _cached_images(folder, "masks", present, size, grey=True,
                                 build=lambda: _decode_masks(present, paired, size))
        rows = [i for i, m in enumerate(masks) if m is not None]
        out[rows] = (decoded >= 128).to(torch.uint8)
    return out


def _decode_masks(masks: list[Path], images: list[Path], size: int) -> np.ndarray:
    """Decode the masks after checking each is an image of its test image's size (a mask of another
    size would be stretched onto the wrong pixels)."""
    from PIL import Image  # header-only size reads (Pillow comes with torchvision)

    for mask, image in zip(masks, images):
        m = read_image(mask, grey=True)
        with Image.open(image) as im:
            width, height = im.size
        if m.shape != (height, width):
            raise ValueError(f"mask {mask} is {m.shape[1]}x{m.shape[0]} but its image {image} is {width}x{height}; "
                             "replace the mask with one of the image's size")
    return _decode_all(masks, size, grey=True)


def _decode_all(files: list[Path], size: int, grey: bool) -> np.ndarray:
    """Decode in a thread pool (cv2 releases the GIL) and stack as (N, C, S, S) uint8."""
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        images = list(pool.map(lambda f: decode_image(f, size, grey), files))
    return np.stack(images)


def decode_image(path: Path, size: int, grey: bool) -> np.ndarray:
    """Read one PNG as RGB (grey-scale files become 3 equal channels) or as one grey channel."""
    image = read_image(path, grey)  # grey-scale files become 3 equal channels unless ``grey``
    h, w = image.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise ValueError(f"image {path} is {w}x{h}: its short side must be at least {MIN_IMAGE_SIDE} px")
    if (h, w) != (size, size):
        image = cv2.resize(image, (size, size), interpolation=RESIZE_INTERPOLATION)
    if grey:
        return image[None]
    return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB).transpose(2, 0, 1))


# ---------------------------------------------------------------------------------------------
# Batched augmentation (CPU or CUDA). Angles are degrees, positive = counter-clockwise on screen.
# ---------------------------------------------------------------------------------------------


def _uniform(n: int, low: float, high: float, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    """n samples of U(low, high) drawn with ``generator`` (on its own device), moved to ``device``."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(n, generator=generator, device=gen_device, dtype=torch.float64)
    return (low + (high - low) * u).to(device)


def _rotation_theta(angles_deg: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 2, 3) affine_grid matrices (align_corners=True) sampling an image rotated about its centre.

    Output pixel offset (u, v) from the centre samples the input at (cos u - sin v, sin u + cos v),
    i.e. the content turns counter-clockwise as displayed (y axis down). Normalised coordinates are
    rescaled so that non-square images rotate without shear.
    """
    a = torch.deg2rad(angles_deg.double())
    cos, sin = torch.cos(a), torch.sin(a)
    sx, sy = max(width - 1, 1), max(height - 1, 1)  # pixels per unit of normalised coordinate * 2
    theta = torch.zeros((len(a), 2, 3), dtype=torch.float64, device=a.device)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * sy / sx
    theta[:, 1, 0] = sin * sx / sy
    theta[:, 1, 1] = cos
    return theta


def _sample(batch: torch.Tensor, theta: torch.Tensor, out_hw: tuple[int, int], mode: str) -> torch.Tensor:
    """grid_sample with reflection padding; uint8 in -> uint8 out (rounded), float keeps its dtype."""
    work = batch if batch.is_floating_point() else batch.float()
    grid = F.affine_grid(theta.to(work.dtype), [len(work), work.shape[1], *out_hw], align_corners=True)
    out = F.grid_sample(work, grid, mode=mode, padding_mode="reflection", align_corners=True)
    if batch.is_floating_point():
        return out
    return out.round_().clamp_(0, 255).to(batch.dtype)


def rotate(batch: torch.Tensor, angles_deg: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
    """Rotate each image of (B, C, H, W) by its own angle about its centre, reflecting at borders."""
    theta = _rotation_theta(angles_deg.to(batch.device), batch.shape[2], batch.shape[3])
    return _sample(batch, theta, (batch.shape[2], batch.shape[3]), mode)


def random_rotate(batch: torch.Tensor, degrees: tuple[float, float], generator: Optional[torch.Generator] = None,
                  mode: str = "nearest") -> torch.Tensor:
    """Rotate each image by an angle ~ U(degrees); (0, 0) returns ``batch`` itself untouched.

    Equivalent to the authors' Pad(S//4, reflect) -> RandomRotation(nearest) -> CenterCrop(S).
    """
    low, high = degrees
    if low == 0 and high == 0:
        return batch
    return rotate(batch, _uniform(len(batch), low, high, generator, batch.device), mode)


def crop(batch: torch.Tensor, top: torch.Tensor, left: torch.Tensor, patch: int = PATCH_SIZE) -> torch.Tensor:
    """One (patch x patch) window per image at its own (top, left): (B, C, patch, patch)."""
    device = batch.device
    offs = torch.arange(patch, device=device)
    rows = (top.to(device).long()[:, None] + offs)[:, :, None]  # (B, p, 1)
    cols = (left.to(device).long()[:, None] + offs)[:, None, :]  # (B, 1, p)
    b = torch.arange(len(batch), device=device)[:, None, None]
    return batch.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2).contiguous()


def _random_offsets(batch: torch.Tensor, patch: int, generator: Optional[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform integer (top, left) so that the window fits, as torchvision RandomCrop draws them."""
    h, w = batch.shape[2], batch.shape[3]
    if h < patch or w < patch:
        raise ValueError(f"cannot crop {patch}x{patch} patches from {h}x{w} images")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    top = torch.randint(0, h - patch + 1, (len(batch),), generator=generator, device=gen_device)
    left = torch.randint(0, w - patch + 1, (len(batch),), generator=generator, device=gen_device)
    return top.to(batch.device), left.to(batch.device)


def random_patches(batch: torch.Tensor, patch: int = PATCH_SIZE, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One random (patch x patch) crop per image: (B, C, patch, patch)."""
    top, left = _random_offsets(batch, patch, generator)
    return crop(batch, top, left, patch)


def rotated_crop(batch: torch.Tensor, angles_deg: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                 patch: int = PATCH_SIZE, mode: str = "nearest") -> torch.Tensor:
    """``crop(rotate(batch, angles), top, left)`` computed by sampling only the patch pixels.

    Same result (the rotated image is never built), about (S/patch)^2 = 64x less work for textures.
    """
    h, w = batch.shape[2], batch.shape[3]
    rot = _rotation_theta(angles_deg.to(batch.device), h, w)
    # affine map from patch-normalised to full-image-normalised coordinates (align_corners=True)
    sx, sy = (patch - 1) / max(w - 1, 1), (patch - 1) / max(h - 1, 1)
    bx = (2 * left.to(batch.device).double() + patch - 1) / max(w - 1, 1) - 1
    by = (2 * top.to(batch.device).double() + patch - 1) / max(h - 1, 1) - 1
    theta = torch.empty_like(rot)
    theta[:, :, 0] = rot[:, :, 0] * sx
    theta[:, :, 1] = rot[:, :, 1] * sy
    theta[:, :, 2] = rot[:, :, 0] * bx[:, None] + rot[:, :, 1] * by[:, None]
    return _sample(batch, theta, (patch, patch), mode)


def random_rotated_patches(batch: torch.Tensor, degrees: tuple[float, float], patch: int = PATCH_SIZE,
                           generator: Optional[torch.Generator] = None, mode: str = "nearest") -> torch.Tensor:
    """Texture training sample: rotate by U(degrees), then one random patch per image."""
    low, high = degrees
    if low == 0 and high == 0:
        return random_patches(batch, patch, generator)
    angles = _uniform(len(batch), low, high, generator, batch.device)
    top, left = _random_offsets(batch, patch, generator)
    return rotated_crop(batch, angles, top, left, patch, mode)


BatchTransform = Callable[..., torch.Tensor]


def train_batch_transform(category: str | CategorySpec, mode: str = "nearest", rotation: bool = True) -> BatchTransform:
    """Training augmentation for ``category`` as ``fn(batch, generator=None) -> batch``.

    Objects: random rotation when the range is non-zero (else identity). Textures: random
    rotation then one random PATCH_SIZE patch per image (fused, see ``rotated_crop``).
    ``rotation=False`` drops the rotation (textures still get their random patch).
    Works on uint8 or float batches, on any device.
    """
    spec = category if isinstance(category, CategorySpec) else category_spec(category)
    degrees = spec.rotation if rotation else (0.0, 0.0)

    def objects(batch: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return random_rotate(batch, degrees, generator, mode)

    def textures(batch: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return random_rotated_patches(batch, degrees, PATCH_SIZE, generator, mode)

    return textures if spec.is_texture else objects


# ---------------------------------------------------------------------------------------------
# Test-time patch grid for textures
# ---------------------------------------------------------------------------------------------


def extract_patches(images: torch.Tensor, patch: int = PATCH_SIZE) -> torch.Tensor:
    """(B, C, H, W) -> (B * (H/patch) * (W/patch), C, patch, patch), non-overlapping grid.

    Order: image-major, then row-major over the grid: output index
    ``b * G_h * G_w + r * G_w + c`` is ``images[b, :, r*patch:(r+1)*patch, c*patch:(c+1)*patch]``.
    So the 64 patches of one 512x512 image are consecutive (one image = one scoring group).
    """
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch}")
    grid = images.unfold(2, patch, patch).unfold(3, patch, patch)  # (B, C, Gh, Gw, p, p)
    return grid.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, patch, patch)


def assemble_patches(patches: torch.Tensor, grid: tuple[int, int] = (GRID_SIDE, GRID_SIDE)) -> torch.Tensor:
    """Inverse of ``extract_patches``: (B * Gh * Gw, C, p, p) -> (B, C, Gh * p, Gw * p)."""
    gh, gw = grid
    n, c, p, q = patches.shape
    if n % (gh * gw):
        raise ValueError(f"{n} patches do not fill whole {gh}x{gw} grids")
    x = patches.reshape(n // (gh * gw), gh, gw, c, p, q).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(n // (gh * gw), c, gh * p, gw * q)


def downscale(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> uint8 (N, 3, size, size) with antialiasing (done once, before training)."""
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)
