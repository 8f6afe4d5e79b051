"""Tests of nioreg.losses: exact values, a dense-convolution reference of the official LapIRN formulas (loss AND
gradient, on images with exactly constant backgrounds), gradcheck, masks, prepared fixed images, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nioreg.losses import (
    REGULARISER_SCALE,
    LNCC,
    Diffusion,
    PreparedFixed,
    RegistrationLoss,
    diffusion,
    lncc,
    prepare_fixed,
    registration_loss,
)

f32, f64 = torch.float32, torch.float64
from conftest import SHARED  # ../shared or $NIOREG_SHARED


# ------------------------------------------------------------------------------------------------ references
def ref_cc_map(I, J, win=7, eps=1e-5):
    """The official LapIRN ``NCC.forward`` (cwmok/LapIRN, Code/miccai2020_model_stage.py) before its mean:
    dense conv3d with a ones kernel, zero padding, window sums, no clamping."""
    weight = torch.ones((1, 1, win, win, win), dtype=I.dtype)
    pad = win // 2
    I_sum = F.conv3d(I, weight, padding=pad)
    J_sum = F.conv3d(J, weight, padding=pad)
    I2_sum = F.conv3d(I * I, weight, padding=pad)
    J2_sum = F.conv3d(J * J, weight, padding=pad)
    IJ_sum = F.conv3d(I * J, weight, padding=pad)
    n = win**3
    u_I, u_J = I_sum / n, J_sum / n
    cross = IJ_sum - u_J * I_sum - u_I * J_sum + u_I * u_J * n
    I_var = I2_sum - 2 * u_I * I_sum + u_I * u_I * n
    J_var = J2_sum - 2 * u_J * J_sum + u_J * u_J * n
    return cross * cross / (I_var * J_var + eps)


def ref_lncc(I, J, win=7, eps=1e-5):
    return -ref_cc_map(I, J, win, eps).mean()


def ref_smoothloss(y_pred):
    """The official LapIRN ``smoothloss``."""
    dy = torch.abs(y_pred[:, :, 1:, :, :] - y_pred[:, :, :-1, :, :])
    dx = torch.abs(y_pred[:, :, :, 1:, :] - y_pred[:, :, :, :-1, :])
    dz = torch.abs(y_pred[:, :, :, :, 1:] - y_pred[:, :, :, :, :-1])
    return (torch.mean(dx * dx) + torch.mean(dy * dy) + torch.mean(dz * dz)) / 3.0


def grads(fn, *tensors):
    """Value of fn(*tensors) and its gradient w.r.t. every tensor (fresh leaves)."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    gs = torch.autograd.grad(out, leaves)
    return out.detach(), gs


