"""The boundary between the resolved config and the library: typed settings, built once.

The entry scripts resolve flags and YAML into one dict (``utils.cli.resolve_config``) and hand it
here; this is the only module below them that reads the config's key names. Everything after it
(the pipelines, the method, the models) takes the dataclasses below. The dict itself travels on
only as the record each run folder saves (``config.yaml``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from models.layers import check_layer_indices
from trainers.engine import StageSettings
from trainers.mocca import MethodSettings

IMAGE_DEBUG_BATCHES = 5  # -db: every image loop stops after this many batches
VIDEO_DEBUG_BATCHES = 2
REMOVE_BACKGROUND = {"auto": None, "yes": True, "no": False}  # --remove-background; None: the layout decides


@dataclass
class PipelineSettings:
    """What a pipeline does besides the method: stages, device, resume, which checkpoint is tested."""

    pretrain: bool  # -ptr (images only)
    train: bool  # -tr; for video -ee, its one end-to-end stage
    test: bool  # -tt
    device: str
    deterministic: bool
    channels_last: bool
    resume: bool
    checkpoint: Path | None  # -ck: the AE for -tr without -ptr, the trained model for -tt alone
    test_checkpoint: str  # "last" | "best-loss"
    seed: int


def choose_layers(indices: Sequence[int], valid: Sequence[int]) -> list[int]:
    """-ile as given (any order, no repeats); an empty list means the last layer only (the authors' default)."""
    layers = [int(k) for k in indices] or [int(valid[-1])]
    try:
        return list(check_layer_indices(layers, {int(k): str(k) for k in valid}))
    except ValueError as err:
        raise ValueError(f"-ile {' '.join(map(str, layers))}: {err}") from err


def pipeline_settings(config: Mapping[str, Any]) -> PipelineSettings:
    ckpt = config.get("model_ckp")
    return PipelineSettings(
        pretrain=bool(config.get("pretrain")), train=bool(config.get("train") or config.get("end_to_end")),
        test=bool(config["test"]), device=str(config["device"]), deterministic=bool(config.get("deterministic")),
        channels_last=bool(config.get("channels_last")), resume=bool(config["resume"]),
        checkpoint=Path(ckpt) if ckpt else None, test_checkpoint=str(config["test_checkpoint"]),
        seed=int(config["seed"]))


def stage_settings(config: Mapping[str, Any], name: str, prefix: str = "", epochs: int | None = None) -> StageSettings:
    """One stage's optimisation settings; ``prefix`` "ae_" reads the AE pretraining flags (-ae, -alr, ...)."""
    return StageSettings(
        name=name,
        epochs=int(config[f"{prefix}epochs"]) if epochs is None else epochs,
        learning_rate=float(config[f"{prefix}learning_rate"]),
        weight_decay=float(config[f"{prefix}weight_decay"]),
        milestones=[int(m) for m in config[f"{prefix}lr_milestones"]],
        optimizer=str(config.get("optimizer", "adam")),
        progress=not config.get("no_progress", False),
        amp=bool(config.get("amp", False)),
        compile=bool(config.get("compile", False)),
    )


def method_settings(config: Mapping[str, Any], layers: list[int]) -> MethodSettings:
    """The two-stage method's settings (CIFAR-10, MVTec AD)."""
    return MethodSettings(
        layers=layers, boundary=config["boundary"], nu=float(config["nu"]), layer_reduction=config["layer_reduction"],
        batch_size=int(config["batch_size"]), warm_up_epochs=int(config["warm_up_n_epochs"]),
        pretrain=stage_settings(config, "pretrain", "ae_"), train=stage_settings(config, "train"),
        recalibrate_bn=bool(config.get("recalibrate_bn")), seed=int(config["seed"]),
        debug_batches=IMAGE_DEBUG_BATCHES if config["debug"] else None)


@dataclass
class VideoSettings:
    """Everything the video pipeline reads besides ``PipelineSettings``."""

    dataset: str
    data_path: str
    labels: str | None
    frame_size: tuple[int, int]
    remove_background: bool | None  # None: the layout decides (yes for Ped2/Avenue frames)
    background_recipe: str
    clip_length: int
    code_length: int
    hidden_size: int
    num_layers: int
    bidirectional: bool
    use_selectors: bool
    authors_reshape: bool
    dropout: float
    layers: list[int]
    boundary: str
    nu: float
    layer_reduction: str
    warm_up_epochs: int
    recon_weight: float
    stage: StageSettings
    batch_size: int
    clips_per_epoch: int
    centroid_clips: int
    test_batch_size: int
    seed: int
    channels_last: bool
    debug: bool
    resume: bool
    test_checkpoint: str


def video_settings(config: Mapping[str, Any], layers: list[int]) -> VideoSettings:
    debug = bool(config["debug"])
    return VideoSettings(
        dataset=config["dataset"], data_path=config["data_path"], labels=config["labels"],
        frame_size=tuple(int(v) for v in config["frame_size"]),
        remove_background=REMOVE_BACKGROUND[config["remove_background"]],
        background_recipe=config["background_recipe"], clip_length=int(config["clip_length"]),
        code_length=int(config["code_length"]), hidden_size=int(config["hidden_size"]),
        num_layers=int(config["num_layers"]), bidirectional=bool(config["bidirectional"]),
        use_selectors=bool(config["use_selectors"]), authors_reshape=bool(config["authors_reshape"]),
        dropout=float(config["dropout"]), layers=list(layers), boundary=config["boundary"], nu=float(config["nu"]),
        layer_reduction=config["layer_reduction"], warm_up_epochs=int(config["warm_up_n_epochs"]),
        recon_weight=float(config["recon_weight"]), stage=stage_settings(config, "train", epochs=1 if debug else None),
        batch_size=int(config["batch_size"]), clips_per_epoch=int(config["clips_per_epoch"]),
        centroid_clips=int(config["centroid_clips"]), test_batch_size=int(config["test_batch_size"]),
        seed=int(config["seed"]), channels_last=bool(config["channels_last"]), debug=debug,
        resume=bool(config["resume"]), test_checkpoint=config["test_checkpoint"])
