"""NIO and NIO_m: adapt the network's weights to one pair (Sections 2.1 and 2.2 of the paper).

Both work on a private copy of the network, so the pretrained weights are untouched and every pair
starts from them.
"""

from __future__ import annotations

import copy
from typing import Sequence

from torch import Tensor, nn

from .loop import run_stage
from .pair import Pair
from .registry import MethodContext


def _private_copy(model: nn.Module) -> nn.Module:
    work = copy.deepcopy(model)
    work.eval()  # LapIRN has no batch-norm or dropout; eval keeps behaviour identical to inference
    for p in work.parameters():
        p.requires_grad_(True)
    return work


def neural_instance_optimisation(pair: Pair, model: nn.Module, iterations: int, lr: float) -> Tensor:
    """NIO: Adam on all network weights for ``iterations`` steps at full resolution."""
    work = _private_copy(model)
    net = pair.network(work)
    return run_stage("nio", list(work.parameters()), lambda: pair.smooth(net.field(3)), pair.objective,
                     iterations, lr, pair.log, pair.safeguards, pair.on_iteration)


def multiresolution_nio(pair: Pair, model: nn.Module, iterations: Sequence[int], lr: float) -> Tensor:
    """NIO_m: optimise level 1 alone, then levels 1–2, then 1–3 (``iterations`` per stage).

    At every stage the current level's field is upsampled to full size and the loss is computed on the
    full-resolution images (Eq. 3). Each stage has its own Adam state, since its parameter set differs.
    """
    if len(iterations) != 3:
        raise ValueError(f"nio_m needs 3 iteration counts (levels 1, 2, 3), got {list(iterations)}")
    work = _private_copy(model)
    net = pair.network(work)
    field = None
    for level, count in enumerate(iterations, start=1):
        params = [p for lvl in range(1, level + 1) for p in work.level_parameters(lvl)]
        field = run_stage(f"level{level}", params, lambda lvl=level: pair.smooth(net.field(lvl)), pair.objective,
                          count, lr, pair.log, pair.safeguards, pair.on_iteration)
        if pair.on_stage is not None:
            pair.on_stage(f"level{level}", field)
    return field


def run_neural_instance_optimisation(context: MethodContext) -> Tensor:
    """The ``nio`` method."""
    return neural_instance_optimisation(context.pair, context.model, context.iterations[0], context.lr)


def run_multiresolution_nio(context: MethodContext) -> Tensor:
    """The ``nio_m`` method."""
    return multiresolution_nio(context.pair, context.model, context.iterations, context.lr)
