"""Building blocks of the LapIRN family (pre-activation residual blocks, conditional instance norm).

Attribute names (``conv1``, ``conv2``, ``ai1``, ``ai2``, ``mapping``, ``style``) follow the official
code of cwmok/LapIRN and cwmok/Conditional_LapIRN so that official ``state_dict`` keys load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Conv3d", "PreActBlock", "ConditionalInstanceNorm", "PreActBlockConditional"]

_SLOPE = 0.2  # LeakyReLU negative slope used everywhere in LapIRN

#: PyTorch sends a float32, batch-1, ungrouped CPU convolution whose kernel is at most 3 along H or W to
#: its own unvectorised kernel (``slow_conv3d``) instead of oneDNN when N·C·D·H of the input is at most this
#: (a heuristic of ``aten/src/ATen/native/Convolution.cpp``, tuned on 2D images). For LapIRN's 3D
#: layers that is up to 7× slower, forward + backward (benchmarks/bench_conv.py; BENCHMARKS.md, "Speed").
_NATIVE_KERNEL_LIMIT = 20480


def _takes_slow_native_kernel(x: Tensor, conv: nn.Conv3d) -> bool:
    return (x.device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and conv.groups == 1 and conv.padding_mode == "zeros" and x.dim() == 5 and x.shape[0] == 1
            and min(conv.kernel_size[-2:]) <= 3 and x.shape[1] * x.shape[2] * x.shape[3] <= _NATIVE_KERNEL_LIMIT)


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters and state_dict keys) that keeps small float32 CPU inputs on oneDNN.

    Where PyTorch would pick its slow native kernel (see :data:`_NATIVE_KERNEL_LIMIT`), the same
    convolution is computed as a two-group one over the input given twice: group g sees one copy and
    holds output channels g·C/2 … (g+1)·C/2 - 1, so the result is exactly ``conv3d(x, weight)`` up to
    float32 summation order, and grouped convolutions always go to oneDNN. An odd number of output
    channels gets one zero filter, sliced off again. Everything else is plain ``nn.Conv3d``.
    """

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # noqa: A002
        if not _takes_slow_native_kernel(input, self):
            return super()._conv_forward(input, weight, bias)
        out_channels = weight.shape[0]
        if out_channels % 2:
            weight = torch.cat([weight, weight.new_zeros(1, *weight.shape[1:])])
            bias = None if bias is None else torch.cat([bias, bias.new_zeros(1)])
        out = F.conv3d(torch.cat([input, input], dim=1), weight, bias, self.stride, self.padding, self.dilation, 2)
        return out[:, :out_channels] if out_channels % 2 else out


class PreActBlock(nn.Module):
    """Pre-activation residual block: ``x + conv2(lrelu(conv1(lrelu(x))))`` (no bias, no norm)."""

    def __init__(self, channels: int, bias: bool = False) -> None:
        super().__init__()
        self.conv1 = Conv3d(channels, channels, kernel_size=3, stride=1, padding=1, bias=bias)
        self.conv2 = Conv3d(channels, channels, kernel_size=3, stride=1, padding=1, bias=bias)

    def forward(self, x: Tensor, code: Tensor | None = None) -> Tensor:  # noqa: ARG002 - uniform signature
        out = self.conv1(F.leaky_relu(x, negative_slope=_SLOPE))
        out = self.conv2(F.leaky_relu(out, negative_slope=_SLOPE))
        return out + x


class ConditionalInstanceNorm(nn.Module):
    """Instance norm (no affine, no running stats) modulated by a latent code: ``(1 + γ) · IN(x) + β``."""

    def __init__(self, channels: int, latent_dim: int = 64) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm3d(channels)  # affine=False, track_running_stats=False: no state
        self.style = nn.Linear(latent_dim, channels * 2)
        # Official initialisation. Note the official forward ALSO adds 1 to γ, so a fresh block starts
        # with a scale of 2, not 1 -- an oddity we keep so that fresh models behave like official ones.
        with torch.no_grad():
            self.style.bias[:channels] = 1.0
            self.style.bias[channels:] = 0.0

    def forward(self, x: Tensor, latent: Tensor) -> Tensor:
        style = self.style(latent)[:, :, None, None, None]
        gamma, beta = style.chunk(2, dim=1)
        return (1.0 + gamma) * self.norm(x) + beta


class PreActBlockConditional(nn.Module):
    """Pre-activation residual block with conditional instance normalisation (conditional LapIRN).

    The scalar condition ``code`` (shape ``(B, 1)``) goes through a 4-layer MLP (``mapping``) to a
    latent vector that modulates both normalisations.
    """

    def __init__(self, channels: int, bias: bool = False, latent_dim: int = 64, mapping_fmaps: int = 64) -> None:
        super().__init__()
        self.ai1 = ConditionalInstanceNorm(channels, latent_dim=latent_dim)
        self.conv1 = Conv3d(channels, channels, kernel_size=3, stride=1, padding=1, bias=bias)
        self.ai2 = ConditionalInstanceNorm(channels, latent_dim=latent_dim)
        self.conv2 = Conv3d(channels, channels, kernel_size=3, stride=1, padding=1, bias=bias)
        self.mapping = nn.Sequential(
            nn.Linear(1, mapping_fmaps), nn.LeakyReLU(_SLOPE),
            nn.Linear(mapping_fmaps, mapping_fmaps), nn.LeakyReLU(_SLOPE),
            nn.Linear(mapping_fmaps, mapping_fmaps), nn.LeakyReLU(_SLOPE),
            nn.Linear(mapping_fmaps, latent_dim), nn.LeakyReLU(_SLOPE),
        )

    def forward(self, x: Tensor, code: Tensor | None = None) -> Tensor:
        if code is None:
            raise ValueError("a conditional block needs the conditioning code (shape (B, 1))")
        latent = self.mapping(code)
        out = F.leaky_relu(self.ai1(x, latent), negative_slope=_SLOPE)
        # Official quirk: the residual shortcut is the block INPUT x (no projection since in == out
        # channels), while the pre-activated, normalised tensor only feeds conv1.
        out = self.conv1(out)
        out = self.conv2(F.leaky_relu(self.ai2(out, latent), negative_slope=_SLOPE))
        return out + x
