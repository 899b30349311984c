"""Background removal for video anomaly detection (the preprocessing MOCCA borrows from LSA).

The paper (section IV-C) removes the background of every ShanghaiTech frame with a MOG-based
background estimate so the model only sees foreground objects. The recipe here follows LSA
(Abati et al., CVPR 2019), the origin of MOCCA's video pipeline:

1. one background image per video: OpenCV MOG2 (history = number of frames, no shadow detection)
   fed every frame of the video, then ``getBackgroundImage()``;
2. a pixel is foreground when the sum over the three colour channels of |frame - background|
   exceeds ``threshold`` (128 in LSA);
3. the foreground mask is dilated ``dilate_iterations`` times (5 in LSA) so object borders survive;
4. frames are multiplied by the mask (background pixels become 0).

Known property of the recipe: MOG2 initialises its model from the first frame, so an object that is
already in frame 0 (or that stays put for more than ~10 % of the video, MOG2's backgroundRatio 0.9)
partly enters the background image and leaves a "ghost" there; the method accepts this.

Difference from LSA: LSA dilates with scipy's default cross-shaped structuring element; we use
``cv2.dilate`` with a 3x3 square, so masks grow slightly faster diagonally (fast and dependency-free).
"""
from __future__ import annotations

from typing import Iterable

import cv2
import numpy as np

from utils.errors import UserError

DEFAULT_THRESHOLD = 128
DEFAULT_DILATE_ITERATIONS = 5


def estimate_background(frames: Iterable[np.ndarray], history: int) -> np.ndarray:
    """One background image (H, W, 3) uint8 from all frames of a video with MOG2.

    Takes an iterable so a caller can stream frames instead of holding a whole video.
    """
    subtractor = cv2.createBackgroundSubtractorMOG2(history=max(int(history), 1), detectShadows=False)
    seen = 0
    for frame in frames:
        subtractor.apply(np.ascontiguousarray(frame))
        seen += 1
    if seen == 0:
        raise UserError("cannot estimate a background from a video with no frames; check the input video")
    background = subtractor.getBackgroundImage()
    if background is None:
        raise UserError("OpenCV MOG2 returned no background image; check that the frames are 8-bit colour images")
    return background


def foreground_mask(
    frame: np.ndarray,
    background: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    dilate_iterations: int = DEFAULT_DILATE_ITERATIONS,
) -> np.ndarray:
    """Binary (H, W) uint8 mask of the pixels that differ enough from the background, dilated."""
    diff = np.abs(frame.astype(np.int16) - background.astype(np.int16)).sum(axis=-1)
    mask = (diff > threshold).astype(np.uint8)
    if dilate_iterations > 0:
        mask = cv2.dilate(mask, np.ones((3, 3), np.uint8), iterations=int(dilate_iterations))
    return mask


def apply_background(
    frame: np.ndarray,
    background: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    dilate_iterations: int = DEFAULT_DILATE_ITERATIONS,
) -> np.ndarray:
    """Zero the background pixels of one (H, W, 3) uint8 frame."""
    mask = foreground_mask(frame, background, threshold, dilate_iterations)
    return frame * mask[..., None]


def remove_background(
    frames: np.ndarray,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    dilate_iterations: int = DEFAULT_DILATE_ITERATIONS,
) -> np.ndarray:
    """Background-removed copy of a whole video (T, H, W, 3) uint8 (per-video MOG2 estimate)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise UserError(
            f"remove_background expects a (T, H, W, 3) uint8 video, got shape {frames.shape} dtype {frames.dtype}"
        )
    background = estimate_background(frames, history=len(frames))
    out = np.empty_like(frames)
    for i, frame in enumerate(frames):
        out[i] = apply_background(frame, background, threshold, dilate_iterations)
    return out
