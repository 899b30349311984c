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
from typing import Any, Callable, Iterator, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from trainers.engine import StageSettings, compile_in_place, fit_runs
from trainers.objective import (MultiLayerObjective, calibrate_new_batchnorm, compute_centroids, recalibrate_batchnorm,
                                reconstruction_loss)
from trainers.one_class import ONE_CLASS_KIND, OneClassModel, one_class_step
from trainers.runs import GroupedRuns, SingleRun, StackedSource
from trainers.scoring import score_tensors, test_distances, to_numpy
from utils.batching import TensorSource
from utils.checkpoint import load_checkpoint, replace_state, save_checkpoint, update_checkpoint
from utils.runtime import batch_placer, memory_format, pick_device, set_seed

Paths = Union[str, Path, Sequence[Path]]


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
    ``runs`` is the model variant: one plain run (the default) or ``trainers.runs.GroupedRuns``, K
    runs trained as one grouped model; then every stage takes one checkpoint path per run, and
    distances and scores carry a leading run axis.
    """

    def __init__(self, make_autoencoder: Callable[[], nn.Module],
                 make_feature_net: Callable[[nn.Module, list[int]], nn.Module], arch: dict[str, Any],
                 settings: MethodSettings, *, net_arch: dict[str, Any] | None = None, device: str = "auto",
                 channels_last: bool = False, runs: SingleRun | GroupedRuns | None = None):
        self.make_autoencoder, self.make_feature_net = make_autoencoder, make_feature_net
        self.arch, self.net_arch, self.settings = dict(arch), dict(net_arch or {}), settings
        self.runs = runs or SingleRun(settings.seed, make_autoencoder, make_feature_net)
        self.device = pick_device(device) if isinstance(device, str) else torch.device(device)
        self.channels_last = channels_last
        self.prepare = batch_placer(self.device, channels_last)  # the one rule for where and how batches live
        self.model: OneClassModel | None = None
        self.thresholds: list[float | None] = [None] * self.runs.k  # per run, on the combined score

    @property
    def threshold(self) -> float | None:
        """The decision threshold of a single run (``decision_thresholds``)."""
        return self.thresholds[0] if self.runs.k == 1 else None

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

    def pretrain(self, train: TensorSource, checkpoint: Paths, *, resume: bool = False,
                 log: Callable[[str], None] = print) -> list:
        """Stage 1: the whole AE on reconstruction; its weights end up in ``checkpoint`` (one path per run).

        Returns the per-epoch history (one per run when ``checkpoint`` is a list of paths).
        """
        s, runs, (paths, many) = self.settings, self.runs, self._paths(checkpoint)
        train = train.to(self.device)
        ae = runs.new_autoencoder().to(self.device, memory_format=memory_format(4, self.channels_last))
        if s.pretrain.compile:
            compile_in_place(ae)
        axis = runs.k if isinstance(runs, GroupedRuns) else None

        def step(x: Tensor, epoch: int):
            x = self.prepare(x)
            return reconstruction_loss(x, ae(x), runs=axis), None, None  # () or (K,)

        histories = fit_runs(ae.parameters(), step, lambda e: runs.epoch_batches(train, s.batch_size, e, s.debug_batches),
                             train.n_batches(s.batch_size, s.debug_batches), s.pretrain,
                             runs.autoencoder_checkpoints(ae, paths, self.arch), train_modules=[ae],
                             run_labels=self.run_labels, resume=resume, log=log)
        return histories if many else histories[0]

    def train(self, train: TensorSource, ae_checkpoint: Paths, checkpoint: Paths, *, resume: bool = False,
              best_checkpoint: Paths | None = None, log: Callable[[str], None] = print) -> list:
        """Stage 2: centroids of the pretrained encoder's layers, then the one-class training.

        With ``best_checkpoint`` the model kept (and tested) is the lowest-training-loss epoch.
        The net trains in train mode (the paper), not in the authors' eval mode.
        """
        s, runs, fmt = self.settings, self.runs, memory_format(4, self.channels_last)
        (ae_paths, _), (paths, many) = self._paths(ae_checkpoint), self._paths(checkpoint)
        best = self._paths(best_checkpoint)[0] if best_checkpoint is not None else None
        train = train.to(self.device)
        ae = runs.load_autoencoder(ae_paths, self.arch).to(self.device, memory_format=fmt)
        net = runs.feature_net(ae.encoder, list(s.layers)).to(self.device, memory_format=fmt)  # pretrained
        calibration = lambda: self._batches(train, drop_singleton=True)  # noqa: E731
        (recalibrate_batchnorm if s.recalibrate_bn else calibrate_new_batchnorm)(net, calibration())
        centers = compute_centroids(net, self._batches(train))  # {j: (d,)} or per run {j: (K, d)}
        objective = MultiLayerObjective(centers, s.boundary, s.nu, s.layer_reduction)
        model = self.model = OneClassModel(net, objective).to(self.device)
        if s.train.compile:
            compile_in_place(net)

        def radii_rows() -> list[dict[str, float]]:
            host = objective.radii()  # one host copy per epoch
            return [{f"radius_{j}": (v if runs.k == 1 else v[r]) for j, v in host.items()} for r in range(runs.k)]

        histories = fit_runs(net.parameters(), one_class_step(model, s.warm_up_epochs, self.prepare),
                             lambda e: runs.epoch_batches(train, s.batch_size, e, s.debug_batches),
                             train.n_batches(s.batch_size, s.debug_batches), s.train,
                             runs.model_checkpoints(model, paths, self.checkpoint_arch(), best), train_modules=[model],
                             run_labels=self.run_labels, resume=resume, log=log, extra_payload=radii_rows)
        for group in (paths, best):
            if group is None:
                continue
            if group is best:
                model.load_state_dict(load_checkpoint(best[0], ONE_CLASS_KIND)["state"])
            if s.recalibrate_bn:  # the checkpoints then hold the statistics that are tested
                recalibrate_batchnorm(net, calibration())
                for path, run_model in zip(group, runs.run_models(model)):
                    replace_state(path, ONE_CLASS_KIND, run_model.state_dict())
            self.thresholds = self.decision_thresholds(train)
            for path, threshold in zip(group, self.thresholds):
                update_checkpoint(path, ONE_CLASS_KIND, threshold=threshold)
        return histories if many else histories[0]

    def decision_thresholds(self, train: TensorSource) -> list[float]:
        """Where "anomalous" starts on the combined score, per run: 0 for the soft boundary (outside the
        spheres, d^2 > R^2 on average over the layers); for the hard boundary, which has no radius, the
        (1 - nu) quantile of the training images' scores, so that a fraction nu of normal data is
        flagged, as the soft radius rule does."""
        if self.settings.boundary == "soft":
            return [0.0] * self.runs.k
        combined = self.score(train).combined.reshape(self.runs.k, -1)
        return [float(v) for v in np.quantile(combined, 1.0 - self.settings.nu, axis=-1)]

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
        return test_distances(model.net, model.objective, test.to(self.device).batches(self.settings.batch_size),
                              prepare=self.prepare)

    def score(self, images: Tensor | TensorSource | StackedSource, patches_per_image: int | None = None) -> Scores:
        """Eq. 6 scores (eq. 7 max over patches when ``patches_per_image``); higher = more anomalous."""
        source = images if hasattr(images, "batches") else TensorSource(images)
        per_layer, combined = score_tensors(self._trained().objective, self.distances(source), patches_per_image)
        return Scores(to_numpy(combined), {k: to_numpy(v) for k, v in per_layer.items()})

    # ---- persistence --------------------------------------------------------------------------

    def checkpoint_arch(self) -> dict[str, Any]:
        s = self.settings
        return {**self.arch, **self.net_arch, "layers": list(s.layers), "boundary": s.boundary, "nu": s.nu}

    def save(self, path: str | Path) -> None:
        """The trained model as an ordinary one-class checkpoint (``main_*.py -tt -ck`` reads it too)."""
        self._single("save")
        save_checkpoint(path, ONE_CLASS_KIND, self.checkpoint_arch(), state=self._trained().state_dict(),
                        threshold=self.threshold)

    def load_model(self, path: str | Path) -> "MOCCA":
        """Load trained weights into this object (layers, boundary and nu are read from the checkpoint)."""
        self._single("load_model")
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
        threshold = ckpt.get("threshold")
        self.thresholds = [0.0 if threshold is None and self.settings.boundary == "soft" else threshold]
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

    @property
    def run_labels(self) -> list[str]:
        return [""] if self.runs.k == 1 else list(self.runs.labels)

    def _paths(self, paths: Paths) -> tuple[list[Path], bool]:
        """One path per run; ``many``: the caller gave a list (and gets one history per run back)."""
        many = not isinstance(paths, (str, Path))
        out = [Path(p) for p in paths] if many else [Path(paths)]
        if len(out) != self.runs.k:
            raise ValueError(f"{len(out)} checkpoint paths for {self.runs.k} runs")
        return out, many

    def _single(self, what: str) -> None:
        if self.runs.k != 1:
            raise ValueError(f"{what}() is for one run; each of the {self.runs.k} grouped runs has its own checkpoint")

    def _trained(self) -> OneClassModel:
        if self.model is None:
            raise ValueError("the model is not trained: call fit() or train(), or load() a saved model")
        return self.model

    def _batches(self, source: TensorSource, drop_singleton: bool = False) -> Iterator[Tensor]:
        s = self.settings
        return (self.prepare(x) for x in source.batches(s.batch_size, limit=s.debug_batches,
                                                        drop_singleton=drop_singleton))


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
