"""Video data: background removal, decoding cache, clips, labels, ShanghaiTech preprocessing."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import scipy.io
import torch
from scipy import ndimage

import main_shanghaitech
from datasets import video as V
from datasets.background import RECIPES, foreground_mask, remove_background
from tests.video_fixtures import (
    make_authors_shanghaitech,
    make_frames_dataset,
    make_official_shanghaitech,
    moving_square_video,
    shared_data_dir,
    square_box,
    write_frames,
)
from tools import preprocess_video
from trainers import video_pipeline
from trainers.scoring import clip_scores_to_frame_scores
from utils.cli import video_config
from utils.errors import USER_ERRORS
from utils.io import cache_dir, cache_key


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOCCA_CACHE", str(tmp_path / "cache"))


def _no_decoding(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("decoded a frame although the clip is cached")

    monkeypatch.setattr(cv2, "imdecode", boom)


# ---------------------------------------------------------------- background removal

def test_remove_background_keeps_moving_square_and_zeroes_static_background():
    # Two background-only frames first: MOG2 initialises from frame 0, so an object already there
    # would leave a ghost in the background estimate (a property of the LSA recipe).
    frames = moving_square_video(n_frames=32, height=48, width=64, lead_in=2)
    out = remove_background(frames)
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert (out[0] == 0).all()
    for t in (2, 16, 31):
        rows, cols = square_box(t, 32, 48, 64, lead_in=2)
        assert (out[t, rows, cols] == 255).all(), f"square lost in frame {t}"
        far = np.ones((48, 64), bool)
        far[max(rows.start - 8, 0) : rows.stop + 8, max(cols.start - 8, 0) : cols.stop + 8] = False
        assert (out[t][far] == 0).all(), f"static background survived in frame {t}"


def test_remove_background_threshold_and_dilation_matter():
    frames = moving_square_video(n_frames=32, height=48, width=64, lead_in=2)
    undilated = remove_background(frames, dilate_iterations=0)
    dilated = remove_background(frames)
    assert (dilated > 0).sum() > (undilated > 0).sum()
    assert (remove_background(frames, threshold=10_000) == 0).all()


def test_remove_background_rejects_non_uint8_video():
    with pytest.raises(USER_ERRORS, match="uint8"):
        remove_background(np.zeros((4, 8, 8, 3), np.float32))


def _masked(frames: np.ndarray, background: np.ndarray, structure: np.ndarray | None) -> np.ndarray:
    """Threshold 128 on the summed |frame - background|, 5 scipy dilations, multiply (independent of the module)."""
    diff = np.abs(frames.astype(np.int32) - background.astype(np.int32)).sum(axis=-1)
    masks = np.stack([ndimage.binary_dilation(d > 128, structure=structure, iterations=5) for d in diff])
    return frames * masks[..., None].astype(np.uint8)


def _area_resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.stack([cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_AREA) for f in frames])


def lsa_by_hand(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Reference recipe: resize, MOG2 with OpenCV defaults, threshold, cross dilation (scipy's default)."""
    small = _area_resize(frames, size)
    mog = cv2.createBackgroundSubtractorMOG2()
    for frame in small:
        mog.apply(frame)
    return _masked(small, mog.getBackgroundImage(), structure=None)


