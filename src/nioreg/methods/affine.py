"""Affine registration in world coordinates: moments initialisation, then rigid and affine, coarse to fine.

The result is a 4x4 matrix mapping **fixed-image world points to moving-image world points** (RAS+ mm), the
pull direction: ``warped(p) = moving(T p)``. Both images keep their own grids and headers; each level
resamples them (anti-aliased) to an isotropic spacing and the moving one is sampled through
``inv(M) T F`` (``F``, ``M`` the level affines) by ``grid_sample``, so the loss is differentiable in ``T``.

1. **Initialisation** from intensity moments (foreground above 10 % of the robust range): the centres of
   mass give the translation; the principal axes give 24 candidate proper rotations (every axis pairing and
   sign choice with determinant +1), which are scored with the identity rotation by the similarity at the
   coarsest level. This recovers large rotations and a header with two flipped axes (LPS read as RAS:
   a 180° turn); a single mirrored axis is a reflection and is never returned (the transform stays proper).
2. **Rigid** (rotation vector + translation about the fixed centre of mass) at the coarsest level, then
   **affine** (12 parameters) at every level, each stage through :func:`nioreg.methods.loop.run_stage` (Adam,
   best iterate, divergence safeguards).
3. The final transform is compared with the initial one at the finest level and never returned worse.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..io.errors import InputError
from ..io.preprocess import Preprocessing
from ..io.resample import resample_to
from ..io.volume import Volume
from ..losses.similarity import parse_similarity
from ..spatial import identity_grid, sample
from .loop import OptimisationLog, Safeguards, run_stage

__all__ = ["AffineResult", "register_affine", "resample_through_affine", "moments_candidates"]

Similarity = Callable[[Tensor, Tensor], Tensor]
FOREGROUND = 0.1
"""Foreground threshold on the [0, 1]-scaled images (moments, overlap check): above 10 % of the robust range."""
TRANSLATION_UNIT_MM = 50.0
"""Translation parameters are in units of 50 mm, so one Adam step (about ``lr``) moves as far in mm (0.5 mm at
lr 0.01) as it turns in centiradians: both kinds of parameter then converge at the same pace."""
MIN_OVERLAP = 0.01
STARTS = 3
"""The first (coarsest) stage runs from this many of the best-scoring moments candidates, and from the
identity rotation, and keeps the lowest loss: with anisotropic scaling the principal axes can swap, and the
candidate that scores best before any optimisation can lead into a wrong basin (LPBA40 S11 moved by the
shifted-LPBA40 benchmark's affine did)."""
MIN_LEVEL_VOXELS = 16
"""A level of the affine pyramid is never coarser than 16 voxels along the fixed image's shortest axis."""
SUPPORT = 0.01
"""The similarity is computed on the box around the fixed voxels above 1 % of the range (plus a margin): where
the fixed image is constant, LNCC has no gradient, so the empty border of a skull-stripped or padded image only
costs time (on the 256³ OASIS pair the 2 mm level shrinks from 128³ to 78×80×97 voxels)."""


class PreparedSimilarity:
    """A registered similarity (``lncc``, ``mind:dilation=1``: :func:`~nioreg.losses.parse_similarity`) as
    ``similarity(fixed, warped)``, the fixed image's part (LNCC's window
    statistics, MIND descriptors...) computed once per level image instead of at every iteration. LNCC's
    window shrinks to fit a level smaller than 7 voxels along an axis."""

    def __init__(self, name: str = "lncc") -> None:
        self.measure = parse_similarity(name)  # an unknown name or parameter fails here, before any work
        self.bound: dict[int, tuple] = {}  # id(fixed) -> (fixed, measure, prepared); holding fixed keeps ids unique

    def _bind(self, fixed: Tensor) -> tuple:
        measure = self.measure.fitted(fixed.shape[2:])
        return fixed, measure, measure.prepare(fixed)

    def __call__(self, fixed: Tensor, warped: Tensor) -> Tensor:
        if id(fixed) not in self.bound:
            self.bound[id(fixed)] = self._bind(fixed)
        _, measure, prepared = self.bound[id(fixed)]
        return measure(prepared, warped)


@dataclass
class AffineResult:
    """A fixed-world -> moving-world affine (RAS+ mm) and how it was found."""

    matrix: np.ndarray
    initial_matrix: np.ndarray
    initial_loss: float
    final_loss: float
    log: OptimisationLog
    seconds: float
    initialisation: dict = field(default_factory=dict)

    @property
    def iterations(self) -> int:
        return sum(1 for row in self.log.curve if row["stage"] != "initialisation") - len(self.log.stage_seconds)

    def summary(self) -> dict:
        """JSON-ready: the matrix, where it started, losses, iterations, time and how it was initialised."""
        return {"matrix_fixed_to_moving_ras": self.matrix.tolist(), "initial_matrix_ras": self.initial_matrix.tolist(),
                "loss_initial": self.initial_loss, "loss_final": self.final_loss, "iterations": self.iterations,
                "seconds": self.seconds, "initialisation": self.initialisation}

    @property
    def loss_curve(self) -> list[dict]:
        return self.log.curve

    def resample(self, moving: Volume, fixed: Volume, *, order: int = 1) -> Volume:
        """The moving image (``order=1``) or label map (``order=0``) on the fixed grid through this affine."""
        return resample_through_affine(moving, fixed, self.matrix, order=order)

    def target_affine(self, fixed: Volume) -> np.ndarray:
        """The ``target_affine`` for ``nioreg.io.save_itk_displacement`` after a deformable stage on the result.

        The deformable field ``u`` runs on the fixed grid against :meth:`resample`'s output, so fixed voxel
        ``x`` ends at ``x + u(x)`` on the fixed grid, then in the world (``F``), then through the affine:
        the combined transform is "affine after displacement", ``T F (x + u(x))``.
        """
        return self.matrix @ fixed.affine


def resample_through_affine(moving: Volume, fixed: Volume, matrix: np.ndarray, *, order: int = 1) -> Volume:
    """Resample ``moving`` onto ``fixed``'s grid through a fixed-world -> moving-world affine: ``moving(T p)``.

    Giving the moving array the header ``inv(T) M`` places it in the fixed world; the usual header-based
    resampling (:func:`nioreg.io.resample_to`) then does the rest, for images and label maps alike.
    """
    placed = Volume(moving.array, np.linalg.solve(np.asarray(matrix, dtype=np.float64), moving.affine), path=moving.path)
    return resample_to(placed, fixed, order=order)


# ----------------------------------------------------------------------------------------------- levels


@dataclass
class _Level:
    spacing: float
    fixed: Tensor  # (1, 1, D, H, W) in [0, 1]
    moving: Tensor
    fixed_affine: Tensor  # float64 4x4
    moving_affine_inv: Tensor
    grid: Tensor  # (1, 3, D, H, W) float64 voxel indices of the fixed level grid


def _names(fixed: Volume, moving: Volume) -> str:
    def name(role: str, v: Volume) -> str:
        return f"{role} '{v.path}'" if v.path is not None else f"{role} (in memory)"

    return f"{name('fixed image', fixed)} and {name('moving image', moving)}"


def _level(fixed: Volume, moving: Volume, spacing: float, device: torch.device) -> _Level:
    prep = Preprocessing(spacing=(spacing,) * 3)
    f = _crop_to_support(prep.image(fixed, name=f"fixed image '{fixed.path}'"), margin=4)
    m = prep.image(moving, name=f"moving image '{moving.path}'")

    def tensor(v: Volume) -> Tensor:
        return torch.as_tensor(np.ascontiguousarray(v.array), dtype=torch.float32, device=device)[None, None]

    as64 = dict(dtype=torch.float64, device=device)
    return _Level(spacing, tensor(f), tensor(m), torch.as_tensor(f.affine, **as64),
                  torch.as_tensor(np.linalg.inv(m.affine), **as64), identity_grid(f.shape, device, torch.float64))


def _crop_to_support(volume: Volume, margin: int) -> Volume:
    """``volume`` cut to the box of its voxels above :data:`SUPPORT` grown by ``margin`` voxels (LNCC's window
    radius is 3), its affine moved with the box; the whole volume when nothing is above it."""
    inside = np.nonzero(volume.array > SUPPORT)
    if not inside[0].size:
        return volume
    low = [max(int(i.min()) - margin, 0) for i in inside]
    high = [min(int(i.max()) + margin + 1, n) for i, n in zip(inside, volume.shape)]
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, :3] @ np.array(low, dtype=np.float64) + volume.affine[:3, 3]
    box = tuple(slice(lo, hi) for lo, hi in zip(low, high))
    return Volume(np.ascontiguousarray(volume.array[box]), affine, volume.path)


