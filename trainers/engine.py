"""One training loop for every stage: epochs, Adam + MultiStepLR, progress, checkpoints, resume.

A stage supplies a ``step`` function (batch -> loss, plus an optional hook to run after the
optimizer step) and the module holding everything that must be checkpointed. The loop does the
rest the same way for AE pretraining, one-class training and end-to-end video training.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
from torch import Tensor, nn
from tqdm import tqdm

from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.errors import UserError

# step(batch, epoch) -> (loss, hook run after optimizer.step() or None, extra scalars to log or None)
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
    raise UserError(f"unknown optimizer {s.optimizer!r}: use adam or sgd")


def compile_in_place(module: nn.Module) -> nn.Module:
    """torch.compile ``module``'s forward (default inductor backend) and return it.

    In place (``nn.Module.compile``), not ``torch.compile(module)``: the state-dict keys stay the
    same, so checkpoints written with and without --compile are interchangeable.
    """
    try:
        module.compile()
    except RuntimeError as err:  # e.g. a Python version Dynamo does not support
        raise UserError(f"--compile: torch.compile is unavailable here ({_first_line(err)}); "
                        "run without --compile") from None
    return module


@contextmanager
def compile_errors(enabled: bool) -> Iterator[None]:
    """Turn a torch.compile failure (raised lazily at the first step) into a one-line UserError."""
    try:
        yield
    except torch._dynamo.exc.TorchDynamoException as err:
        if not enabled:
            raise
        raise UserError(f"--compile: torch.compile failed ({type(err).__name__}: {_first_line(err)}); "
                        "run without --compile") from None


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


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
    """Train ``state`` for ``settings.epochs`` epochs, checkpointing atomically after each one.

    ``batches(epoch)`` yields the training batches of an epoch. With ``resume`` and an existing
    checkpoint of the same kind and architecture, training continues after its last epoch.
    With ``settings.compile``, ``forward_module`` (the module ``step`` calls; default ``state``) is
    compiled in place first; the first epoch's time then includes the compilation.
    With ``best_checkpoint``, the weights of the epoch with the lowest mean training loss so far
    (ties: the later epoch, as the authors' ``<=``) are also written there (``--test-checkpoint
    best-loss``). Returns the per-epoch history (loss, lr, seconds, extra scalars). The loop's own tensors live
    where the trained parameters live (``utils.runtime.module_device``): there is no second device.
    """
    if settings.compile:
        compile_in_place(state if forward_module is None else forward_module)
    params = list(params)
    device = params[0].device if params else torch.device("cpu")
    optimizer = make_optimizer(params, settings)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, settings.milestones, gamma=settings.gamma)
    history: list[dict[str, float]] = []
    start_epoch = 0
    if resume and checkpoint.is_file():
        ckpt = load_checkpoint(checkpoint, kind, arch)
        state.load_state_dict(ckpt["state"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        history = list(ckpt.get("history", []))
        start_epoch = int(ckpt["epoch"])
        if ckpt.get("torch_rng") is not None:
            torch.set_rng_state(ckpt["torch_rng"])
        log(f"[{settings.name}] resuming from {checkpoint} after epoch {start_epoch}")
    if start_epoch >= settings.epochs:
        log(f"[{settings.name}] already complete ({start_epoch} epochs)")
        return history

    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if settings.amp and device.type == "cuda"
                else nullcontext())
    with compile_errors(settings.compile):
        for epoch in range(start_epoch, settings.epochs):
            state.train()
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            extra_sum: dict[str, Tensor] = {}
            seen = 0
            bar = tqdm(batches(epoch), total=n_batches, desc=f"{settings.name} {epoch + 1}/{settings.epochs}",
                       leave=False, disable=not settings.progress, dynamic_ncols=True)
            for x in bar:
                with autocast:
                    loss, after_step, extra = step(x, epoch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if after_step is not None:
                    after_step()
                loss_sum += loss.detach()  # no host sync inside the step; reduced once per epoch
                for k, v in (extra or {}).items():
                    extra_sum[k] = extra_sum.get(k, 0) + v.detach()
                seen += 1
            if seen == 0:
                raise UserError(f"[{settings.name}] the training set produced no batch: check the data path and "
                                "batch size")
            mean_loss = float(loss_sum) / seen
            if not math.isfinite(mean_loss):
                raise UserError(f"[{settings.name}] loss became {mean_loss} at epoch {epoch + 1}: lower the learning "
                                "rate (-lr/-alr) or check the input data; the last good checkpoint is kept")
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            row = {"epoch": epoch + 1, "loss": mean_loss, "lr": lr, "seconds": time.perf_counter() - t0}
            row.update({k: float(v) / seen for k, v in extra_sum.items()})
            if extra_payload is not None:
                row.update({k: v for k, v in extra_payload().items() if isinstance(v, (int, float))})
            history.append(row)
            log(f"[{settings.name}] " + "  ".join(_fmt(k, v) for k, v in row.items()))
            save_checkpoint(checkpoint, kind, arch, state=state.state_dict(), optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict(), epoch=epoch + 1, history=history,
                            torch_rng=torch.get_rng_state())
            if best_checkpoint is not None and mean_loss <= min(h["loss"] for h in history):
                save_checkpoint(best_checkpoint, kind, arch, state=state.state_dict(), epoch=epoch + 1,
                                history=history)
    return history


def _fmt(key: str, value: float) -> str:
    if key == "epoch":
        return f"epoch {int(value)}"
    if key == "seconds":
        return f"time {value:.1f}s"
    return f"{key} {value:.4g}"