def native_by_hand(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The ``native`` recipe: MOG2 (history = frames, no shadows) at native size, square dilation, resize."""
    mog = cv2.createBackgroundSubtractorMOG2(history=len(frames), detectShadows=False)
    for frame in frames:
        mog.apply(frame)
    return _area_resize(_masked(frames, mog.getBackgroundImage(), structure=np.ones((3, 3), bool)), size)


def test_default_dilation_is_scipy_binary_dilation_with_the_cross():
    rng = np.random.default_rng(0)
    mask = (rng.random((40, 50)) < 0.03).astype(np.uint8)
    cross = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)), iterations=5)
    np.testing.assert_array_equal(cross.astype(bool), ndimage.binary_dilation(mask, iterations=5))
    background = np.zeros((40, 50, 3), np.uint8)
    frame = np.repeat(mask[..., None] * 60, 3, axis=-1).astype(np.uint8)  # summed diff 180 > 128 on the mask
    np.testing.assert_array_equal(foreground_mask(frame, background).astype(bool), cross.astype(bool))


def test_cross_and_square_elements_differ():
    frame, background = np.zeros((9, 9, 3), np.uint8), np.zeros((9, 9, 3), np.uint8)
    frame[4, 4] = 255
    assert foreground_mask(frame, background, dilate_iterations=1).sum() == 5  # default: cross
    assert foreground_mask(frame, background, dilate_iterations=1, kernel=RECIPES["native"].kernel()).sum() == 9


def test_remove_background_default_matches_mog2_defaults_and_recipes_differ():
    frames = moving_square_video(n_frames=32, height=48, width=64, lead_in=2)
    np.testing.assert_array_equal(remove_background(frames), lsa_by_hand(frames, (48, 64)))
    native = remove_background(frames, recipe="native")
    np.testing.assert_array_equal(native, native_by_hand(frames, (48, 64)))
    assert not np.array_equal(native, remove_background(frames))
    with pytest.raises(USER_ERRORS, match="unknown background recipe"):
        remove_background(frames, recipe="gabrijp")


# ---------------------------------------------------------------- decoding and caching

def _square_clip(folder) -> np.ndarray:
    """A moving-square clip written as JPEG frames; returns the frames as decoded (BGR)."""
    write_frames(folder, moving_square_video(n_frames=24, height=96, width=128, square=16, lead_in=2))
    return np.stack([cv2.imread(str(p)) for p in V.list_frame_files(folder)])


def test_default_recipe_resizes_before_the_background_estimate(tmp_path):
    decoded = _square_clip(tmp_path / "clip")
    lsa = V.load_video_frames(tmp_path / "clip", size=(24, 32), remove_bg=True)
    np.testing.assert_array_equal(lsa, lsa_by_hand(decoded, (24, 32))[..., ::-1])
    native = V.load_video_frames(tmp_path / "clip", size=(24, 32), remove_bg=True, background_recipe="native")
    np.testing.assert_array_equal(native, native_by_hand(decoded, (24, 32))[..., ::-1])
    assert not np.array_equal(lsa, native)
    np.testing.assert_array_equal(  # the offline preprocessing runs the same recipes (BGR in and out)
        V.preprocess_frames(decoded, (24, 32), 128, 5), lsa_by_hand(decoded, (24, 32))
    )
    np.testing.assert_array_equal(
        V.preprocess_frames(decoded, (24, 32), 128, 5, "native"), native_by_hand(decoded, (24, 32))
    )


def test_background_recipe_is_part_of_the_cache_key(tmp_path, monkeypatch):
    _square_clip(tmp_path / "clip")
    V.load_video_frames(tmp_path / "clip", size=(24, 32), remove_bg=True)
    V.load_video_frames(tmp_path / "clip", size=(24, 32), remove_bg=False)
    _no_decoding(monkeypatch)
    V.load_video_frames(tmp_path / "clip", size=(24, 32), remove_bg=True, background_recipe="lsa")
    V.load_video_frames(tmp_path / "clip", size=(24, 32), remove_bg=False, background_recipe="native")  # no-op
    with pytest.raises(AssertionError, match="decoded"):
        V.load_video_frames(tmp_path / "clip", size=(24, 32), remove_bg=True, background_recipe="native")
    with pytest.raises(USER_ERRORS, match="unknown background recipe"):
        V.load_split(tmp_path, "ped2", "training", size=(24, 32), background_recipe="mog")


def test_entries_cached_before_recipes_are_not_reused(tmp_path):
    clip = (tmp_path / "clip").resolve()
    _square_clip(clip)
    stamps = [(f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in V.list_frame_files(clip)]
    old_key = cache_key("video-frames-v1", clip, (24, 32), True, 128, 5, stamps)  # key of the native-only code
    cache_dir().mkdir(parents=True, exist_ok=True)
    np.save(cache_dir() / f"video-frames-{old_key}.npy", np.full((24, 24, 32, 3), 7, np.uint8))
    assert (V.load_video_frames(clip, size=(24, 32), remove_bg=True) != 7).any()


def test_background_recipe_flag_reaches_the_loaders(tmp_path, monkeypatch):
    assert video_config([])["background_recipe"] == "lsa"
    assert video_config(["--background-recipe", "native"])["background_recipe"] == "native"
    assert preprocess_video._parser().parse_args(["--src", "a", "--dst", "b"]).background_recipe == "lsa"
    seen = {}

    class Stop(Exception):
        pass

    def fake_load_split(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(video_pipeline, "load_split", fake_load_split)
    with pytest.raises(Stop):
        main_shanghaitech.main(["-dp", str(tmp_path), "-ee", "--background-recipe", "native", "--run-dir",
                                str(tmp_path / "run"), "--device", "cpu", "--no-progress"])
    assert seen["background_recipe"] == "native"


def test_load_video_frames_is_rgb_resized_and_cached(tmp_path, monkeypatch):
    frames = np.zeros((5, 24, 32, 3), np.uint8)
    frames[..., 2] = 200  # BGR on disk: red
    write_frames(tmp_path / "clip", frames)
    first = V.load_video_frames(tmp_path / "clip", size=(12, 16))
    assert first.shape == (5, 12, 16, 3) and first.dtype == np.uint8
    assert first[..., 0].mean() > 190 and first[..., 2].mean() < 10  # RGB order
    _no_decoding(monkeypatch)
    second = V.load_video_frames(tmp_path / "clip", size=(12, 16))
    np.testing.assert_array_equal(first, second)
    with pytest.raises(AssertionError, match="decoded"):  # another size is another cache entry
        V.load_video_frames(tmp_path / "clip", size=(10, 16))


def test_cache_is_invalidated_when_a_frame_changes(tmp_path):
    write_frames(tmp_path / "clip", np.zeros((4, 8, 8, 3), np.uint8))
    assert V.load_video_frames(tmp_path / "clip").max() == 0
    write_frames(tmp_path / "clip", np.full((4, 8, 8, 3), 255, np.uint8))
    assert V.load_video_frames(tmp_path / "clip").min() > 240


def test_frames_sorted_naturally_and_corrupt_frame_is_user_error(tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    for i in (1, 2, 10):
        cv2.imwrite(str(folder / f"{i}.jpg"), np.full((8, 8, 3), i * 20, np.uint8))
    assert [p.name for p in V.list_frame_files(folder)] == ["1.jpg", "2.jpg", "10.jpg"]
    (folder / "11.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(USER_ERRORS, match="11.jpg"):
        V.load_video_frames(folder)


def test_ped2_layout_loads_with_background_removed(tmp_path):
    make_frames_dataset(tmp_path, train_lengths=(20, 18), size=(48, 64))
    names, videos = V.load_split(tmp_path, "ped2", "training", size=(24, 32))
    assert names == ["01", "02"]
    assert [v.shape for v in videos] == [(20, 24, 32, 3), (18, 24, 32, 3)]
    assert (videos[0] == 0).mean() > 0.5  # static background removed by default for ped2
    _, raw = V.load_split(tmp_path, "ped2", "training", size=(24, 32), remove_bg=False)
    assert (raw[0] == 0).mean() < 0.05


def test_shanghaitech_frames_only_resized_when_size_differs(tmp_path, monkeypatch):
    make_authors_shanghaitech(tmp_path, size=(32, 64))
    _, same = V.load_split(tmp_path, "shanghaitech", "training", size=(32, 64))
    clip = tmp_path / "training" / "nobackground_frames_resized" / "01_001"
    direct = np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in V.list_frame_files(clip)])
    np.testing.assert_array_equal(same[0], direct)  # no background removal, no resampling
    _, smaller = V.load_split(tmp_path, "shanghaitech", "training", size=(16, 32))
    assert smaller[0].shape == (20, 16, 32, 3)


def test_missing_layout_is_user_error(tmp_path):
    with pytest.raises(USER_ERRORS, match="preprocess"):
        V.video_dirs(tmp_path, "shanghaitech", "training")
    with pytest.raises(USER_ERRORS, match="unknown video dataset"):
        V.get_format("ucsd")


# ---------------------------------------------------------------- clips and bookkeeping

def _indexed_video(n_frames: int, h: int = 4, w: int = 6) -> np.ndarray:
    """Frame t filled with the value t, so a window's content tells where it starts."""
    return np.broadcast_to(np.arange(n_frames, dtype=np.uint8)[:, None, None, None], (n_frames, h, w, 3)).copy()


def test_clip_index_covers_every_stride1_window():
    clips = V.VideoClips([_indexed_video(20), _indexed_video(18)], clip_length=16, names=["a", "b"])
    assert len(clips) == 5 + 3
    assert clips.index.tolist() == [[0, s] for s in range(5)] + [[1, s] for s in range(3)]
    np.testing.assert_array_equal(clips.window(6)[:, 0, 0, 0], np.arange(1, 17))


def test_sample_batch_shape_range_and_seed():
    clips = V.VideoClips([_indexed_video(20), _indexed_video(18)], clip_length=16)
    batch = clips.sample_batch(4, torch.Generator().manual_seed(0))
    assert batch.shape == (4, 3, 16, 4, 6) and batch.dtype == torch.float32
    assert 0.0 <= batch.min() and batch.max() <= 1.0
    again = clips.sample_batch(4, torch.Generator().manual_seed(0))
    assert torch.equal(batch, again)
    starts = (batch[:, 0, 0, 0, 0] * 255).round()  # value of the first frame = window start
    assert ((batch[:, 0, :, 0, 0] * 255).round() - starts[:, None] == torch.arange(16)).all()


def test_test_windows_in_order_and_every_frame_scored():
    n_frames, length = 23, 16
    clips = V.VideoClips([_indexed_video(n_frames)], clip_length=length)
    batches = list(clips.test_windows(0, batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 2]
    windows = torch.cat(batches)
    assert len(windows) == n_frames - length + 1
    starts = (windows[:, 0, 0, 0, 0] * 255).round().numpy()
    np.testing.assert_array_equal(starts, np.arange(n_frames - length + 1))
    frame_scores = clip_scores_to_frame_scores(starts, n_frames, length)
    assert frame_scores.shape == (n_frames,) and np.isfinite(frame_scores).all()


def test_short_video_is_user_error_naming_it():
    with pytest.raises(USER_ERRORS, match="video 07 has 10 frames"):
        V.VideoClips([_indexed_video(20), _indexed_video(10)], clip_length=16, names=["01", "07"])


def test_frame_scores_match_label_counts_on_generated_ped2(tmp_path):
    info = make_frames_dataset(tmp_path, test_lengths=(20, 17, 16))
    names, videos, labels = V.load_test_set(tmp_path, "ped2", size=(12, 16))
    clips = V.VideoClips(videos, clip_length=16, names=names)
    for i, y in enumerate(labels):
        scores = np.concatenate([b.mean(dim=(1, 2, 3, 4)).numpy() for b in clips.test_windows(i, batch_size=4)])
        assert len(clip_scores_to_frame_scores(scores, clips.n_frames(i), 16)) == len(y) == info["test_lengths"][i]


# ---------------------------------------------------------------- labels

def test_labels_from_concatenated_npy(tmp_path):
    info = make_frames_dataset(tmp_path, test_lengths=(20, 17))
    names = [n for n, _ in V.video_dirs(tmp_path, "ped2", "testing")]
    labels = V.load_test_labels(tmp_path, "ped2", names, info["test_lengths"])
    for got, want in zip(labels, info["labels"]):
        np.testing.assert_array_equal(got, want)


def test_label_length_mismatch_is_user_error(tmp_path):
    make_frames_dataset(tmp_path, test_lengths=(20, 17), write_labels=False)
    np.save(tmp_path / "frame_labels_ped2.npy", np.zeros(36, np.uint8))
    with pytest.raises(USER_ERRORS, match="36 frames"):
        V.load_test_set(tmp_path, "ped2", size=(12, 16))
    with pytest.raises(USER_ERRORS, match="clip 02 has 17 frames but 16 labels"):
        V.labels_for_clips(["01", "02"], [20, 17], per_clip={"01": np.zeros(20), "02": np.zeros(16)})
    with pytest.raises(USER_ERRORS, match="does not fit"):
        V.labels_for_clips(["01"], [20], intervals=[np.array([[5], [21]])])


def test_missing_or_corrupt_labels_is_user_error(tmp_path):
    make_frames_dataset(tmp_path, write_labels=False)
    with pytest.raises(USER_ERRORS, match="--labels"):
        V.load_test_set(tmp_path, "ped2", size=(12, 16))
    (tmp_path / "frame_labels_ped2.npy").write_bytes(b"garbage")
    with pytest.raises(USER_ERRORS, match="cannot read labels"):
        V.load_test_set(tmp_path, "ped2", size=(12, 16))
    with pytest.raises(USER_ERRORS, match="does not exist"):
        V.load_test_set(tmp_path, "ped2", size=(12, 16), labels_path=tmp_path / "nope.npy")


def test_shanghaitech_accepts_a_concatenated_label_file(tmp_path):
    info = make_authors_shanghaitech(tmp_path)
    names = sorted(info["test"])
    np.save(tmp_path / "all.npy", np.concatenate([info["masks"][n] for n in names]))
    labels = V.load_test_labels(tmp_path, "shanghaitech", names, [info["test"][n] for n in names], tmp_path / "all.npy")
    for name, y in zip(names, labels):
        np.testing.assert_array_equal(y, info["masks"][name])


def test_partial_test_set_sliced_with_full_lengths():
    full = np.concatenate([np.full(n, i % 2, np.uint8) for i, n in enumerate((30, 20, 25))])
    labels = V.labels_for_clips(["01", "03"], [30, 25], concatenated=full, full_lengths=(30, 20, 25))
    assert [len(x) for x in labels] == [30, 25] and labels[0].max() == 0 and labels[1].max() == 0
    with pytest.raises(USER_ERRORS, match="official number"):
        V.labels_for_clips(["a", "b"], [30, 25], concatenated=full, full_lengths=(30, 20, 25))


def test_labels_from_generated_mat_with_partial_clips(tmp_path):
    make_frames_dataset(tmp_path, test_lengths=(20, 17), write_labels=False)
    gt = np.empty((1, 3), dtype=object)
    gt[0, 0], gt[0, 1], gt[0, 2] = np.array([[3], [5]], np.uint8), np.array([[1, 10], [2, 17]]), np.array([[1], [4]])
    scipy.io.savemat(tmp_path / "ped2.mat", {"gt": gt})
    labels = V.load_test_labels(tmp_path, "ped2", ["01", "02"], [20, 17])
    assert np.flatnonzero(labels[0]).tolist() == [2, 3, 4]
    assert np.flatnonzero(labels[1]).tolist() == [0, 1] + list(range(9, 17))


def test_shanghaitech_masks_checked_against_frames(tmp_path):
    info = make_authors_shanghaitech(tmp_path)
    names, videos, labels = V.load_test_set(tmp_path, "shanghaitech", size=None)
    assert names == sorted(info["test"])
    for name, video, y in zip(names, videos, labels):
        assert len(video) == len(y) == info["test"][name]
        np.testing.assert_array_equal(y, info["masks"][name])
    np.save(tmp_path / "testing" / "test_frame_mask" / "02_0128.npy", np.zeros(5, np.uint8))
    with pytest.raises(USER_ERRORS, match="02_0128 has 17 frames but 5 labels"):
        V.load_test_set(tmp_path, "shanghaitech", size=None)


REAL = shared_data_dir()


@pytest.mark.skipif(not (REAL / "ped2" / "ped2.mat").is_file(), reason="real Ped2 data not present")
def test_real_ped2_mat_and_npy_agree_on_the_clips_on_disk():
    root = REAL / "ped2"
    dirs = V.video_dirs(root, "ped2", "testing")
    names, counts = [n for n, _ in dirs], [V.count_frames(d) for _, d in dirs]
    assert counts == list(V.PED2_TEST_CLIP_LENGTHS[: len(names)])
    from_mat = V.load_test_labels(root, "ped2", names, counts)  # finds <root>/ped2.mat
    assert [int(y.sum()) for y in from_mat] == [120, 86, 146, 150, 129, 159][: len(names)]
    npy = REAL / "vad-labels" / "frame_labels_ped2.npy"
    if npy.is_file():
        from_npy = V.load_test_labels(root, "ped2", names, counts, labels_path=npy)
        for a, b in zip(from_mat, from_npy):
            np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- ShanghaiTech preprocessing

def test_preprocess_official_layout_end_to_end(tmp_path, capsys):
    src, dst = tmp_path / "official", tmp_path / "prepared"
    info = make_official_shanghaitech(src)
    preprocess_video.main(["--src", str(src), "--dst", str(dst), "--size", "32", "48"])
    preprocess_video.main(["--src", str(src), "--dst", str(tmp_path / "native"), "--size", "32", "48",
            "--background-recipe", "native"])
    clip = next(iter(info["test"]))
    lsa_frames = V.load_video_frames(dst / "testing" / "nobackground_frames_resized" / clip)
    native_frames = V.load_video_frames(tmp_path / "native" / "testing" / "nobackground_frames_resized" / clip)
    assert not np.array_equal(lsa_frames, native_frames)
    for split, clips in (("training", info["train"]), ("testing", info["test"])):
        base = dst / split / "nobackground_frames_resized"
        assert sorted(p.name for p in base.iterdir()) == sorted(clips)  # no temp folders left
        for clip, n in clips.items():
            files = V.list_frame_files(base / clip)
            assert [f.name for f in files] == [f"{i:03d}.jpg" for i in range(n)]
            assert cv2.imread(str(files[0])).shape == (32, 48, 3)
    names, videos, labels = V.load_test_set(dst, "shanghaitech", size=(32, 48))
    for name, video, y in zip(names, videos, labels):
        np.testing.assert_array_equal(y, info["masks"][name])
        assert (video == 0).mean() > 0.5  # background removed
    train_names, train_videos = V.load_split(dst, "shanghaitech", "training", size=(32, 48))
    assert [len(v) for v in train_videos] == [info["train"][n] for n in train_names]
    counts = V.preprocess_shanghaitech(src, dst, (32, 48), log=lambda _: None)
    assert counts == {"written": 0, "skipped": 4}  # resumable: finished clips are kept


def test_unreadable_video_is_user_error(tmp_path):
    src = tmp_path / "official"
    make_official_shanghaitech(src)
    bad = src / "training" / "videos" / "03_001.avi"
    bad.write_bytes(b"this is not a video")
    with pytest.raises(USER_ERRORS, match="03_001.avi"):
        V.read_video(bad)
    with pytest.raises(SystemExit) as exit_info:
        preprocess_video.main(["--src", str(src), "--dst", str(tmp_path / "out"), "--size", "32", "48"])
    assert exit_info.value.code == 2


def test_preprocess_rejects_wrong_mask_length(tmp_path):
    src = tmp_path / "official"
    make_official_shanghaitech(src, train={"01_001": 16}, test={"01_0014": 17})
    np.save(src / "testing" / "test_frame_mask" / "01_0014.npy", np.zeros(3, np.uint8))
    with pytest.raises(USER_ERRORS, match="3 labels"):
        V.preprocess_shanghaitech(src, tmp_path / "out", (32, 48), log=lambda _: None)