def _warp(level: _Level, matrix: Tensor) -> Tensor:
    """The level's moving image sampled at ``inv(M) T F x`` for every fixed level voxel ``x`` (zeros outside)."""
    to_moving = level.moving_affine_inv @ matrix @ level.fixed_affine
    positions = torch.einsum("ij,bj...->bi...", to_moving[:3, :3], level.grid) + to_moving[:3, 3].view(1, 3, 1, 1, 1)
    return sample(level.moving, positions.float(), padding_mode="zeros")


def _spacings(levels: tuple[float, ...], fixed: Volume, moving: Volume) -> list[float]:
    finest = max(min(fixed.spacing), min(moving.spacing))  # never finer than the images themselves
    extent = min(n * d for n, d in zip(fixed.shape, fixed.spacing))  # mm along the fixed image's shortest axis
    coarsest = max(finest, extent / MIN_LEVEL_VOXELS)  # a level keeps at least MIN_LEVEL_VOXELS along every axis
    out: list[float] = []
    for s in sorted((min(max(float(s), finest), coarsest) for s in levels), reverse=True):
        if not out or s < out[-1] - 1e-6:
            out.append(s)
    return out


# ----------------------------------------------------------------------------------------------- moments


def _moments(image: Tensor, affine: Tensor) -> tuple[np.ndarray, np.ndarray] | None:
    """Centre of mass and covariance (world mm) of the foreground intensities; None when there is none."""
    array = image[0, 0].double().cpu().numpy()
    weights = np.where(array > FOREGROUND, array, 0.0)
    total = weights.sum()
    if not total > 0:
        return None
    idx = np.nonzero(weights)
    w = weights[idx] / total
    a = affine.cpu().numpy()
    world = np.stack(idx, axis=1).astype(np.float64) @ a[:3, :3].T + a[:3, 3]
    centre = w @ world
    centred = world - centre
    return centre, (centred * w[:, None]).T @ centred


