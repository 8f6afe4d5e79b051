"""The one optimisation loop that IO, NIO and NIO_m share, with its safeguards.

Test-time optimisation can diverge (a bad learning rate, an unlucky pair, numerically hard images), so
every stage of every method runs through :func:`run_stage`, which

- evaluates the full-resolution loss at every iteration and logs it,
- keeps the best iterate (parameters and field),
- detects divergence: a non-finite loss or gradient, or a loss that stays above where the stage started
  for ``patience`` iterations in a row,
- on divergence restores the best iterate and retries with a smaller step (``lr * backoff``), and stops
  the stage after ``max_retries`` such events,
- ends each stage on its best iterate.

Everything that happened is recorded in the :class:`OptimisationLog` (and so in metrics.json).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

Objective = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]


@dataclass
class Safeguards:
    """When to call a stage diverged and what to do then."""

    patience: int = 10
    """Iterations in a row the loss may stay above the stage's starting loss before it counts as divergence."""
    tolerance: float = 1e-4
    """Slack (absolute, in loss units) above the starting loss that still counts as 'not worse'."""
    backoff: float = 0.5
    """Learning-rate factor after a divergence."""
    max_retries: int = 3
    """Divergences after which the stage stops on its best iterate."""


@dataclass
class OptimisationLog:
    """Loss curve, events and stage times of one registration (plain lists and dicts, JSON-ready)."""

    curve: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def record(self, stage: str, iteration: int, total: float, sim: float, reg: float, lr: float) -> None:
        self.curve.append({"stage": stage, "iteration": iteration, "loss": total, "similarity": sim,
                           "regularisation": reg, "lr": lr})

    def event(self, stage: str, iteration: int, kind: str, detail: str) -> None:
        self.events.append({"stage": stage, "iteration": iteration, "event": kind, "detail": detail})


def _snapshot(params: list[Tensor]) -> list[Tensor]:
    return [p.detach().clone() for p in params]


def _restore(params: list[Tensor], snapshot: list[Tensor]) -> None:
    with torch.no_grad():
        for p, s in zip(params, snapshot):
            p.copy_(s)


def _finite_gradients(params: list[Tensor]) -> bool:
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)


def run_stage(
    name: str,
    params: list[Tensor],
    compute_field: Callable[[], Tensor],
    objective: Objective,
    iterations: int,
    lr: float,
    log: OptimisationLog,
    safeguards: Safeguards | None = None,
    on_iteration: Callable[[str, int, float], None] | None = None,
) -> Tensor:
    """Adam on ``params`` for ``iterations`` steps, minimising ``objective(compute_field())``.

    Returns the best (lowest-loss) field seen, with ``params`` restored to the iterate that produced it.
    """
    guard = safeguards or Safeguards()
    started = time.perf_counter()
    optimizer = torch.optim.Adam(params, lr=lr)
    best_loss, best_params, best_field = math.inf, _snapshot(params), None
    start_loss: float | None = None
    worse_in_a_row = retries = 0

    def back_off(iteration: int, kind: str, detail: str) -> bool:
        """Restore the best iterate and shrink the step; False when the stage should stop."""
        nonlocal optimizer, lr, retries, worse_in_a_row
        _restore(params, best_params)
        retries += 1
        worse_in_a_row = 0
        if retries > guard.max_retries:
            log.event(name, iteration, "stopped", f"{kind} ({detail}); stopped after {guard.max_retries} retries")
            return False
        lr *= guard.backoff
        optimizer = torch.optim.Adam(params, lr=lr)
        log.event(name, iteration, kind, f"{detail}; restored best iterate, lr -> {lr:.3g}")
        return True

    for iteration in range(iterations + 1):  # the extra pass only evaluates the last step's result
        last = iteration == iterations
        with torch.set_grad_enabled(not last):
            disp = compute_field()
            total, sim, reg = objective(disp)
        value = float(total.detach())
        log.record(name, iteration, value, float(sim.detach()), float(reg.detach()), lr)
        if on_iteration is not None and not last:
            on_iteration(name, iteration, value)

        if not math.isfinite(value):
            if not back_off(iteration, "non-finite loss", f"loss {value}") or last:
                break
            continue
        if start_loss is None:
            start_loss = value
        if value < best_loss:
            # clone: for IO the field *is* a parameter that Adam updates in place
            best_loss, best_params, best_field = value, _snapshot(params), disp.detach().clone()
        worse_in_a_row = worse_in_a_row + 1 if value > start_loss + guard.tolerance else 0
        if last:
            break
        if worse_in_a_row >= guard.patience:
            detail = f"loss {value:.5f} above the stage start {start_loss:.5f} for {guard.patience} iterations"
            if not back_off(iteration, "diverged", detail):
                break
            continue

        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if not _finite_gradients(params):
            if not back_off(iteration, "non-finite gradient", "NaN/Inf in the gradient"):
                break
            continue
        optimizer.step()

    _restore(params, best_params)
    log.stage_seconds[name] = time.perf_counter() - started
    if best_field is None:  # every evaluation was non-finite: the caller falls back to feed-forward
        with torch.no_grad():
            return compute_field().detach().clone()
    return best_field
