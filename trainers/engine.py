"""One training loop for every stage: epochs, Adam + MultiStepLR, progress, checkpoints, resume.

A stage supplies a ``step`` function (batch -> loss, plus an optional hook to run after the
optimizer step) and where its checkpoints go. The loop does the rest the same way for AE
pretraining, one-class training and end-to-end video training, for one run or for K runs
trained together as one grouped model (a loss per run; one history and one checkpoint per run).
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol, Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from utils.checkpoint import load_checkpoint, save_checkpoint

# step(batch, epoch) -> (loss () or per run (K,), hook run after optimizer.step() or None,
#                        extra scalars to log, () or (K,) each, or None)
StepFn = Callable[[Tensor, int], "tuple[Tensor, Optional[Callable[[], None]], Optional[dict[str, Tensor]]]"]


@dataclass
class StageSettings:
    """Optimisation settings of one stage (all from the config)."""

    name: str
    epochs: int
    learning_rate: float
    weight_decay: float
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    optimizer: str = "adam"
    progress: bool = True
    amp: bool = False
    compile: bool = False  # torch.compile the module whose forward the step calls


def make_optimizer(params: Iterable[nn.Parameter], s: StageSettings) -> torch.optim.Optimizer:
    """Adam with coupled L2 weight decay (the paper's regulariser), or SGD with momentum 0.9."""
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.learning_rate, weight_decay=s.weight_decay)
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.learning_rate, weight_decay=s.weight_decay, momentum=0.9)
    raise ValueError(f"unknown optimizer {s.optimizer!r}: use adam or sgd")


def compile_in_place(module: nn.Module) -> nn.Module:
    """torch.compile ``module``'s forward (default inductor backend) and return it.

    In place (``nn.Module.compile``), not ``torch.compile(module)``: the state-dict keys stay the
    same, so checkpoints written with and without --compile are interchangeable.
    """
    try:
        module.compile()
    except RuntimeError as err:  # e.g. a Python version Dynamo does not support
        raise ValueError(f"--compile: torch.compile is unavailable here ({_first_line(err)}); "
                        "run without --compile") from None
    return module


@contextmanager
def compile_errors(enabled: bool) -> Iterator[None]:
    """Turn a torch.compile failure (raised lazily at the first step) into a one-line error (ValueError)."""
    try:
        yield
    except torch._dynamo.exc.TorchDynamoException as err:
        if not enabled:
            raise
        raise ValueError(f"--compile: torch.compile failed ({type(err).__name__}: {_first_line(err)}); "
                        "run without --compile") from None


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


@dataclass
class Resume:
    """Where a stage continues: what its checkpoints hold, for every run of the stage."""

    epoch: int
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    histories: list[list[dict[str, float]]]
    torch_rng: Tensor | None = None


class Checkpointer(Protocol):
    """Where a stage's weights, optimizer and history go (one file per run)."""

    def load(self) -> Resume | None:
        """Load the saved weights into the model and return where to continue (None: nothing saved)."""

    def save(self, epoch: int, optimizer: torch.optim.Optimizer, scheduler: Any,
             histories: list[list[dict[str, float]]], final: bool) -> None:
        """Write the checkpoints after ``epoch`` (``final``: the stage's last epoch)."""


@dataclass
class RunCheckpoint:
    """One run, one file, written atomically after every epoch; optionally its lowest-loss epoch too."""

    path: Path
    kind: str
    arch: dict[str, Any]
    state: nn.Module
    best: Path | None = None  # --test-checkpoint best-loss: ties go to the later epoch, as the authors' ``<=``

    def load(self) -> Resume | None:
        if not self.path.is_file():
            return None
        ckpt = load_checkpoint(self.path, self.kind, self.arch)
        self.state.load_state_dict(ckpt["state"])
        return Resume(int(ckpt["epoch"]), ckpt["optimizer"], ckpt["scheduler"], [list(ckpt.get("history", []))],
                      ckpt.get("torch_rng"))

    def save(self, epoch: int, optimizer: torch.optim.Optimizer, scheduler: Any,
             histories: list[list[dict[str, float]]], final: bool) -> None:
        (history,) = histories
        save_checkpoint(self.path, self.kind, self.arch, state=self.state.state_dict(),
                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), epoch=epoch,
                        history=history, torch_rng=torch.get_rng_state())
        if self.best is not None and history[-1]["loss"] <= min(h["loss"] for h in history):
            save_checkpoint(self.best, self.kind, self.arch, state=self.state.state_dict(), epoch=epoch,
                            history=history)


def fit(
    state: nn.Module,
    params: Iterable[nn.Parameter],
    step: StepFn,
    batches: Callable[[int], Iterable[Tensor]],
    n_batches: int,
    settings: StageSettings,
    checkpoint: Path,
    kind: str,
    arch: dict[str, Any],
    resume: bool = False,
    log: Callable[[str], None] = print,
    extra_payload: Callable[[], dict[str, Any]] | None = None,
    forward_module: nn.Module | None = None,
    best_checkpoint: Path | None = None,
) -> list[dict[str, float]]:
    """``fit_runs`` for one run whose checkpointed module is ``state``; returns its history."""
    if settings.compile:
        compile_in_place(state if forward_module is None else forward_module)
    payload = None if extra_payload is None else (lambda: [extra_payload()])
    return fit_runs(params, step, batches, n_batches, settings, RunCheckpoint(checkpoint, kind, arch, state,
                    best_checkpoint), train_modules=[state], resume=resume, log=log, extra_payload=payload)[0]


