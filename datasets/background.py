"""Background removal for video anomaly detection (section IV-C of the paper).

The paper removes the background of every ShanghaiTech frame so the model only sees foreground
objects. The authors' repository does no preprocessing itself; the recipe it carries (the
``RemoveBackground`` transform) comes from LSA (Abati et al., CVPR 2019). Two named recipes:

``lsa`` (default, LSA's recipe):

1. frames are resized to the model size first (256x512 for ShanghaiTech);
2. one background image per video: ``cv2.createBackgroundSubtractorMOG2()`` with OpenCV's default
   parameters (history 500, varThreshold 16, detectShadows True) fed every frame, then
   ``getBackgroundImage()``;
3. a pixel is kept when the sum over the three colour channels of |frame - background| exceeds
   ``threshold`` (128);
4. the mask is dilated ``dilate_iterations`` times (5) with the 3x3 cross, scipy's default
   ``binary_dilation`` structuring element (``generate_binary_structure(2, 1)``);
5. frames are multiplied by the mask (background pixels become 0).

LSA resizes with skimage; the resizing here is OpenCV's (area interpolation when shrinking).

``native`` (an alternative, not LSA's recipe): the same threshold and number of dilations, but the
background is removed at the native resolution before resizing, MOG2 runs with history = number of
frames of the video and no shadow detection, and the mask is dilated with a 3x3 square.

Known property of both: MOG2 initialises its model from the first frame, so an object that is
already in frame 0 (or that stays put for a large part of the video) partly enters the background
image and leaves a "ghost" there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import cv2
import numpy as np


DEFAULT_THRESHOLD = 128
DEFAULT_DILATE_ITERATIONS = 5
DEFAULT_RECIPE = "lsa"
MOG2_DEFAULT_HISTORY = 500  # cv2.createBackgroundSubtractorMOG2() default


@dataclass(frozen=True)
class Recipe:
    """The parameters in which the background-removal recipes differ."""

    name: str
    resize_first: bool  # resize to the model size before estimating the background
    history: int | None  # MOG2 history; None = number of frames of the video
    detect_shadows: bool
    kernel_shape: int  # cv2.MORPH_* shape of the 3x3 dilation element

    def mog2_history(self, n_frames: int) -> int:
        return self.history if self.history is not None else max(int(n_frames), 1)

    def kernel(self) -> np.ndarray:
        return cv2.getStructuringElement(self.kernel_shape, (3, 3))


RECIPES: dict[str, Recipe] = {
    "lsa": Recipe("lsa", resize_first=True, history=MOG2_DEFAULT_HISTORY, detect_shadows=True,
                  kernel_shape=cv2.MORPH_CROSS),
    "native": Recipe("native", resize_first=False, history=None, detect_shadows=False, kernel_shape=cv2.MORPH_RECT),
}


def get_recipe(name: str | Recipe) -> Recipe:
    """The recipe of a name (ValueError for an unknown one)."""
    if isinstance(name, Recipe):
        return name
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown background recipe '{name}'; use one of {sorted(RECIPES)}") from None


def estimate_background(
    frames: Iterable[np.ndarray], history: int = MOG2_DEFAULT_HISTORY, detect_shadows: bool = True
) -> np.ndarray:
    """One background image (H, W, 3) uint8 from all frames of a video with MOG2.

    Defaults are OpenCV's. Takes an iterable so a caller can stream frames instead of holding a video.
    """
    subtractor = cv2.createBackgroundSubtractorMOG2(history=max(int(history), 1), detectShadows=bool(detect_shadows))
    seen = 0
    for frame in frames:
        subtractor.apply(np.ascontiguousarray(frame))
        seen += 1
    if seen == 0:
        raise ValueError("cannot estimate a background from a video with no frames; check the input video")
    background = subtractor.getBackgroundImage()
    if background is None:
        raise ValueError("OpenCV MOG2 returned no background image; check that the frames are 8-bit colour images")
    return background


def foreground_mask(
    frame: np.ndarray,
    background: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    dilate_iterations: int = DEFAULT_DILATE_ITERATIONS,
    kernel: np.ndarray | None = None,
) -> np.ndarray:
    """Binary (H, W) uint8 mask of the pixels that differ enough from the background, dilated.

    ``kernel`` defaults to the 3x3 cross (scipy's default element, as LSA dilates).
    """
    diff = np.abs(frame.astype(np.int16) - background.astype(np.int16)).sum(axis=-1)
    mask = (diff > threshold).astype(np.uint8)
    if dilate_iterations > 0:
        kernel = RECIPES[DEFAULT_RECIPE].kernel() if kernel is None else kernel
        mask = cv2.dilate(mask, kernel, iterations=int(dilate_iterations))
    return mask


def apply_background(
    frame: np.ndarray,
    background: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    dilate_iterations: int = DEFAULT_DILATE_ITERATIONS,
    kernel: np.ndarray | None = None,
) -> np.ndarray:
    """Zero the background pixels of one (H, W, 3) uint8 frame."""
    mask = foreground_mask(frame, background, threshold, dilate_iterations, kernel)
    return frame * mask[..., None]


def remove_background(
    frames: np.ndarray,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    dilate_iterations: int = DEFAULT_DILATE_ITERATIONS,
    recipe: str | Recipe = DEFAULT_RECIPE,
) -> np.ndarray:
    """Background-removed copy of a whole video (T, H, W, 3) uint8 at its given size.

    Uses the recipe's MOG2 settings and dilation element; resizing (the recipe's order) is the caller's.
    """
    spec = get_recipe(recipe)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"remove_background expects a (T, H, W, 3) uint8 video, got shape {frames.shape} dtype {frames.dtype}"
        )
    background = estimate_background(frames, spec.mog2_history(len(frames)), spec.detect_shadows)
    kernel = spec.kernel()
    out = np.empty_like(frames)
    for i, frame in enumerate(frames):
        out[i] = apply_background(frame, background, threshold, dilate_iterations, kernel)
    return out
