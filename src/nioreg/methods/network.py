"""Turn a LapIRN-family network into full-resolution voxel-unit displacements for one image pair.

The networks need every spatial size divisible by 8 (two average-pool halvings to level 1, one strided
convolution inside it) and speak the official normalised units. This adapter pads the pair once,
asks the network for the field of pyramid level 1, 2 or 3, upsamples it to the padded full size (as the
network itself upsamples between levels: trilinear, align_corners=False), converts it to voxel units
and crops the padding away. The loss is therefore always evaluated at full resolution (Eq. 3 of the paper).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import official_to_voxel
from ..runtime import LAYOUTS, PRECISIONS, resolve_layout, resolve_precision

MULTIPLE = 8
MEMORY_FORMATS = LAYOUTS
"""Layout of the network's activations and convolution weights: ``channels_last`` (``torch.channels_last_3d``,
what oneDNN's CPU convolutions run natively), ``contiguous``, or ``auto`` (what was measured faster on the
device, :func:`nioreg.runtime.resolve_layout`)."""


def padding_for(shape: tuple[int, ...], multiple: int = MULTIPLE) -> tuple[int, ...]:
    """F.pad amounts (last axis first) that grow ``shape`` to multiples of ``multiple``, split evenly."""
    pads: list[int] = []
    for n in reversed(shape):
        extra = math.ceil(n / multiple) * multiple - n
        pads += [extra // 2, extra - extra // 2]
    return tuple(pads)


def resolve_memory_format(memory_format: str, device: torch.device) -> torch.memory_format:
    """The torch layout for one of :data:`MEMORY_FORMATS` on ``device`` (``auto``: :func:`~nioreg.runtime.resolve_layout`)."""
    name, _ = resolve_layout(memory_format, device)
    return torch.channels_last_3d if name == "channels_last" else torch.contiguous_format


def memory_format_name(memory_format: torch.memory_format) -> str:
    """``"channels_last"`` or ``"contiguous"``: how results and metrics name a resolved layout."""
    return "channels_last" if memory_format == torch.channels_last_3d else "contiguous"


def in_memory_format(model: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    """``model`` with its 5-D (convolution) weights laid out in ``memory_format``.

    Returns ``model`` itself when they already are, otherwise a converted copy: a caller's model is never
    changed (the conversion is in place in PyTorch). Values are identical; only the strides differ.
    """
    weights = [p for p in model.parameters() if p.dim() == 5]
    if all(p.is_contiguous(memory_format=memory_format) for p in weights):
        return model
    return copy.deepcopy(model).to(memory_format=memory_format)


class PairNetwork:
    """A network bound to one (fixed, moving) pair: ``field(level)`` is a full-size voxel displacement.

    ``fixed`` and ``moving`` are ``(1, 1, D, H, W)`` tensors already scaled to ``[0, 1]`` on the fixed grid.
    ``lam`` is given to conditional networks only; ``precision`` is ``"fp32"``, ``"bf16"`` or ``"auto"`` (decided
    for the pair's device by :func:`nioreg.runtime.resolve_precision`);
    ``memory_format`` is the layout the network's inputs are given in (its weights should match it, see
    :func:`in_memory_format`). Fields come back contiguous whatever the layout inside.
    """

    def __init__(self, model: nn.Module, fixed: Tensor, moving: Tensor, lam: float | None = None,
                 precision: str = "fp32", memory_format: torch.memory_format = torch.contiguous_format) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        self.model = model
        # register() resolves "auto" once (and warns about an emulated bf16 once); direct users get the same rule.
        resolved = resolve_precision(precision, fixed.device)[0] if precision == "auto" else precision
        self.autocast = resolved == "bf16"
        self.shape = tuple(fixed.shape[2:])
        self.lam = lam if getattr(model, "config", {}).get("conditional", False) else None
        self.pads = padding_for(self.shape)
        # Replicate padding: the padded rim looks like the image border rather than an artificial edge.
        self.fixed = F.pad(fixed, self.pads, mode="replicate") if any(self.pads) else fixed
        self.moving = F.pad(moving, self.pads, mode="replicate") if any(self.pads) else moving
        self.fixed = self.fixed.contiguous(memory_format=memory_format)
        self.moving = self.moving.contiguous(memory_format=memory_format)
        self.padded_shape = tuple(self.fixed.shape[2:])
        d0, h0, w0 = self.pads[4], self.pads[2], self.pads[0]
        d, h, w = self.shape
        self.crop = (slice(None), slice(None), slice(d0, d0 + d), slice(h0, h0 + h), slice(w0, w0 + w))

    def field(self, level: int = 3) -> Tensor:
        """Displacement from pyramid level ``level``, upsampled to full size, in voxels: (1, 3, D, H, W)."""
        with torch.autocast(self.fixed.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            flow = self.model(self.moving, self.fixed, level=level, lam=self.lam)
        flow = flow.float()
        if tuple(flow.shape[2:]) != self.padded_shape:
            flow = F.interpolate(flow, size=self.padded_shape, mode="trilinear", align_corners=False)
        return official_to_voxel(flow)[self.crop].contiguous()
