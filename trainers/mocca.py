"""MOCCA for images as one object: pretrain, fit the one-class stage, score, save, load.

The command-line pipeline (``trainers.two_stage``) and Python users share this class; only the
run folder (config, logs, metrics, scores) is the pipeline's own. From Python::

    model = MOCCA.for_cifar10(layers=[0, 1, 2, 3], boundary="soft", ae_epochs=20, epochs=10)
    model.fit(train_images)                 # (N, 3, 32, 32) float tensors, normal data only
    scores = model.score(test_images)       # scores.combined (N,), scores.per_layer {layer: (N,)}
    model.save("mocca.pt"); model = MOCCA.load("mocca.pt")

Images are float tensors in the model's input range: for CIFAR-10 the GCN-L1 + min-max values
``datasets.cifar10`` produces, for MVTec-style models [-1, 1] (``datasets.mvtec.to_model_range``).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from trainers.engine import StageSettings
from trainers.objective import MultiLayerObjective, calibrate_new_batchnorm, compute_centroids, recalibrate_batchnorm
from trainers.one_class import ONE_CLASS_KIND, OneClassModel, train_one_class
from trainers.pretrain import AE_KIND, pretrain_autoencoder
from trainers.scoring import score_tensors, test_distances, to_numpy
from utils.batching import TensorSource
from utils.checkpoint import load_checkpoint, replace_state, save_checkpoint, update_checkpoint
from utils.runtime import batch_placer, memory_format, pick_device, set_seed


@dataclass
class MethodSettings:
    """Everything the two-stage method needs besides the architecture and the data (typed, built once)."""

    layers: list[int]
    boundary: str = "soft"
    nu: float = 0.1
    layer_reduction: str = "mean"
    batch_size: int = 128
    warm_up_epochs: int = 10
    pretrain: StageSettings = field(default_factory=lambda: StageSettings("pretrain", 20, 1e-3, 0.5e-6))
    train: StageSettings = field(default_factory=lambda: StageSettings("train", 10, 1e-4, 0.5e-6))
    recalibrate_bn: bool = False
    seed: int = 0
    debug_batches: int | None = None  # -db: every loop stops after this many batches


@dataclass
class Scores:
    """Eq. 6 scores of a set of images: the combined score and one column per layer (higher = more anomalous)."""

    combined: np.ndarray
    per_layer: dict[int, np.ndarray]


class MOCCA:
    """An image autoencoder, its multi-layer feature net and the one-class objective.

    ``make_autoencoder()`` builds the AE (it must expose ``.encoder``); ``make_feature_net(encoder,
    layers)`` wraps an encoder into a net returning ``{layer: (B, d)}``; ``arch`` holds what fixes
    the AE's weight shapes and ``net_arch`` the feature net's own (both are checked when loading).
    """

    def __init__(self, make_autoencoder: Callable[[], nn.Module],
                 make_feature_net: Callable[[nn.Module, list[int]], nn.Module], arch: dict[str, Any],
                 settings: MethodSettings, *, net_arch: dict[str, Any] | None = None, device: str = "auto",
                 channels_last: bool = False):
        self.make_autoencoder, self.make_feature_net = make_autoencoder, make_feature_net
        self.arch, self.net_arch, self.settings = dict(arch), dict(net_arch or {}), settings
        self.device = pick_device(device) if isinstance(device, str) else torch.device(device)
        self.channels_last = channels_last
        self.prepare = batch_placer(self.device, channels_last)  # the one rule for where and how batches live
        self.model: OneClassModel | None = None
        self.threshold: float | None = None  # decision threshold on the combined score (``decision_threshold``)

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def for_cifar10(cls, layers: Sequence[int] = (0, 1, 2, 3), code_length: int = 128, *, ae_epochs: int = 150,
                    epochs: int = 150, **kwargs: Any) -> "MOCCA":
        """The paper's CIFAR-10 model (LeNet, average-pooled layers); other keywords: ``MethodSettings``."""
        from models.lenet import LeNetAutoencoder, PooledFeatureNet

        settings = _settings(layers, ae_epochs, epochs, ae_lr=1e-3, lr=1e-4, default_batch_size=256, **kwargs)
        return cls(lambda: LeNetAutoencoder(code_length), PooledFeatureNet,
                   {"model": "lenet", "code_length": code_length}, settings, **_runtime(kwargs))

    @classmethod
    def for_mvtec(cls, layers: Sequence[int] = (4, 5, 6), image_size: int = 128, code_length: int = 128, *,
                  use_selectors: bool = True, ae_epochs: int = 20, epochs: int = 20, **kwargs: Any) -> "MOCCA":
        """The paper's MVTec AD model (residual AE, selector heads) for square images of ``image_size``."""
        from models.residual2d import ResidualAutoencoder, ResidualFeatureNet

        settings = _settings(layers, ae_epochs, epochs, ae_lr=1e-3, lr=1e-3, default_batch_size=128, **kwargs)
        return cls(lambda: ResidualAutoencoder(image_size, code_length),
                   lambda encoder, ls: ResidualFeatureNet(encoder, ls, use_selectors),
                   {"model": "residual2d", "input_size": image_size, "code_length": code_length}, settings,
                   net_arch={"use_selectors": use_selectors}, **_runtime(kwargs))

    # ---- the two stages -----------------------------------------------------------------------

    def new_autoencoder(self) -> nn.Module:
        return self.make_autoencoder().to(self.device, memory_format=memory_format(4, self.channels_last))

    def pretrain(self, train: TensorSource, checkpoint: Path, *, resume: bool = False,
                 log: Callable[[str], None] = print) -> list[dict[str, float]]:
        """Stage 1: the whole AE on reconstruction; its weights end up in ``checkpoint``."""
        s = self.settings
        return pretrain_autoencoder(self.new_autoencoder(), _on(train, self.device), s.pretrain, s.batch_size,
                                    checkpoint, self.arch, s.seed, resume=resume, limit=s.debug_batches,
                                    prepare=self.prepare, log=log)

    def train(self, train: TensorSource, ae_checkpoint: Path, checkpoint: Path, *, resume: bool = False,
              best_checkpoint: Path | None = None, log: Callable[[str], None] = print) -> list[dict[str, float]]:
        """Stage 2: centroids of the pretrained encoder's layers, then the one-class training.

        With ``best_checkpoint`` the model kept (and tested) is the lowest-training-loss epoch.
        """
        s, fmt = self.settings, memory_format(4, self.channels_last)
        train = _on(train, self.device)
        ae = self.new_autoencoder()
        ae.load_state_dict(load_checkpoint(ae_checkpoint, AE_KIND, self.arch)["state"])
        net = self.make_feature_net(ae.encoder, list(s.layers)).to(self.device, memory_format=fmt)  # pretrained
        calibration = lambda: self._batches(train, drop_singleton=True)  # noqa: E731
        (recalibrate_batchnorm if s.recalibrate_bn else calibrate_new_batchnorm)(net, calibration())
        centers = compute_centroids(net, self._batches(train))
        objective = MultiLayerObjective(centers, s.boundary, s.nu, s.layer_reduction)
        self.model = OneClassModel(net, objective).to(self.device)
        history = train_one_class(self.model, train, s.train, s.batch_size, s.warm_up_epochs, checkpoint,
                                  self.checkpoint_arch(), s.seed, resume=resume, best_checkpoint=best_checkpoint,
                                  limit=s.debug_batches, prepare=self.prepare, log=log)
        for path in (p for p in (checkpoint, best_checkpoint) if p is not None):
            if path == best_checkpoint:
                self.model.load_state_dict(load_checkpoint(path, ONE_CLASS_KIND)["state"])
            if s.recalibrate_bn:  # the checkpoint then holds the statistics that are tested
                recalibrate_batchnorm(self.model.net, calibration())
                replace_state(path, ONE_CLASS_KIND, self.model.state_dict())
            self.threshold = self.decision_threshold(train)
            update_checkpoint(path, ONE_CLASS_KIND, threshold=self.threshold)
        return history

    def decision_threshold(self, train: TensorSource) -> float:
        """Where "anomalous" starts on the combined score: 0 for the soft boundary (outside the spheres,
        d^2 > R^2 on average over the layers); for the hard boundary, which has no radius, the (1 - nu)
        quantile of the training images' scores, so that a fraction nu of normal data is flagged, as the
        soft radius rule does."""
        if self.settings.boundary == "soft":
            return 0.0
        combined = self.score(TensorSource(train.data, train.transform)).combined
        return float(np.quantile(combined, 1.0 - self.settings.nu))

    def fit(self, images: Tensor, work_dir: str | Path | None = None,
            log: Callable[[str], None] = lambda s: None) -> "MOCCA":
        """Both stages on normal ``images`` (N, C, H, W); checkpoints go to ``work_dir`` (default: a temp dir)."""
        set_seed(self.settings.seed)
        train = TensorSource(images)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(work_dir or tmp)
            self.pretrain(train, folder / "ae.pt", log=log)
            self.train(train, folder / "ae.pt", folder / "model.pt", log=log)
        return self

    # ---- scoring ------------------------------------------------------------------------------

    def distances(self, test: TensorSource) -> dict[int, Tensor]:
        """Squared distances per layer of every test sample, on the model's device."""
        model = self._trained()
        return test_distances(model.net, model.objective, _on(test, self.device).batches(self.settings.batch_size),
                              prepare=self.prepare)

    def score(self, images: Tensor | TensorSource, patches_per_image: int | None = None) -> Scores:
        """Eq. 6 scores (eq. 7 max over patches when ``patches_per_image``); higher = more anomalous."""
        source = images if isinstance(images, TensorSource) else TensorSource(images)
        per_layer, combined = score_tensors(self._trained().objective, self.distances(source), patches_per_image)
        return Scores(to_numpy(combined), {k: to_numpy(v) for k, v in per_layer.items()})

    # ---- persistence --------------------------------------------------------------------------

    def checkpoint_arch(self) -> dict[str, Any]:
        s = self.settings
        return {**self.arch, **self.net_arch, "layers": list(s.layers), "boundary": s.boundary, "nu": s.nu}

    def save(self, path: str | Path) -> None:
        """The trained model as an ordinary one-class checkpoint (``main_*.py -tt -ck`` reads it too)."""
        save_checkpoint(path, ONE_CLASS_KIND, self.checkpoint_arch(), state=self._trained().state_dict(),
                        threshold=self.threshold)

    def load_model(self, path: str | Path) -> "MOCCA":
        """Load trained weights into this object (layers, boundary and nu are read from the checkpoint)."""
        ckpt = load_checkpoint(path, ONE_CLASS_KIND)
        saved = ckpt["arch"]
        diff = {k: (saved.get(k), v) for k, v in {**self.arch, **self.net_arch}.items() if saved.get(k) != v}
        if diff:
            text = ", ".join(f"{k}: checkpoint {a!r} vs this model {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"checkpoint {path} is for another architecture ({text})")
        layers = [int(k) for k in saved["layers"]]
        self.settings.layers, self.settings.boundary, self.settings.nu = layers, saved["boundary"], float(saved["nu"])
        net = self.make_feature_net(self.make_autoencoder().encoder, layers)
        dummy = {k: torch.zeros_like(ckpt["state"][f"objective.center_{k}"]) for k in layers}
        model = OneClassModel(net, MultiLayerObjective(dummy, saved["boundary"], float(saved["nu"])))
        model.load_state_dict(ckpt["state"])
        self.model = model.to(self.device, memory_format=memory_format(4, self.channels_last))
        self.threshold = ckpt.get("threshold")
        if self.threshold is None and self.settings.boundary == "soft":
            self.threshold = 0.0
        return self

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> "MOCCA":
        """A saved CIFAR-10 or MVTec-style model, rebuilt from the architecture its checkpoint records."""
        arch = load_checkpoint(path, ONE_CLASS_KIND)["arch"]
        if arch.get("model") == "lenet":
            model = cls.for_cifar10(arch["layers"], arch["code_length"], device=device)
        elif arch.get("model") == "residual2d":
            model = cls.for_mvtec(arch["layers"], arch["input_size"], arch["code_length"],
                                  use_selectors=bool(arch.get("use_selectors")), device=device)
        else:
            raise ValueError(f"checkpoint {path} holds a {arch.get('model')!r} model; MOCCA.load reads image models")
        return model.load_model(path)

    # ---- helpers ------------------------------------------------------------------------------

    def _trained(self) -> OneClassModel:
        if self.model is None:
            raise ValueError("the model is not trained: call fit() or train(), or load() a saved model")
        return self.model

    def _batches(self, source: TensorSource, drop_singleton: bool = False) -> Iterator[Tensor]:
        s = self.settings
        return (self.prepare(x) for x in source.batches(s.batch_size, limit=s.debug_batches,
                                                        drop_singleton=drop_singleton))


def _on(source: TensorSource, device: torch.device) -> TensorSource:
    """The same source with its data resident on ``device`` (transform and epoch length kept)."""
    if source.data.device == device:
        return source
    return TensorSource(source.data.to(device), source.transform, source.samples_per_epoch)


_RUNTIME_KEYS = ("device", "channels_last")


def _runtime(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in _RUNTIME_KEYS if k in kwargs}


def _settings(layers: Sequence[int], ae_epochs: int, epochs: int, *, ae_lr: float, lr: float,
              default_batch_size: int, **kwargs: Any) -> MethodSettings:
    """``MethodSettings`` from the facade's keywords (stage settings from epochs and learning rates)."""
    kwargs = {k: v for k, v in kwargs.items() if k not in _RUNTIME_KEYS}
    ae_lr, lr = kwargs.pop("ae_learning_rate", ae_lr), kwargs.pop("learning_rate", lr)
    weight_decay = kwargs.pop("weight_decay", 0.5e-6)
    progress = kwargs.pop("progress", False)
    kwargs.setdefault("batch_size", default_batch_size)
    return MethodSettings(
        layers=[int(k) for k in layers],
        pretrain=StageSettings("pretrain", ae_epochs, ae_lr, weight_decay, progress=progress),
        train=StageSettings("train", epochs, lr, weight_decay, progress=progress),
        **kwargs)
