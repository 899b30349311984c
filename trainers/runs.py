"""How the runs of one ``MOCCA`` object are laid out: one plain model, or K runs as one grouped model.

Everything else (the objective, the training loop, the stages, scoring) is the same code for both:
losses, distances, centroids and radii simply carry a run axis when K > 1. A layout answers the
few questions where the two differ: how the autoencoder is built and loaded, which batches an
epoch sees, where checkpoints go, and how the trained model splits into per-run models.

The grouped layout (``GroupedRuns``) exists for the CIFAR-10 LeNet, far too small to fill a GPU:
run r owns channel group r of every layer (``models.lenet_grouped``). Why its runs equal K
sequential runs (up to float summation order inside the grouped kernels):
- run r starts from the weights the plain model gets right after ``set_seed(seed_r)``;
- run r sees its own training set in its own batch order (``epoch_generator(seed_r, epoch)``), so
  its mini-batches are the sequential ones; BatchNorm statistics are per channel = per run;
- the loss is the sum of the runs' losses, the runs' parameters are disjoint and Adam / L2 act
  elementwise, so every run gets its sequential gradient and update; all runs share the epoch
  count, hence the MultiStepLR schedule.
All runs must have training sets of the same size (otherwise they would need different numbers of
steps per epoch, and Adam's momentum would still move a run that has no batch).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from trainers.engine import Checkpointer, Resume, RunCheckpoint
from trainers.one_class import ONE_CLASS_KIND, OneClassModel
from trainers.pretrain import AE_KIND, epoch_generator
from utils.batching import TensorSource, batch_slices
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.runtime import set_seed

# Grouped per-run checkpoints (K files of ~10 MB each) are written at the end of every stage and,
# during a stage, after an epoch only when this many seconds have passed since the last write: with
# K = 100 runs an every-epoch write would cost more I/O than a GPU epoch. --resume continues from them.
CHECKPOINT_INTERVAL_S = 600.0


class SingleRun:
    """One run: the plain model, one checkpoint file per stage."""

    def __init__(self, seed: int, make_autoencoder: Callable[[], nn.Module],
                 make_feature_net: Callable[[nn.Module, list[int]], nn.Module]):
        self.seeds = [seed]
        self.make_autoencoder, self.make_feature_net = make_autoencoder, make_feature_net

    @property
    def k(self) -> int:
        return 1

    def new_autoencoder(self) -> nn.Module:
        return self.make_autoencoder()  # the caller seeded the process

    def load_autoencoder(self, paths: Sequence[Path], arch: dict[str, Any]) -> nn.Module:
        ae = self.make_autoencoder()
        ae.load_state_dict(load_checkpoint(paths[0], AE_KIND, arch)["state"])
        return ae

    def feature_net(self, encoder: nn.Module, layers: list[int]) -> nn.Module:
        return self.make_feature_net(encoder, layers)

    def epoch_batches(self, source: TensorSource, batch_size: int, epoch: int, limit: int | None) -> Iterator[Tensor]:
        return source.batches(batch_size, shuffle=True, generator=epoch_generator(self.seeds[0], epoch), limit=limit,
                              drop_singleton=True)

    def autoencoder_checkpoints(self, ae: nn.Module, paths: Sequence[Path], arch: dict[str, Any]) -> Checkpointer:
        return RunCheckpoint(paths[0], AE_KIND, arch, ae)

    def model_checkpoints(self, model: OneClassModel, paths: Sequence[Path], arch: dict[str, Any],
                          best: Sequence[Path] | None) -> Checkpointer:
        return RunCheckpoint(paths[0], ONE_CLASS_KIND, arch, model, best[0] if best else None)

    def run_models(self, model: OneClassModel) -> list[OneClassModel]:
        return [model]


class GroupedRuns:
    """K runs (one seed each) trained as one grouped model, saved as K ordinary per-run checkpoints.

    ``group_autoencoders(models)`` builds the grouped AE from K plain ones (it has ``to_models`` /
    ``load_models`` and an encoder with ``to_encoders`` / ``load_encoders``); ``group_feature_net``
    wraps the grouped encoder into a net returning ``{layer: (K, B, d)}``.
    """

    def __init__(self, seeds: Sequence[int], make_autoencoder: Callable[[], nn.Module],
                 make_feature_net: Callable[[nn.Module, list[int]], nn.Module],
                 group_autoencoders: Callable[[list[nn.Module]], nn.Module],
                 group_feature_net: Callable[[nn.Module, list[int]], nn.Module], deterministic: bool = False,
                 labels: Sequence[str] | None = None):
        if any(s < 0 for s in seeds):
            raise ValueError(f"seeds {list(seeds)}: grouped runs need seeds >= 0 (an unseeded run's data order "
                             "cannot be reproduced per run)")
        self.seeds = [int(s) for s in seeds]
        self.make_autoencoder, self.make_feature_net = make_autoencoder, make_feature_net
        self.group_autoencoders, self.group_feature_net = group_autoencoders, group_feature_net
        self.deterministic = deterministic
        self.labels = list(labels) if labels is not None else [f"s{s}" for s in self.seeds]  # for log lines

    @property
    def k(self) -> int:
        return len(self.seeds)

    def new_autoencoder(self) -> nn.Module:
        singles = []
        for s in self.seeds:  # run r starts from the weights its sequential run builds after set_seed(seed_r)
            set_seed(s, deterministic=self.deterministic)
            singles.append(self.make_autoencoder())
        return self.group_autoencoders(singles)

    def load_autoencoder(self, paths: Sequence[Path], arch: dict[str, Any]) -> nn.Module:
        ckpts = _load_all(paths, AE_KIND, arch, resume=False)
        singles = [self.make_autoencoder() for _ in paths]
        for m, c in zip(singles, ckpts):
            m.load_state_dict(c["state"])
        return self.group_autoencoders(singles)

    def feature_net(self, encoder: nn.Module, layers: list[int]) -> nn.Module:
        return self.group_feature_net(encoder, layers)

    def epoch_batches(self, source: "StackedSource", batch_size: int, epoch: int,
                      limit: int | None) -> Iterator[Tensor]:
        orders = torch.stack([torch.randperm(len(source), generator=epoch_generator(s, epoch)) for s in self.seeds])
        return source.batches(batch_size, orders=orders, limit=limit, drop_singleton=True)

    def autoencoder_checkpoints(self, ae: nn.Module, paths: Sequence[Path], arch: dict[str, Any]) -> Checkpointer:
        def load_states(states: list[dict]) -> None:
            singles = [self.make_autoencoder() for _ in states]
            for m, state in zip(singles, states):
                m.load_state_dict(state)
            ae.load_models(singles)

        return PerRunCheckpoints(paths, AE_KIND, arch, lambda: [_cpu_state(m) for m in ae.to_models()], load_states,
                                 _shapes(self.make_autoencoder), [p.shape for p in ae.parameters()])

    def model_checkpoints(self, model: OneClassModel, paths: Sequence[Path], arch: dict[str, Any],
                          best: Sequence[Path] | None) -> Checkpointer:
        if best:
            raise ValueError("--test-checkpoint best-loss is not supported for grouped runs (they share one loop); "
                             "drop it or run one class and seed at a time")
        encoder = model.net.encoder
        device = next(model.parameters()).device

        def load_states(states: list[dict]) -> None:
            runs = self.run_models(model)
            for m, state in zip(runs, states):
                m.load_state_dict(state)
            encoder.load_encoders([m.net.encoder.to(device) for m in runs])
            for j in model.objective.layer_indices:
                model.objective.center(j).copy_(torch.stack([m.objective.center(j) for m in runs]))
                model.objective.radius(j).copy_(torch.stack([m.objective.radius(j) for m in runs]))

        return PerRunCheckpoints(paths, ONE_CLASS_KIND, arch, lambda: [_cpu_state(m) for m in self.run_models(model)],
                                 load_states, _shapes(lambda: self.make_autoencoder().encoder),
                                 [p.shape for p in encoder.parameters()])

    def run_models(self, model: OneClassModel) -> list[OneClassModel]:
        """Run r's plain model (its encoder slice, centroids and radii): what its checkpoint holds."""
        layers = list(model.objective.layer_indices)
        return [OneClassModel(self.make_feature_net(e, layers), model.objective.run(r))
                for r, e in enumerate(model.net.encoder.to_encoders())]


