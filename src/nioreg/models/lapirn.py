"""LapIRN networks (displacement, diffeomorphic and conditional variants) in one configurable class.

Architecture and parameter names reproduce the official code:

* cwmok/LapIRN ``Code/miccai2020_model_stage.py``: ``Miccai2020_LDR_laplacian_unit_disp_add_lvl1/2/3``
  (variant ``"disp"``) and ``Miccai2020_LDR_laplacian_unit_add_lvl1/2/3`` (variant ``"diff"``:
  stationary velocity + scaling and squaring with 7 steps);
* cwmok/Conditional_LapIRN ``Code/miccai2021_model.py`` / ``miccai2021_model_lite.py``:
  ``Miccai2021_LDR_conditional_laplacian_unit_disp_add_lvl1/2/3`` (``conditional=True``, ``lite=False/True``).

As in the official code the level-3 network *owns* the level-2 network (attribute ``model_lvl2``),
which owns the level-1 network (``model_lvl1``), and every level names its layers
``input_encoder_lvl1``, ``down_conv``, ``resblock_group_lvl1``, ``up``, ``output_lvl1``. :class:`LapIRN`
*is* the level-3 network, so its ``state_dict`` keys are exactly the official checkpoint keys.

Differences from the official code: no sampling grids stored on the modules (identity grids are
computed from the input shape and cached outside the ``state_dict``), no ``.cuda()`` calls, a
configurable width, and one ``forward`` that returns the field of any pyramid level.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from . import _official_ops as ops
from .blocks import Conv3d, PreActBlock, PreActBlockConditional

__all__ = ["LapIRN", "build_model", "normalise_config", "lambda_to_reg_code", "DEFAULT_CONFIG"]

LEVELS = (1, 2, 3)
_N_RESBLOCKS = 5

#: Defaults of a configuration (official values).
DEFAULT_CONFIG: dict[str, Any] = {
    "arch": "lapirn",
    "variant": "disp",            # "disp" (displacement) | "diff" (stationary velocity + scaling and squaring)
    "conditional": False,         # conditional instance norm on the regularisation code (cLapIRN)
    "lite": False,                # cLapIRN "lite" widths
    "start_channel": 7,
    "range_flow": 0.4,            # softsign output * range_flow, per level, in official normalised units
    "in_channel": 2,              # moving + fixed
    "n_classes": 3,               # 3-D field
    "lambda_to_code": "identity", # how the paper's normalised λ maps to the network's reg_code
    "ss_steps": ops.OFFICIAL_SS_STEPS,  # scaling-and-squaring steps (variant "diff")
    "latent_dim": 64,             # conditional models: latent code size
    "mapping_fmaps": 64,          # conditional models: width of the code mapping MLP
}

_LAMBDA_TO_CODE = ("identity", "official_clapirn")


def normalise_config(config: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """Return a complete, validated copy of a LapIRN configuration (defaults filled in).

    Raises ``ValueError`` naming the offending key for unknown keys or invalid values.
    """
    cfg = dict(DEFAULT_CONFIG)
    given = dict(config or {})
    given.update(overrides)
    unknown = sorted(set(given) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(f"unknown LapIRN config key(s): {', '.join(unknown)}")
    cfg.update(given)

    if cfg["arch"] != "lapirn":
        raise ValueError(f"config['arch'] must be 'lapirn', got {cfg['arch']!r}")
    if cfg["variant"] not in ("disp", "diff"):
        raise ValueError(f"config['variant'] must be 'disp' or 'diff', got {cfg['variant']!r}")
    for key in ("conditional", "lite"):
        if not isinstance(cfg[key], bool):
            raise ValueError(f"config[{key!r}] must be a bool, got {cfg[key]!r}")
    for key in ("start_channel", "in_channel", "n_classes", "ss_steps", "latent_dim", "mapping_fmaps"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config[{key!r}] must be an int, got {value!r}")
    if cfg["start_channel"] < 1:
        raise ValueError(f"config['start_channel'] must be >= 1, got {cfg['start_channel']}")
    if cfg["in_channel"] != 2:
        raise ValueError(f"config['in_channel'] must be 2 (moving + fixed), got {cfg['in_channel']}")
    if cfg["n_classes"] != 3:
        raise ValueError(f"config['n_classes'] must be 3 (3-D displacement), got {cfg['n_classes']}")
    if cfg["ss_steps"] < 0:
        raise ValueError(f"config['ss_steps'] must be >= 0, got {cfg['ss_steps']}")
    if cfg["latent_dim"] < 1 or cfg["mapping_fmaps"] < 1:
        raise ValueError("config['latent_dim'] and config['mapping_fmaps'] must be >= 1")
    rf = cfg["range_flow"]
    if isinstance(rf, bool) or not isinstance(rf, (int, float)) or not math.isfinite(rf) or rf <= 0:
        raise ValueError(f"config['range_flow'] must be a positive number, got {rf!r}")
    cfg["range_flow"] = float(rf)
    if cfg["lambda_to_code"] not in _LAMBDA_TO_CODE:
        raise ValueError(f"config['lambda_to_code'] must be one of {_LAMBDA_TO_CODE}, got {cfg['lambda_to_code']!r}")
    return cfg


def lambda_to_reg_code(lam: float | Tensor, mapping: str) -> float | Tensor:
    """Map the paper's normalised λ ∈ [0, 1] to a conditional network's ``reg_code``.

    * ``"identity"``: ``reg_code = λ`` (models trained with loss ``(1 - λ)·sim + λ·reg``).
    * ``"official_clapirn"``: ``reg_code = λ / (10 (1 - λ))`` -- the official cLapIRN was trained with
      ``NCC + 10 · reg_code · smoothness``; λ must be < 1 and codes above 1 (λ > 10/11) lie outside the
      training range ``[0, 1]``.
    """
    if mapping == "identity":
        return lam
    if mapping == "official_clapirn":
        if isinstance(lam, Tensor):
            if bool((lam >= 1).any()):
                raise ValueError("λ must be < 1 for lambda_to_code='official_clapirn'")
            return lam / (10.0 * (1.0 - lam))
        if lam >= 1:
            raise ValueError(f"λ must be < 1 for lambda_to_code='official_clapirn', got {lam}")
        return lam / (10.0 * (1.0 - lam))
    raise ValueError(f"unknown lambda_to_code mapping {mapping!r}")


@dataclass
class LevelOutput:
    """What one pyramid level hands to the next (all in official units and channel order).

    ``disp``: the level's displacement (after scaling and squaring for ``"diff"``);
    ``velocity``: the accumulated stationary velocity (``"diff"``) or the displacement (``"disp"``);
    ``embedding``: the decoder feature map added to the next level's bottleneck.
    """

    disp: Tensor
    velocity: Tensor
    embedding: Tensor


class _PyramidLevel(nn.Module):
    """Layers and computation of ONE pyramid level; owns the previous level as ``model_lvl{level-1}``."""

    def __init__(self, level: int, config: dict[str, Any], previous: "_PyramidLevel | None") -> None:
        super().__init__()
        if level not in LEVELS:
            raise ValueError(f"level must be 1, 2 or 3, got {level}")
        if (level == 1) != (previous is None):
            raise ValueError("level 1 has no previous level; levels 2 and 3 need one")
        self.level = level
        self.variant: str = config["variant"]
        self.conditional: bool = config["conditional"]
        self.range_flow: float = config["range_flow"]
        self.ss_steps: int = config["ss_steps"]

        s = config["start_channel"]
        lite = config["lite"]
        enc = 2 * s if lite else 4 * s          # encoder (full-resolution skip) width
        body = 4 * s                            # bottleneck width
        up_out = 2 * s if (lite and level == 3) else 4 * s  # lite level 3 decodes to 2s channels
        head_in = up_out + enc
        # Levels 2 and 3 also see the warped moving image, the fixed image and the upsampled field.
        in_ch = config["in_channel"] + (0 if level == 1 else config["n_classes"])

        self.input_encoder_lvl1 = nn.Sequential(
            Conv3d(in_ch, enc, 3, stride=1, padding=1, bias=False),
            nn.LeakyReLU(0.2),
            Conv3d(enc, enc, 3, stride=1, padding=1, bias=False),
        )
        self.down_conv = Conv3d(enc, body, 3, stride=2, padding=1, bias=False)
        blocks: list[nn.Module] = []
        for _ in range(_N_RESBLOCKS):
            if self.conditional:
                blocks.append(PreActBlockConditional(body, latent_dim=config["latent_dim"],
                                                     mapping_fmaps=config["mapping_fmaps"]))
            else:
                blocks.append(PreActBlock(body))
            # Stateless activations kept as list entries so the block indices (0, 2, 4, 6, 8) match
            # the official state_dict keys ``resblock_group_lvl1.<i>.*``.
            blocks.append(nn.LeakyReLU(0.2))
        self.resblock_group_lvl1 = nn.ModuleList(blocks)
        self.up = nn.ConvTranspose3d(body, up_out, 2, stride=2, padding=0, output_padding=0, bias=False)
        # int(in/2) as officially: the hidden width of the output head is half its input width.
        self.output_lvl1 = nn.Sequential(
            Conv3d(head_in, head_in // 2, 3, stride=1, padding=1, bias=False),
            nn.LeakyReLU(0.2),
            Conv3d(head_in // 2, config["n_classes"], 3, stride=1, padding=1, bias=False),
            nn.Softsign(),
        )
        if previous is not None:
            self.add_module(f"model_lvl{level - 1}", previous)

    # -- helpers -------------------------------------------------------------------------------
    def previous_level(self) -> "_PyramidLevel | None":
        """The owned level ``level - 1`` (``None`` for level 1)."""
        return getattr(self, f"model_lvl{self.level - 1}", None) if self.level > 1 else None

    def own_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Parameters of this level only (θ_level), excluding those of the owned previous levels."""
        skip = f"model_lvl{self.level - 1}."
        return [(n, p) for n, p in self.named_parameters() if not n.startswith(skip)]

    def step(self, moving: Tensor, fixed: Tensor, code: Tensor | None, previous: LevelOutput | None) -> LevelOutput:
        """Compute this level given the previous level's output (``moving``/``fixed`` at this level's size).

        Reproduces the official ``forward`` of ``*_lvl{1,2,3}`` for one level.
        """
        if self.level == 1:
            features_in = torch.cat((moving, fixed), dim=1)
        else:
            assert previous is not None
            disp_up = ops.upsample(previous.disp)
            warped = ops.warp(moving, disp_up)
            # The diff variant feeds (and accumulates) the velocity; the disp variant the displacement.
            field_up = ops.upsample(previous.velocity) if self.variant == "diff" else disp_up
            features_in = torch.cat((warped, fixed, field_up), dim=1)

        fea_e0 = self.input_encoder_lvl1(features_in)
        e0 = self.down_conv(fea_e0)
        if previous is not None:
            e0 = e0 + previous.embedding
        for i, block in enumerate(self.resblock_group_lvl1):
            e0 = block(e0, code) if i % 2 == 0 else block(e0)
        e0 = self.up(e0)
        out = self.output_lvl1(torch.cat([e0, fea_e0], dim=1)) * self.range_flow

        if self.variant == "diff":
            velocity = out if previous is None else out + field_up
            disp = ops.scaling_and_squaring(velocity, self.ss_steps)
        else:
            disp = out if previous is None else disp_up + out
            velocity = disp
        return LevelOutput(disp=disp, velocity=velocity, embedding=e0)

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - levels are driven by LapIRN
        raise RuntimeError("pyramid levels are evaluated through LapIRN.forward(..., level=k)")