def moments_candidates(fixed_moments, moving_moments) -> list[np.ndarray]:
    """Fixed-world -> moving-world rigid matrices matching the centres of mass: the identity rotation first,
    then the 24 proper rotations taking the fixed principal axes onto the moving ones (any pairing, any signs)."""
    (cf, cov_f), (cm, cov_m) = fixed_moments, moving_moments
    axes_f, axes_m = np.linalg.eigh(cov_f)[1], np.linalg.eigh(cov_m)[1]
    rotations = [np.eye(3)]
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            r = axes_m[:, perm] @ np.diag(signs) @ axes_f.T
            if np.linalg.det(r) > 0:
                rotations.append(r)
    out = []
    for r in rotations:
        m = np.eye(4)
        m[:3, :3] = r
        m[:3, 3] = cm - r @ cf
        out.append(m)
    return out


# ----------------------------------------------------------------------------------------------- optimisation


def _rotation(rotvec: Tensor) -> Tensor:
    """Rotation matrix of a rotation vector (radians): the exponential of its skew matrix (smooth at 0)."""
    zero = rotvec.new_zeros(())
    x, y, z = rotvec
    skew = torch.stack([torch.stack([zero, -z, y]), torch.stack([z, zero, -x]), torch.stack([-y, x, zero])])
    return torch.linalg.matrix_exp(skew)