def fit_runs(
    params: Iterable[nn.Parameter],
    step: StepFn,
    batches: Callable[[int], Iterable[Tensor]],
    n_batches: int,
    settings: StageSettings,
    checkpoints: Checkpointer,
    *,
    train_modules: Sequence[nn.Module],
    run_labels: Sequence[str] = ("",),
    resume: bool = False,
    log: Callable[[str], None] = print,
    extra_payload: Callable[[], list[dict[str, Any]]] | None = None,
) -> list[list[dict[str, float]]]:
    """Train for ``settings.epochs`` epochs; return one per-epoch history per run.

    ``step`` returns the loss of one run (a 0-dim tensor) or of K runs trained together as one
    grouped model (a (K,) vector; their parameters are disjoint, so the gradient of the sum is
    each run's own gradient and Adam / L2 act per run). Extra scalars are () or (K,) likewise.
    ``batches(epoch)`` yields the training batches of an epoch. With ``resume``, training
    continues after the epoch ``checkpoints`` hold. The loss is brought to the host once per epoch,
    never per batch. The loop's own tensors live where the trained parameters live: there is no
    second device.
    """
    params = list(params)
    device = params[0].device if params else torch.device("cpu")
    k = len(run_labels)
    optimizer = make_optimizer(params, settings)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, settings.milestones, gamma=settings.gamma)
    histories: list[list[dict[str, float]]] = [[] for _ in range(k)]
    start_epoch = 0
    saved = checkpoints.load() if resume else None
    if saved is not None:
        optimizer.load_state_dict(saved.optimizer)
        scheduler.load_state_dict(saved.scheduler)
        histories = [list(h) for h in saved.histories]
        start_epoch = saved.epoch
        if saved.torch_rng is not None:
            torch.set_rng_state(saved.torch_rng)
        log(f"[{settings.name}] resuming after epoch {start_epoch}" + (f" ({k} runs)" if k > 1 else ""))
    if start_epoch >= settings.epochs:
        log(f"[{settings.name}] already complete ({start_epoch} epochs)")
        return histories

    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if settings.amp and device.type == "cuda"
                else nullcontext())
    with compile_errors(settings.compile):
        for epoch in range(start_epoch, settings.epochs):
            for module in train_modules:
                module.train()
            t0 = time.perf_counter()
            loss_sum = torch.zeros(k, device=device)
            extra_sum: dict[str, Tensor] = {}
            seen = 0
            bar = tqdm(batches(epoch), total=n_batches, desc=f"{settings.name} {epoch + 1}/{settings.epochs}",
                       leave=False, disable=not settings.progress, dynamic_ncols=True)
            for x in bar:
                with autocast:
                    loss, after_step, extra = step(x, epoch)
                optimizer.zero_grad(set_to_none=True)
                loss.sum().backward()
                optimizer.step()
                if after_step is not None:
                    after_step()
                loss_sum += loss.detach().float().reshape(-1)  # no host sync inside the step
                for name, v in (extra or {}).items():
                    v = v.detach().float().reshape(-1)
                    extra_sum[name] = extra_sum[name] + v if name in extra_sum else v
                seen += 1
            if seen == 0:
                raise ValueError(f"[{settings.name}] the training set produced no batch: check the data path and "
                                "batch size")
            losses = [v / seen for v in loss_sum.tolist()]
            bad = [run_labels[r] for r, v in enumerate(losses) if not math.isfinite(v)]
            if bad:
                where = f" in run(s) {', '.join(bad)}" if k > 1 else ""
                raise ValueError(f"[{settings.name}] loss became {losses[0] if k == 1 else 'non-finite'} at epoch "
                                f"{epoch + 1}{where}: lower the learning rate (-lr/-alr) or check the input data; "
                                "the last good checkpoint is kept")
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            seconds = time.perf_counter() - t0
            extras = {name: [v / seen for v in t.tolist()] for name, t in extra_sum.items()}
            payload = extra_payload() if extra_payload is not None else [{} for _ in range(k)]
            for r in range(k):
                row = {"epoch": epoch + 1, "loss": losses[r], "lr": lr, "seconds": seconds}
                row.update({name: v[r] for name, v in extras.items()})
                row.update({n: v for n, v in payload[r].items() if isinstance(v, (int, float))})
                histories[r].append(row)
            if k == 1:
                log(f"[{settings.name}] " + "  ".join(_fmt(n, v) for n, v in histories[0][-1].items()))
            else:
                log(f"[{settings.name}] epoch {epoch + 1}/{settings.epochs}  lr {lr:.4g}  time {seconds:.1f}s  "
                    "loss per run " + " ".join(f"{v:.4g}" for v in losses))
            checkpoints.save(epoch + 1, optimizer, scheduler, histories, final=epoch + 1 == settings.epochs)
    return histories


def _fmt(key: str, value: float) -> str:
    if key == "epoch":
        return f"epoch {int(value)}"
    if key == "seconds":
        return f"time {value:.1f}s"
    return f"{key} {value:.4g}"
