"""IO: instance optimisation of the displacement itself (Adam on u), initialised by feed-forward."""

from __future__ import annotations

from torch import Tensor

from .loop import run_stage
from .pair import Pair
from .registry import MethodContext


def instance_optimisation(pair: Pair, initial: Tensor, iterations: int, lr: float) -> Tensor:
    """Refine ``initial`` (voxel units) for ``iterations`` Adam steps with step size ``lr`` (voxels).

    With ``pair.smoothing`` the optimised parameter is the raw field and the evaluated (and returned)
    field is its smoothed version, i.e. a B-spline-like deformation model as in Siebert et al. 2021.
    """
    disp = initial.detach().clone().requires_grad_(True)
    return run_stage("io", [disp], lambda: pair.smooth(disp), pair.objective, iterations, lr, pair.log,
                     pair.safeguards, pair.on_iteration)


def run_instance_optimisation(context: MethodContext) -> Tensor:
    """The ``io`` method: starts from the network's raw field."""
    return instance_optimisation(context.pair, context.network_field, context.iterations[0], context.lr)