class LapIRN(_PyramidLevel):
    """LapIRN (3-level Laplacian pyramid registration network), all official variants in one class.

    Build it from a config dict (see :data:`DEFAULT_CONFIG`) or with :func:`build_model`. The module is
    the level-3 network; ``self.model_lvl2`` is level 2 and ``self.model_lvl2.model_lvl1`` level 1, so
    ``state_dict()`` keys equal the official checkpoint keys.

    Inputs must have every spatial size divisible by 8 (two average-pooling halvings plus one strided
    convolution whose transposed convolution must give back the same size).
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        cfg = normalise_config(config)
        lvl1 = _PyramidLevel(1, cfg, None)
        lvl2 = _PyramidLevel(2, cfg, lvl1)
        super().__init__(3, cfg, lvl2)
        self._config = cfg
        #: Free-form provenance (set by :func:`nioreg.models.load_model`; saved by ``save_model`` callers).
        self.metadata: dict[str, Any] = {}

    @property
    def config(self) -> dict[str, Any]:
        """A copy of the complete configuration (JSON-compatible)."""
        return copy.deepcopy(self._config)

    # -- public API ---------------------------------------------------------------------------
    def levels(self) -> list[_PyramidLevel]:
        """The level modules ``[level1, level2, level3]`` (level 3 is ``self``)."""
        lvl2 = self.model_lvl2
        return [lvl2.model_lvl1, lvl2, self]

    def level_parameters(self, level: int) -> list[nn.Parameter]:
        """Parameters θ_level of pyramid level ``level`` only; levels 1..3 partition ``parameters()``."""
        if level not in LEVELS:
            raise ValueError(f"level must be 1, 2 or 3, got {level!r}")
        return [p for _, p in self.levels()[level - 1].own_named_parameters()]

    def reg_code(self, lam: float | Tensor | None = None, *, reg_code: float | Tensor | None = None,
                 batch: int = 1, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor | None:
        """The conditioning tensor ``(batch, 1)`` for λ (or a direct ``reg_code``); ``None`` if unconditional.

        Raises ``ValueError`` if λ/reg_code is missing for a conditional model, given for an
        unconditional one, or both are given.
        """
        if not self._config["conditional"]:
            if lam is not None or reg_code is not None:
                raise ValueError("this LapIRN is not conditional: lam/reg_code must be None")
            return None
        if lam is not None and reg_code is not None:
            raise ValueError("give either lam or reg_code, not both")
        if lam is None and reg_code is None:
            raise ValueError("this LapIRN is conditional: pass lam (the normalised λ in [0, 1]) or reg_code")
        if lam is not None:
            if isinstance(lam, Tensor):
                lam_t = lam.to(device=device, dtype=dtype)  # keeps autograd, if any
                if bool(((lam_t < 0) | (lam_t > 1) | ~torch.isfinite(lam_t)).any()):
                    raise ValueError(f"lam must lie in [0, 1], got {lam}")
                code = lambda_to_reg_code(lam_t, self._config["lambda_to_code"])
            else:
                lam_f = float(lam)
                if not (0.0 <= lam_f <= 1.0):
                    raise ValueError(f"lam must lie in [0, 1], got {lam}")
                # map in double precision, then round once (reg_code 0.4 from λ=0.8 is then exact)
                code = torch.tensor(lambda_to_reg_code(lam_f, self._config["lambda_to_code"]), device=device, dtype=dtype)
        else:
            code = torch.as_tensor(reg_code, device=device, dtype=dtype)
            if not bool(torch.isfinite(code).all()):
                raise ValueError(f"reg_code must be finite, got {reg_code}")
        assert isinstance(code, Tensor)
        if code.dim() == 0 or code.numel() == 1:
            return code.reshape(1, 1).expand(batch, 1)
        if code.numel() != batch:
            raise ValueError(f"lam/reg_code has {code.numel()} values for a batch of {batch}")
        return code.reshape(batch, 1)

    def pyramid(self, moving: Tensor, fixed: Tensor, *, level: int = 3, lam: float | Tensor | None = None,
                reg_code: float | Tensor | None = None) -> list[LevelOutput]:
        """Run levels ``1..level`` and return every level's :class:`LevelOutput` (official units)."""
        if level not in LEVELS:
            raise ValueError(f"level must be 1, 2 or 3, got {level!r}")
        self._check_inputs(moving, fixed)
        code = self.reg_code(lam, reg_code=reg_code, batch=moving.shape[0], device=moving.device, dtype=moving.dtype)
        # Image pyramid exactly as the official code: level 2 sees one avg-pool halving,
        # level 1 two (the official lvl1 pools the concatenated pair twice: same values).
        mov2, fix2 = ops.downsample(moving), ops.downsample(fixed)
        mov = [ops.downsample(mov2), mov2, moving]
        fix = [ops.downsample(fix2), fix2, fixed]
        outputs: list[LevelOutput] = []
        previous: LevelOutput | None = None
        for k, module in enumerate(self.levels()[:level]):
            previous = module.step(mov[k], fix[k], code, previous)
            outputs.append(previous)
        return outputs

    def forward(self, moving: Tensor, fixed: Tensor, *, level: int = 3, lam: float | Tensor | None = None,
                reg_code: float | Tensor | None = None) -> Tensor:
        """Displacement of pyramid level ``level`` for the pair (moving first, like the official call).

        Args:
            moving, fixed: ``(B, 1, D, H, W)`` tensors, same shape, every spatial size divisible by 8,
                intensities as the model was trained with (official models: roughly ``[0, 1]``).
            level: 1, 2 or 3; the field has spatial size ``(D, H, W) / 2**(3 - level)``.
            lam: normalised λ ∈ [0, 1] (scalar or one per batch element), required by conditional
                models and mapped through ``config["lambda_to_code"]``; must be ``None`` otherwise.
            reg_code: alternative to ``lam`` for conditional models: the raw official conditioning value.

        Returns:
            ``(B, 3, D', H', W')`` displacement in OFFICIAL normalised units and channel order (what
            the official lvl-``level`` model returns in eval mode; after scaling and squaring for
            ``"diff"``). Convert with :func:`nioreg.models.official_to_voxel`.
        """
        return self.pyramid(moving, fixed, level=level, lam=lam, reg_code=reg_code)[-1].disp

    # -- checks -------------------------------------------------------------------------------
    @staticmethod
    def _check_inputs(moving: Tensor, fixed: Tensor) -> None:
        for name, t in (("moving", moving), ("fixed", fixed)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 5 or t.shape[1] != 1:
                raise ValueError(f"{name} must have shape (B, 1, D, H, W), got {tuple(t.shape)}")
            if not t.is_floating_point():
                raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if moving.shape != fixed.shape:
            raise ValueError(f"moving and fixed must have the same shape, got {tuple(moving.shape)} and {tuple(fixed.shape)}")
        bad = [n for n in moving.shape[2:] if n % 8 != 0]
        if bad:
            raise ValueError(
                f"every spatial size must be divisible by 8 for LapIRN, got {tuple(moving.shape[2:])}; pad the images first"
            )

    def extra_repr(self) -> str:
        c = self._config
        return (f"variant={c['variant']}, conditional={c['conditional']}, lite={c['lite']}, "
                f"start_channel={c['start_channel']}, range_flow={c['range_flow']}")


def build_model(variant: str = "disp", start_channel: int = 7, conditional: bool = False, *, lite: bool = False,
                range_flow: float = 0.4, lambda_to_code: str = "identity", **extra: Any) -> LapIRN:
    """A freshly initialised :class:`LapIRN` (PyTorch default init, as the official code).

    ``variant`` is ``"disp"`` or ``"diff"``; further config keys (see :data:`DEFAULT_CONFIG`) can be
    passed as keyword arguments.
    """
    cfg = dict(variant=variant, start_channel=start_channel, conditional=conditional, lite=lite,
               range_flow=range_flow, lambda_to_code=lambda_to_code)
    cfg.update(extra)
    return LapIRN(cfg)