def _increment(kind: str, params: list[Tensor], centre: Tensor) -> Tensor:
    """4x4 fixed-world update about the fixed centre of mass: ``p -> c + L (p - c) + t``."""
    linear = _rotation(params[0]) if kind == "rigid" else torch.eye(3, dtype=centre.dtype, device=centre.device) + params[0]
    translation = params[1] * TRANSLATION_UNIT_MM
    top = torch.cat([linear, (centre + translation - linear @ centre)[:, None]], dim=1)
    return torch.cat([top, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=centre.dtype, device=centre.device)])


@dataclass
class _Problem:
    levels: list[_Level]
    similarity: Similarity
    centre: Tensor
    log: OptimisationLog
    safeguards: Safeguards | None

    def loss(self, level: _Level, matrix: np.ndarray) -> float:
        with torch.no_grad():
            return float(self.similarity(level.fixed, _warp(level, self._tensor(matrix))))

    def _tensor(self, matrix: np.ndarray) -> Tensor:
        return torch.as_tensor(matrix, dtype=torch.float64, device=self.centre.device)

    def stage(self, level: _Level, base: np.ndarray, kind: str, iterations: int, lr: float,
              label: str = "") -> np.ndarray:
        """One Adam stage (rigid: 6 parameters, affine: 12) on ``level`` starting from ``base``."""
        options = dict(dtype=torch.float64, device=self.centre.device)
        first = torch.zeros(3 if kind == "rigid" else (3, 3), **options)
        params = [first.requires_grad_(), torch.zeros(3, **options).requires_grad_()]
        base_t = self._tensor(base)

        def objective(warped: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            loss = self.similarity(level.fixed, warped)
            return loss, loss, torch.zeros_like(loss)

        run_stage(f"{kind} {level.spacing:g} mm{label}", params,
                  lambda: _warp(level, base_t @ _increment(kind, params, self.centre)),
                  objective, iterations, lr, self.log, self.safeguards)
        with torch.no_grad():
            return (base_t @ _increment(kind, params, self.centre)).cpu().numpy()

    def overlap(self, level: _Level, matrix: np.ndarray) -> float:
        """Fraction of the fixed foreground that the moving foreground covers through ``matrix``."""
        with torch.no_grad():
            fixed_fg = level.fixed > FOREGROUND
            both = fixed_fg & (_warp(level, self._tensor(matrix)) > FOREGROUND)
            return float(both.sum()) / max(float(fixed_fg.sum()), 1.0)


def _initialise(problem: _Problem, fixed: Volume, moving: Volume,
                initialisation: str | np.ndarray) -> tuple[list[np.ndarray], dict]:
    """The starting matrices (the best by the similarity at the coarsest level first), and what was tried."""
    finest = problem.levels[-1]
    fixed_moments = _moments(finest.fixed, finest.fixed_affine)
    moving_moments = _moments(finest.moving, torch.linalg.inv(finest.moving_affine_inv))
    for which, found in (("fixed", fixed_moments), ("moving", moving_moments)):
        if found is None:
            raise InputError(f"{_names(fixed, moving)}: the {which} image has no foreground (nothing above 10 % "
                             "of its intensity range after masking); nothing to align")
    problem.centre = torch.as_tensor(fixed_moments[0], dtype=torch.float64, device=problem.centre.device)
    if isinstance(initialisation, np.ndarray):
        candidates = [initialisation]
    else:
        candidates = moments_candidates(fixed_moments, moving_moments) if initialisation == "moments" else [np.eye(4)]
    losses = [problem.loss(problem.levels[0], m) for m in candidates]
    for i, value in enumerate(losses):
        problem.log.record("initialisation", i, value, value, 0.0, 0.0)
    order = [int(i) for i in np.argsort(losses)]
    best = order[0]
    starts = sorted(set(order[:STARTS]) | {0}, key=order.index)  # 0: the identity rotation (or the one given)
    method = "given" if isinstance(initialisation, np.ndarray) else initialisation
    overlap = problem.overlap(finest, candidates[best])
    if overlap < MIN_OVERLAP:
        raise InputError(f"{_names(fixed, moving)}: the images do not overlap after the {method} "
                         f"initialisation ({100 * overlap:.1f} % of the fixed foreground is covered by the moving "
                         "one); check both headers (origin, orientation) or use initialisation='moments'")
    info = {"method": method, "candidates": len(candidates), "best_scored": best, "starts": starts,
            "fixed_centre_mm": fixed_moments[0].tolist(), "moving_centre_mm": moving_moments[0].tolist(),
            "overlap": overlap}
    return [candidates[i] for i in starts], info


def _best_start(problem: _Problem, starts: list[np.ndarray], info: dict, rigid_iterations: int,
                affine_iterations: int, lr: float) -> tuple[np.ndarray, np.ndarray]:
    """Run the first stage at the coarsest level (rigid, or affine without rigid) from every start; returns
    (the start, the stage's result) with the lowest loss, and records which in ``info["chosen"]``."""
    level = problem.levels[0]
    kind, iterations = ("rigid", rigid_iterations) if rigid_iterations > 0 else ("affine", affine_iterations)
    results = []
    for number, start in enumerate(starts):
        label = f" (start {number})" if len(starts) > 1 else ""
        found = problem.stage(level, start, kind, iterations, lr, label) if iterations > 0 else start
        results.append((problem.loss(level, found), number, found))
    _, number, found = min(results, key=lambda r: r[0])
    info["chosen"] = info["starts"][number]
    return starts[number], found


def register_affine(
    fixed: Volume,
    moving: Volume,
    *,
    levels: tuple[float, ...] = (4.0, 2.0),
    rigid_iterations: int = 100,
    affine_iterations: int = 100,
    lr: float = 0.01,
    similarity: Similarity | None = None,
    initialisation: str | np.ndarray = "moments",
    device: str | torch.device = "cpu",
    safeguards: Safeguards | None = None,
) -> AffineResult:
    """Affinely register ``moving`` to ``fixed`` in world coordinates; see the module docstring.

    ``levels``: isotropic spacings (mm) from coarse to fine, never finer than the images. Rigid runs at the
    coarsest level, affine at every level (``lr`` halves per level). ``similarity(fixed, warped)`` is a loss
    on (1, 1, D, H, W) images in [0, 1] (default LNCC). ``initialisation``: ``"moments"`` (centres of mass and
    principal axes), ``"headers"`` (identity: trust the headers) or a 4x4 fixed-world -> moving-world matrix
    (e.g. an affine from another tool, :func:`nioreg.io.transforms.load_itk_affine`). Raises :class:`InputError` naming both
    files when an image has no foreground or the images do not overlap after initialisation.
    """
    if isinstance(initialisation, np.ndarray):
        initialisation = np.asarray(initialisation, dtype=np.float64).reshape(4, 4)
    elif initialisation not in ("moments", "headers"):
        raise ValueError(f"initialisation must be 'moments' or 'headers', got {initialisation!r}")
    started = time.perf_counter()
    device = torch.device(device)
    levels_ = [_level(fixed, moving, s, device) for s in _spacings(tuple(levels), fixed, moving)]
    centre = torch.zeros(3, dtype=torch.float64, device=device)  # set by the initialisation
    problem = _Problem(levels_, similarity or PreparedSimilarity("lncc"), centre, OptimisationLog(), safeguards)
    starts, info = _initialise(problem, fixed, moving, initialisation)
    initial, current = _best_start(problem, starts, info, rigid_iterations, affine_iterations, lr)
    for index, level in enumerate(levels_):
        first_was_affine = index == 0 and rigid_iterations == 0  # it ran from every start already
        if affine_iterations > 0 and not first_was_affine:
            current = problem.stage(level, current, "affine", affine_iterations, lr * 0.5**index)
    initial_loss, final_loss = problem.loss(levels_[-1], initial), problem.loss(levels_[-1], current)
    if not final_loss <= initial_loss:  # also catches NaN
        problem.log.event("final", 0, "kept initialisation",
                          f"final loss {final_loss:.5f} is not below the initial {initial_loss:.5f}")
        current, final_loss = initial, initial_loss
    return AffineResult(current, initial, initial_loss, final_loss, problem.log, time.perf_counter() - started, info)