# ------------------------------------------------------------------------------------------------
# data of grouped runs
# ------------------------------------------------------------------------------------------------

class StackedSource:
    """Resident per-class images ``(U, N, C, H, W)``; run r reads class ``run_index[r]``.

    Every batch is one gather returning ``(B, K*C, H, W)``: run r's images in channel group r
    (``stack``). Runs of the same class share one copy of the data.
    """

    def __init__(self, data: Tensor, run_index: Tensor, stack: Callable[[Tensor], Tensor]):
        self.data, self.stack = data, stack
        self.run_index = run_index.to(data.device)
        self.k = int(run_index.numel())

    @classmethod
    def of(cls, per_run: Sequence[Tensor], stack: Callable[[Tensor], Tensor]) -> "StackedSource":
        """From one tensor per run; runs given the same tensor object share it."""
        unique: list[Tensor] = []
        index = []
        for t in per_run:
            found = next((i for i, u in enumerate(unique) if u is t), None)
            if found is None:
                unique.append(t)
                found = len(unique) - 1
            index.append(found)
        sizes = sorted({int(t.shape[0]) for t in unique})
        if len(sizes) > 1:
            raise ValueError(f"grouped runs need data sets of equal size (sizes {sizes}); run classes with "
                             "different sizes in separate invocations")
        return cls(torch.stack(unique), torch.tensor(index), stack)

    def to(self, device: torch.device) -> "StackedSource":
        return self if self.data.device == device else StackedSource(self.data.to(device), self.run_index, self.stack)

    def subset(self, keeps: Sequence[Tensor]) -> "StackedSource":
        """Run r keeps samples ``keeps[r]`` (equal lengths), e.g. its own -db test subset."""
        picked = torch.stack([self.data[int(self.run_index[r]), keep.to(self.data.device)]
                              for r, keep in enumerate(keeps)])
        return StackedSource(picked, torch.arange(self.k), self.stack)

    def __len__(self) -> int:
        return int(self.data.shape[1])

    def n_batches(self, batch_size: int, limit: int | None = None) -> int:
        n = -(-len(self) // batch_size)
        return min(n, limit) if limit else n

    def batches(self, batch_size: int, *, orders: Tensor | None = None, limit: int | None = None,
                drop_singleton: bool = False) -> Iterator[Tensor]:
        """``orders`` (K, n): run r's sample indices in order (its epoch permutation); None = all, in order."""
        n = len(self) if orders is None else int(orders.shape[1])
        if orders is not None:
            orders = orders.to(self.data.device)
        for start, stop in batch_slices(n, batch_size, limit, drop_singleton):
            if orders is None:
                x = self.data[self.run_index, start:stop]  # (K, b, C, H, W)
            else:
                x = self.data[self.run_index[:, None], orders[:, start:stop]]
            yield self.stack(x)


# ------------------------------------------------------------------------------------------------
# checkpoints of grouped runs: one grouped state <-> K per-run files in the plain model's format
# ------------------------------------------------------------------------------------------------

def split_optimizer_state(state: dict[str, Any], k: int, single_shapes: Sequence[torch.Size]) -> list[dict[str, Any]]:
    """Cut a grouped optimizer state dict into K state dicts of the per-run model (same param order)."""
    out = []
    for r in range(k):
        per_param = {}
        for i, st in state["state"].items():
            per_param[i] = {name: (v.reshape(k, *single_shapes[i])[r].clone() if torch.is_tensor(v) and v.dim() > 0
                                   else (v.clone() if torch.is_tensor(v) else copy.deepcopy(v)))
                            for name, v in st.items()}
        out.append({"state": per_param, "param_groups": copy.deepcopy(state["param_groups"])})
    return out


def merge_optimizer_states(states: Sequence[dict[str, Any]], grouped_shapes: Sequence[torch.Size]) -> dict[str, Any]:
    """Inverse of ``split_optimizer_state``: K per-run optimizer state dicts -> one grouped state dict."""
    first = states[0]
    merged = {}
    for i, st in first["state"].items():
        if any(set(s["state"].get(i, {})) != set(st) for s in states):
            raise ValueError("the runs' optimizer checkpoints do not match (different stages or settings); "
                             "rerun without --resume")
        merged[i] = {}
        for name, v in st.items():
            if torch.is_tensor(v) and v.dim() > 0:
                merged[i][name] = torch.stack([s["state"][i][name] for s in states]).reshape(grouped_shapes[i])
            else:
                if any(float(s["state"][i][name]) != float(v) for s in states):
                    raise ValueError("the runs' checkpoints are at different optimizer steps; rerun without --resume")
                merged[i][name] = v.clone() if torch.is_tensor(v) else v
    return {"state": merged, "param_groups": copy.deepcopy(first["param_groups"])}


class PerRunCheckpoints:
    """``engine.Checkpointer`` for K grouped runs: one ordinary checkpoint file per run.

    ``to_states()`` cuts the grouped module into K per-run state dicts, ``from_states`` loads K of
    them back; the optimizer state is cut and merged the same way. Written after the last epoch and
    whenever ``CHECKPOINT_INTERVAL_S`` has passed since the last write.
    """

    def __init__(self, paths: Sequence[Path], kind: str, arch: dict[str, Any],
                 to_states: Callable[[], list[dict[str, Tensor]]], from_states: Callable[[list[dict]], None],
                 single_shapes: Sequence[torch.Size], grouped_shapes: Sequence[torch.Size]):
        self.paths, self.kind, self.arch = list(paths), kind, arch
        self.to_states, self.from_states = to_states, from_states
        self.single_shapes, self.grouped_shapes = list(single_shapes), list(grouped_shapes)
        self.last_write = time.perf_counter()

    def load(self) -> Resume | None:
        ckpts = _load_all(self.paths, self.kind, self.arch, resume=True)
        if ckpts is None:
            return None
        self.from_states([c["state"] for c in ckpts])
        return Resume(epoch=int(ckpts[0]["epoch"]),
                      optimizer=merge_optimizer_states([c["optimizer"] for c in ckpts], self.grouped_shapes),
                      scheduler=ckpts[0]["scheduler"], histories=[list(c.get("history", [])) for c in ckpts],
                      torch_rng=ckpts[0].get("torch_rng"))

    def save(self, epoch: int, optimizer: torch.optim.Optimizer, scheduler: Any,
             histories: list[list[dict[str, float]]], final: bool) -> None:
        if not final and time.perf_counter() - self.last_write < CHECKPOINT_INTERVAL_S:
            return
        states = self.to_states()
        opt_states = split_optimizer_state(optimizer.state_dict(), len(self.paths), self.single_shapes)
        for path, state, opt, history in zip(self.paths, states, opt_states, histories):
            save_checkpoint(path, self.kind, self.arch, state=state, optimizer=opt, scheduler=scheduler.state_dict(),
                            epoch=epoch, history=history, torch_rng=torch.get_rng_state())
        self.last_write = time.perf_counter()


def _load_all(paths: Sequence[Path], kind: str, arch: dict[str, Any], resume: bool) -> list[dict[str, Any]] | None:
    """All runs' checkpoints of a stage (None on resume when there are none); partial / unequal sets are errors."""
    present = [p for p in paths if p.is_file()]
    if not present and resume:
        return None
    if len(present) != len(paths):
        missing = [str(p) for p in paths if not p.is_file()]
        what = "--resume: " if resume else ""
        raise FileNotFoundError(f"{what}{len(missing)} of {len(paths)} runs have no {paths[0].name} "
                                f"(e.g. {missing[0]})" + ("; rerun without --resume" if resume else ""))
    ckpts = [load_checkpoint(p, kind, arch) for p in paths]
    epochs = {int(c["epoch"]) for c in ckpts if "epoch" in c}
    if len(epochs) > 1:
        raise ValueError(f"the runs' {paths[0].name} checkpoints are at different epochs {sorted(epochs)} "
                         "(killed while writing them); rerun without --resume")
    return ckpts


def _shapes(make: Callable[[], nn.Module]) -> list[torch.Size]:
    """Parameter shapes of a plain model, built on the meta device (no memory, no random numbers drawn)."""
    with torch.device("meta"):
        return [p.shape for p in make().parameters()]


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
