"""Feed-forward registration: one pass of the pretrained network."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .pair import Pair
from .registry import MethodContext


@torch.no_grad()
def feedforward(pair: Pair, model: nn.Module) -> Tensor:
    """The level-3 displacement of the network as trained, in voxels, (1, 3, D, H, W).

    This is the raw network field: the caller applies ``pair.smooth`` (IO optimises the raw field and
    evaluates its smoothed version, so it must start from the unsmoothed one).
    """
    return pair.network(model).field(3)


def run_feedforward(context: MethodContext) -> Tensor:
    """The ``ff`` method: the feed-forward field as it is (``register()`` computed it already)."""
    return context.feedforward