def rel_max(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


# ---------------------------------------------------------------------------------------------- test images
SHAPE = (22, 26, 20)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _smooth(shape, g, channels=2, factor=4):
    n = torch.randn((channels, 1) + tuple(max(2, s // factor) for s in shape), generator=g, dtype=f64)
    return F.interpolate(n, size=shape, mode="trilinear", align_corners=True)


def _warp_random(m, g, amp=1.5):
    shape = m.shape[2:]
    d = torch.randn((1, 3) + tuple(max(2, s // 8) for s in shape), generator=g, dtype=f64) * amp
    d = F.interpolate(d, size=shape, mode="trilinear", align_corners=True)
    idx = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=f64) for n in shape], indexing="ij"), 0)[None] + d
    grid = torch.stack([2 * idx[:, k] / (shape[k] - 1) - 1 for k in range(3)], -1).flip(-1)
    return F.grid_sample(m, grid, mode="bilinear", padding_mode="border", align_corners=True)


def blob_pair(shape=SHAPE, seed=0):
    """Smooth blob on an exactly 0 background; moving = shifted blob, warped by a smooth random field."""
    z = [torch.linspace(-1, 1, n, dtype=f64) for n in shape]
    Z, Y, X = torch.meshgrid(*z, indexing="ij")

    def blob(cz, cy):
        b = torch.exp(-2.5 * (((Z - cz) / 0.45) ** 2 + ((Y - cy) / 0.4) ** 2 + (X / 0.4) ** 2))
        return torch.where(b < 2e-2, torch.zeros_like(b), b)[None, None]

    return blob(0.0, 0.0), _warp_random(blob(0.08, -0.05), _gen(seed))


def plateau_pair(shape=SHAPE, seed=0, low=0.0, high=1.0):
    """[0,1] images with exact plateaus at 0 and 1 (mapped to [low, high])."""
    g = _gen(seed)
    n = (_smooth(shape, g) * 2.0 + 0.5).clamp(0, 1)
    f, m = n[0:1], _warp_random(n[1:2], g)
    return low + (high - low) * f, low + (high - low) * m


def half_plateau_pair(shape=SHAPE, seed=0, level=0.7):
    """Textured fixed image; warped follows it on one half and is exactly constant (level) on the other, so
    half the windows have var_warped = 0 next to a large var_fixed: the worst case for cancellation."""
    g = _gen(seed)
    f = torch.rand((1, 1) + shape, generator=g, dtype=f64)
    m = 0.5 * f + 0.1 * torch.rand((1, 1) + shape, generator=g, dtype=f64)
    m[..., shape[0] // 2 :, :, :] = level
    return f, m


IMAGE_CASES = {
    "blob_on_zero": lambda: blob_pair(),
    "plateaus_0_1": lambda: plateau_pair(),
    "plateaus_0.3_0.7": lambda: plateau_pair(low=0.3, high=0.7),
    "half_plateau_0.7": lambda: half_plateau_pair(),
    "half_plateau_0.3": lambda: half_plateau_pair(level=0.3),
}


# --------------------------------------------------------------------------------- reference: values, grads
@pytest.mark.parametrize("window", [1, 3, 5, 7, 9])
@pytest.mark.parametrize("shape", [(6, 7, 5), (12, 9, 10)])  # also smaller than the window along an axis
@pytest.mark.parametrize("slab_elements", [None, 1, 20000])  # one slab; one slice per slab; a few slices per slab
def test_both_box_filters_equal_the_dense_box(window, shape, slab_elements, monkeypatch):
    from nioreg.losses import _lncc_kernel
    from nioreg.losses._lncc_kernel import box_mean, box_mean_pooled, box_mean_shifted

    if slab_elements is not None:
        monkeypatch.setattr(_lncc_kernel, "SLAB_ELEMENTS", slab_elements)

    x = torch.rand((2, 3) + shape, generator=_gen(window), dtype=f64)
    x[:, :, : shape[0] // 2] = 0.0  # a block of exact zeros stays exactly 0 away from its edge
    ones = torch.ones(3, 1, window, window, window, dtype=f64)
    dense = F.conv3d(x, ones, padding=window // 2, groups=3) / window**3
    pooled_fits = min(shape) >= window  # avg_pool3d refuses a kernel longer than the image
    for box in (box_mean, box_mean_shifted) + ((box_mean_pooled,) if pooled_fits else ()):
        torch.testing.assert_close(box(x, window), dense, rtol=0, atol=1e-15)
    interior = box_mean_shifted(x, window)[:, :, : max(shape[0] // 2 - window // 2, 0)]
    assert torch.count_nonzero(interior) == 0


@pytest.mark.parametrize("window", [3, 5, 7])
@pytest.mark.parametrize("eps", [1e-5, 1e-8])
def test_matches_dense_reference_float64(window, eps):
    g = _gen(window)
    I = torch.rand((2, 1) + SHAPE, generator=g, dtype=f64)
    J = 0.6 * I + 0.4 * torch.rand((2, 1) + SHAPE, generator=g, dtype=f64)
    ours, (gI, gJ) = grads(lambda a, b: lncc(a, b, window=window, eps=eps), I, J)
    ref, (rI, rJ) = grads(lambda a, b: ref_lncc(a, b, window, eps), I, J)
    assert ours.dtype == f64
    assert abs(ours.item() - ref.item()) < 1e-10
    assert rel_max(gJ, rJ) < 1e-10
    assert rel_max(gI, rI) < 1e-10


def test_matches_dense_reference_float32():
    g = _gen(3)
    I = torch.rand((1, 1) + SHAPE, generator=g, dtype=f32)
    J = (0.7 * I + 0.3 * torch.rand((1, 1) + SHAPE, generator=g, dtype=f32)).to(f32)
    ours, (gI, gJ) = grads(lncc, I, J)
    ref, (rI, rJ) = grads(ref_lncc, I.double(), J.double())  # float64 reference on the same float32 values
    assert ours.dtype == f32 and gI.dtype == f32 and gJ.dtype == f32
    assert abs(ours.item() - ref.item()) < 1e-6
    assert rel_max(gJ, rJ) < 1e-6
    assert rel_max(gI, rI) < 1e-6


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_gradient_matches_reference_on_constant_backgrounds(case):
    """The failure seen before: float32 box sums → wrong (spiking) gradients where windows are constant.
    Our float32-input gradient must match a float64 dense reference everywhere, not only the loss."""
    fixed, warped = IMAGE_CASES[case]()
    I32, J32 = fixed.float(), warped.float()
    ref, (r,) = grads(lambda b: ref_lncc(I32.double(), b), J32.double())
    ours, (gJ,) = grads(lambda b: lncc(I32, b), J32)
    assert torch.isfinite(gJ).all()
    assert abs(ours.item() - ref.item()) < 1e-6
    assert rel_max(gJ, r) < 1e-5  # observed ~1e-7 (float32 rounding of the gradient itself)
    ratio = (gJ.double().norm() / r.norm()).item()
    assert abs(ratio - 1) < 1e-6
    # and w.r.t. the fixed image
    _, (rI,) = grads(lambda a: ref_lncc(a, J32.double()), I32.double())
    _, (gI,) = grads(lambda a: lncc(a, J32), I32)
    assert rel_max(gI, rI) < 1e-5


def test_reference_is_sensitive_to_float32_cancellation():
    """Sanity check of the test above: the official formula evaluated in float32 (dense conv, the "exact box
    filter") is already far off on the half-plateau images, so matching the float64 reference is meaningful."""
    fixed, warped = IMAGE_CASES["half_plateau_0.7"]()
    _, (r,) = grads(lambda b: ref_lncc(fixed, b), warped)
    _, (g32,) = grads(lambda b: ref_lncc(fixed.float(), b), warped.float())
    assert rel_max(g32, r) > 0.05  # observed 0.33
    _, (g,) = grads(lambda b: lncc(fixed.float(), b), warped.float())
    assert rel_max(g, r) < 1e-5


def test_warns_on_large_intensities():
    x = torch.rand((1, 1, 8, 8, 8))
    with pytest.warns(RuntimeWarning, match="scale the images to"):
        lncc(255 * x, x, window=3)
    with pytest.warns(RuntimeWarning, match="intensities reach 99"):
        lncc(prepare_fixed(x, 3), 1000 * x, window=3)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lncc(x, x, window=3)


def test_gradcheck_float64():
    g = _gen(7)
    I = torch.rand((2, 1, 5, 6, 7), generator=g, dtype=f64, requires_grad=True)
    J = torch.rand((2, 1, 5, 6, 7), generator=g, dtype=f64, requires_grad=True)
    w = torch.rand((1, 1, 5, 6, 7), generator=g, dtype=f64)
    assert torch.autograd.gradcheck(lambda a, b: lncc(a, b, window=3), (I, J))
    assert torch.autograd.gradcheck(lambda a, b: lncc(a, b, window=5, mask=w), (I, J))
    prepared = prepare_fixed(I.detach(), window=3)
    assert torch.autograd.gradcheck(lambda b: lncc(prepared, b, window=3), (J,))
    disp = torch.rand((1, 3, 4, 5, 6), generator=g, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(diffusion, (disp,))


def test_gradcheck_with_constant_regions():
    """Zero-variance windows (constant 0 and 1 blocks) keep cc = 0 and a smooth, correct gradient."""
    I = torch.zeros((1, 1, 7, 7, 7), dtype=f64)
    I[..., 4:, :, :] = 1.0
    I[..., 2, 3, 3] = 0.5
    J = I.clone()
    J[..., 3:5, 2:5, 1:4] += 0.1 * torch.rand((1, 1, 2, 3, 3), generator=_gen(1), dtype=f64)
    assert torch.autograd.gradcheck(
        lambda a, b: lncc(a, b, window=3), (I.requires_grad_(), J.requires_grad_()), atol=1e-6
    )


# ------------------------------------------------------------------------------------------------ exact values
def _spike(a, at=(1, 1, 1), shape=(3, 3, 3)):
    x = torch.zeros((1, 1) + shape, dtype=f64)
    x[(0, 0) + at] = a
    return x


def _constant_image_expected(c, shape, win, eps):
    """lncc(c, c) for a constant image: cc = V²/(V²+eps), V = c²(k − k²/N), k = in-volume voxels of the window."""
    r = win // 2
    counts = []
    for n in shape:
        i = np.arange(n)
        counts.append(np.minimum(i + r, n - 1) - np.maximum(i - r, 0) + 1)
    k = counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :]
    N = win**3
    V = c * c * (k - k * k / N)
    return -float(np.mean(V * V / (V * V + eps)))


EPS = 1e-5
# a single voxel of height a in a 3³ volume, window 3: every window holds the whole volume, so
# V = a²(1 − 1/27) = 26a²/27 everywhere; with V² = eps, cc = 1/2 exactly.
A_HALF = math.sqrt(27.0 / 26.0 * math.sqrt(EPS))

EXACT_CASES = [
    # (id, fixed, warped, window, mask, expected)
    ("spike_cc_one_half", _spike(A_HALF), _spike(A_HALF), 3, None, -0.5),
    ("spike_vs_minus_spike", _spike(A_HALF), _spike(-A_HALF), 3, None, -0.5),  # squared form: sign-blind
    ("big_spike_almost_minus_one", _spike(1.0), _spike(1.0), 3, None, -(26 / 27) ** 2 / ((26 / 27) ** 2 + EPS)),
    # spikes at the centre and at a corner, only the centre window counted (mask): S_IJ = 0, so
    # cross = −1/27, V_I = V_J = 26/27 → cc = (1/27²) / ((26/27)² + eps) = 1 / (676 + 729 eps)
    ("hand_two_spikes_masked", _spike(1.0), _spike(1.0, at=(0, 0, 0)), 3, _spike(1.0) > 0, -1 / (676 + 729 * EPS)),
    ("zero_images", torch.zeros((1, 1, 5, 5, 5), dtype=f64), torch.zeros((1, 1, 5, 5, 5), dtype=f64), 3, None, 0.0),
    (
        "constant_one_border_only",
        torch.ones((1, 1, 9, 8, 7), dtype=f64),
        torch.ones((1, 1, 9, 8, 7), dtype=f64),
        3,
        None,
        _constant_image_expected(1.0, (9, 8, 7), 3, EPS),
    ),
    (
        "constant_0.3_win5",
        torch.full((1, 1, 9, 8, 7), 0.3, dtype=f64),
        torch.full((1, 1, 9, 8, 7), 0.3, dtype=f64),
        5,
        None,
        _constant_image_expected(0.3, (9, 8, 7), 5, EPS),
    ),
]


@pytest.mark.parametrize("case", EXACT_CASES, ids=[c[0] for c in EXACT_CASES])
def test_exact_values(case):
    _, fixed, warped, window, mask, expected = case
    assert lncc(fixed, warped, window=window, mask=mask).item() == pytest.approx(expected, abs=1e-12, rel=1e-12)


def test_constant_interior_has_zero_cc():
    """Interior windows of a constant image have zero variance → cc = 0 (not −1): mask the interior."""
    x = torch.full((1, 1, 11, 11, 11), 0.7, dtype=f64)
    interior = torch.zeros_like(x, dtype=torch.bool)
    interior[..., 3:-3, 3:-3, 3:-3] = True
    assert abs(lncc(x, x, window=7, mask=interior).item()) < 1e-18  # 0.7 is inexact: round-off only
    ones = torch.ones_like(x)
    assert lncc(ones, ones, window=7, mask=interior).item() == 0.0  # exact arithmetic, exact 0
    # a constant warped against a textured fixed image: zero in the interior as well
    t = torch.rand(x.shape, generator=_gen(2), dtype=f64)
    assert abs(lncc(t, x, window=7, mask=interior).item()) < 1e-20


def test_identical_textured_images_close_to_minus_one():
    x = torch.rand((1, 1, 16, 16, 16), generator=_gen(4), dtype=f64)
    expected = (-ref_cc_map(x, x).mean()).item()
    assert lncc(x, x).item() == pytest.approx(expected, abs=1e-12)
    assert -1.0 < lncc(x, x).item() < -1.0 + 1e-6
    assert lncc(x, -x).item() == pytest.approx(lncc(x, x).item(), abs=1e-12)


def test_range_and_batch_mean():
    g = _gen(5)
    I = torch.rand((3, 1, 10, 11, 12), generator=g, dtype=f64)
    J = torch.rand((3, 1, 10, 11, 12), generator=g, dtype=f64)
    value = lncc(I, J, window=5).item()
    assert -1.0 <= value <= 0.0
    per_sample = [lncc(I[b : b + 1], J[b : b + 1], window=5).item() for b in range(3)]
    assert value == pytest.approx(sum(per_sample) / 3, abs=1e-14)


def test_output_dtypes_and_no_grad():
    x = torch.rand((1, 1, 8, 8, 8))
    assert lncc(x, x, window=3).dtype == f32
    assert lncc(x, x.double(), window=3).dtype == f64
    with torch.no_grad():
        assert lncc(x.requires_grad_(), x, window=3).requires_grad is False


# ----------------------------------------------------------------------------------------------------- masks
def test_mask_semantics():
    g = _gen(6)
    I = torch.rand((2, 1, 10, 9, 8), generator=g, dtype=f64)
    J = torch.rand((2, 1, 10, 9, 8), generator=g, dtype=f64)
    cc = ref_cc_map(I, J, 5)
    full = lncc(I, J, window=5).item()
    assert lncc(I, J, window=5, mask=torch.ones_like(I, dtype=torch.bool)).item() == pytest.approx(full, abs=1e-14)
    assert lncc(I, J, window=5, mask=torch.full_like(I, 3.0)).item() == pytest.approx(full, abs=1e-14)
    region = torch.zeros((1, 1, 10, 9, 8), dtype=torch.bool)
    region[..., 2:7, 1:5, 3:8] = True  # broadcast over the batch
    expected = -cc[region.expand_as(cc)].mean().item()
    assert lncc(I, J, window=5, mask=region).item() == pytest.approx(expected, abs=1e-12)
    assert lncc(I, J, window=5, mask=region.double()).item() == pytest.approx(expected, abs=1e-12)
    weights = torch.rand((2, 1, 10, 9, 8), generator=g, dtype=f64)
    assert lncc(I, J, window=5, mask=weights).item() == pytest.approx(
        -(cc * weights).sum().item() / weights.sum().item(), abs=1e-12
    )
    # the mask only selects voxels where cc is averaged: outside voxels still enter the windows
    _, (gJ,) = grads(lambda b: lncc(I, b, window=5, mask=region), J)
    _, (rJ,) = grads(lambda b: -ref_cc_map(I, b, 5)[region.expand(2, -1, -1, -1, -1)].mean(), J)
    assert rel_max(gJ, rJ) < 1e-10


@pytest.mark.parametrize(
    "mask, message",
    [
        (torch.zeros((1, 1, 8, 8, 8), dtype=torch.bool), "mask selects no voxel"),
        (-torch.ones((1, 1, 8, 8, 8)), "negative values"),
        (torch.ones((1, 1, 8, 8, 7)), r"mask has shape \(1,1,8,8,7\) but the images are \(2,1,8,8,8\)"),
        (torch.ones((8, 8, 8)), r"mask must be \(B,1,D,H,W\) or \(1,1,D,H,W\)"),
        (np.ones((1, 1, 8, 8, 8)), "mask must be a torch.Tensor"),
    ],
)
def test_mask_errors(mask, message):
    x = torch.rand((2, 1, 8, 8, 8))
    with pytest.raises((ValueError, TypeError), match=message):
        lncc(x, x, window=3, mask=mask)


# -------------------------------------------------------------------------------------------- prepared fixed
def test_prepared_fixed_equals_direct_and_module_cache():
    fixed, warped = blob_pair()
    I, J = fixed.float(), warped.float()
    direct, (g_direct,) = grads(lambda b: lncc(I, b), J)
    prepared = prepare_fixed(I)
    assert isinstance(prepared, PreparedFixed) and prepared.window == 7
    value, (g_prep,) = grads(lambda b: lncc(prepared, b), J)
    assert value.item() == direct.item()
    assert torch.equal(g_prep, g_direct)

    module = LNCC()
    module.prepare(I)
    assert module._resolve(I) is module._prepared  # the same tensor object reuses the cache
    assert module._resolve(I.clone()) is not module._prepared
    assert module(I, J).item() == direct.item()
    I.add_(0.25)  # an in-place change invalidates the cache
    assert module._resolve(I) is I
    assert module(I, J).item() == pytest.approx(lncc(I, J).item(), abs=1e-7)
    module.clear()
    assert module._prepared is None


def test_prepared_fixed_errors():
    x = torch.rand((1, 1, 9, 9, 9))
    with pytest.raises(ValueError, match="fixed requires grad"):
        prepare_fixed(x.clone().requires_grad_())
    prepared = prepare_fixed(x, window=5)
    with pytest.raises(ValueError, match="prepared with window=5 but window=7"):
        lncc(prepared, x)
    with pytest.raises(ValueError, match=r"fixed has shape \(1,1,9,9,9\) but warped has \(2,1,9,9,9\)"):
        lncc(prepared, torch.rand((2, 1, 9, 9, 9)), window=5)


# ------------------------------------------------------------------------------------------------- diffusion
def test_diffusion_constant_and_affine():
    shape = (1, 3, 6, 7, 8)
    assert diffusion(torch.full(shape, 2.5)).item() == 0.0
    A = torch.tensor([[0.1, -0.2, 0.3], [0.05, 0.0, -0.1], [0.2, 0.15, -0.25]], dtype=f64)
    idx = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=f64) for n in shape[2:]], indexing="ij"), 0)
    shift = torch.tensor([1.0, -2.0, 3.0], dtype=f64)[None, :, None, None, None]
    disp = torch.einsum("ck,kdhw->cdhw", A, idx)[None] + shift
    assert diffusion(disp).item() == pytest.approx((A**2).sum().item() / 9, rel=1e-12)
    # one channel varying along one axis: u_0 = a·i  →  a²/9
    lin = torch.zeros(shape, dtype=f64)
    lin[:, 0] = 0.3 * idx[0]
    assert diffusion(lin).item() == pytest.approx(0.09 / 9, rel=1e-12)


def test_diffusion_matches_official_smoothloss():
    disp = torch.randn((2, 3, 5, 6, 7), generator=_gen(8), dtype=f64)
    assert diffusion(disp).item() == pytest.approx(ref_smoothloss(disp).item(), rel=1e-14)
    assert Diffusion()(disp).item() == diffusion(disp).item()


@pytest.mark.parametrize(
    "disp, exc, message",
    [
        (torch.zeros((3, 4, 4, 4)), ValueError, r"disp has shape \(3,4,4,4\).*add a batch dimension"),
        (torch.zeros((1, 2, 4, 4, 4)), ValueError, r"must be \(B,3,D,H,W\)"),
        (torch.zeros((1, 3, 4, 1, 4)), ValueError, "at least 2 voxels"),
        (torch.zeros((1, 3, 4, 4, 4), dtype=torch.int64), TypeError, "floating-point"),
        ([0.0], TypeError, "disp must be a torch.Tensor"),
    ],
)
def test_diffusion_errors(disp, exc, message):
    with pytest.raises(exc, match=message):
        diffusion(disp)


# ------------------------------------------------------------------------------------------------- objective
@pytest.mark.parametrize("lam", [0.0, 0.4, 1.0])
def test_registration_loss_combination(lam):
    g = _gen(9)
    I = torch.rand((1, 1, 9, 10, 11), generator=g)
    J = torch.rand((1, 1, 9, 10, 11), generator=g)
    disp = torch.randn((1, 3, 9, 10, 11), generator=g)
    total, sim, reg = registration_loss(I, J, disp, lam=lam, window=5)
    assert sim.item() == lncc(I, J, window=5).item()
    # the regulariser is reported in the official half-voxel units: 4x the voxel-unit diffusion
    assert reg.item() == pytest.approx(REGULARISER_SCALE * diffusion(disp).item(), rel=1e-6)
    assert REGULARISER_SCALE == 4.0
    assert total.item() == pytest.approx((1 - lam) * sim.item() + lam * reg.item(), rel=1e-6, abs=1e-7)
    module_out = RegistrationLoss(lam=lam, window=5)(I, J, disp)
    assert [t.item() for t in module_out] == [total.item(), sim.item(), reg.item()]


def test_registration_loss_module_prepare_and_mask():
    fixed, warped = blob_pair()
    I, J = fixed.float(), warped.float()
    disp = torch.zeros((1, 3) + SHAPE, requires_grad=True)
    mask = I > 0
    loss = RegistrationLoss()
    expected = registration_loss(I, J, disp, mask=mask)
    loss.prepare(I)
    got = loss(I, J, disp, mask=mask)
    assert [t.item() for t in got] == [t.item() for t in expected]
    got[0].backward()  # differentiable w.r.t. disp through the regulariser
    assert disp.grad is not None
    loss.clear()


@pytest.mark.parametrize(
    "lam, exc, message",
    [
        (-0.1, ValueError, r"lam must be in \[0, 1\]"),
        (1.5, ValueError, r"lam must be in \[0, 1\]"),
        (float("nan"), ValueError, r"lam must be in \[0, 1\]"),
        (True, TypeError, "lam must be a float"),
        ("0.4", TypeError, "lam must be a float"),
    ],
)
def test_registration_loss_lam_errors(lam, exc, message):
    x = torch.rand((1, 1, 8, 8, 8))
    with pytest.raises(exc, match=message):
        registration_loss(x, x, torch.zeros((1, 3, 8, 8, 8)), lam=lam, window=3)
    with pytest.raises(exc, match=message):
        RegistrationLoss(lam=lam)


def test_registration_loss_disp_shape_error():
    x = torch.rand((1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match=r"disp has shape \(1,3,8,8,7\) but warped has \(1,1,8,8,8\)"):
        registration_loss(x, x, torch.zeros((1, 3, 8, 8, 7)), window=3)


# ---------------------------------------------------------------------------------------------- lncc errors
_X = torch.rand((1, 1, 8, 8, 8))


@pytest.mark.parametrize(
    "fixed, warped, kwargs, exc, message",
    [
        (
            torch.rand((1, 2, 8, 8, 8)),
            _X,
            {},
            ValueError,
            r"lncc: fixed has shape \(1,2,8,8,8\) but warped has \(1,1,8,8,8\); both must be \(B,1,D,H,W\)",
        ),
        (_X, torch.rand((1, 1, 8, 8, 9)), {}, ValueError, r"but warped has \(1,1,8,8,9\)"),
        (_X[0, 0], _X[0, 0], {}, ValueError, r"add batch and channel dimensions"),
        (_X[0], _X[0], {}, ValueError, r"add a batch dimension"),
        (_X, _X, {"window": 6}, ValueError, "window must be an odd integer >= 1"),
        (_X, _X, {"window": 0}, ValueError, "window must be an odd integer >= 1"),
        (_X, _X, {"window": 9}, ValueError, r"window=9 is larger than the smallest spatial size 8"),
        (_X, _X, {"window": 7.0}, TypeError, "window must be an int"),
        (_X, _X, {"eps": 0.0}, ValueError, "eps must be a finite number > 0"),
        (_X, _X, {"eps": float("inf")}, ValueError, "eps must be a finite number > 0"),
        (_X.numpy(), _X, {}, TypeError, "lncc: fixed must be a torch.Tensor, got numpy.ndarray"),
        (_X, (_X * 10).long(), {}, TypeError, "lncc: warped has dtype torch.int64"),
        (_X, _X.to("meta"), {}, ValueError, "fixed is on cpu but warped is on meta"),
    ],
)
def test_lncc_errors(fixed, warped, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        lncc(fixed, warped, **kwargs)


def test_module_construction_errors():
    with pytest.raises(ValueError, match="window must be an odd integer"):
        LNCC(window=4)
    with pytest.raises(ValueError, match="eps must be"):
        LNCC(eps=-1.0)
    assert "window=7" in repr(LNCC())


# ------------------------------------------------------------------------------------------- real brains
LPBA = SHARED / "data" / "lpba40" / "images"


@pytest.mark.shared
@pytest.mark.skipif(not (LPBA / "S02.nii.gz").is_file(), reason="shared data (../shared/data/lpba40) not available")
def test_gradient_matches_reference_on_real_brains():
    import nibabel as nib

    vols = [nib.load(LPBA / f"S0{k}.nii.gz").get_fdata() for k in (1, 2)]
    t = torch.from_numpy(np.stack(vols))[:, None].to(f64)
    t = F.interpolate(t, size=(40, 48, 40), mode="trilinear", align_corners=True)  # keeps the exact-0 background
    I32, J32 = t[0:1].float(), _warp_random(t[1:2], _gen(10)).float()
    ref, (r,) = grads(lambda b: ref_lncc(I32.double(), b), J32.double())
    ours, (gJ,) = grads(lambda b: lncc(I32, b), J32)
    assert abs(ours.item() - ref.item()) < 1e-6
    assert rel_max(gJ, r) < 1e-5
