"""Benchmark and accuracy check of LNCC box-filter implementations (forward + backward w.r.t. warped).

    python benchmarks/bench_lncc.py [--threads 2] [--repeats 5] [--sizes 80x96x80,160x192x160]
                                    [--data ../shared/data] [--skip-dense-large]

Timing: min / median of ``--repeats`` runs of ``loss = lncc(F, M); loss.backward()`` (M requires grad, F does not)
with window 7, on ``--threads`` CPU threads. Accuracy: loss and gradient against a float64 reference of the
official LapIRN formula (window *sums*, zero padding, 7³) on images with exactly constant regions:

* ``blob``      smooth blob on an exactly 0 background,
* ``plat01``    [0,1] image with constant plateaus at 0 and at 1,
* ``plat37``    the same mapped to [0.3, 0.7] (plateaus not exactly representable in binary),
* ``half07``    textured fixed image; warped follows it on one half and is exactly 0.7 on the other (windows with
                var_warped = 0 next to large var_fixed: the worst case for cancellation),
* ``real``      LPBA40 S01 vs S02 (only with --data, e.g. ../shared/data), at each benchmark size,

each ``M`` = moving warped by a smooth random field (trilinear, border padding), so it has near-constant
regions too. The reference box filter is a float64 separable ``conv3d`` with ones kernels (mathematically identical
to the dense 7³ convolution; the dense float64 convolution is too slow/memory-hungry at these sizes — the unit
tests compare against the dense one on small volumes). Intensities are of order 1 (nioreg scales to [0, 1]); with
raw intensities (e.g. CT units) the official formula's absolute eps makes even float64 unreliable in constant
windows (nioreg.lncc warns). Gradient errors are reported as
``max|g − g_ref| / max|g_ref|`` and ``||g|| / ||g_ref||`` (a spike shows as a ratio ≫ 1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import nioreg.losses._lncc_kernel as kernel
from nioreg.losses import lncc, prepare_fixed

W = 7


# ------------------------------------------------------------------------------------------- box filters (sums)
def _pad_axis(x, ax, before, after):
    p = [0] * 6
    i = 2 * (4 - ax)
    p[i], p[i + 1] = before, after
    return F.pad(x, p)


def box_dense(x, w):
    return F.conv3d(x, torch.ones((1, 1, w, w, w), dtype=x.dtype), padding=w // 2)


def box_sepconv(x, w):
    r = w // 2
    for ks, pd in (((w, 1, 1), (r, 0, 0)), ((1, w, 1), (0, r, 0)), ((1, 1, w), (0, 0, r))):
        x = F.conv3d(x, torch.ones((1, 1) + ks, dtype=x.dtype), padding=pd)
    return x


def box_avgpool(x, w):
    r = w // 2
    x = F.avg_pool3d(x, (w, 1, 1), 1, (r, 0, 0), count_include_pad=True)
    x = F.avg_pool3d(x, (1, w, 1), 1, (0, r, 0), count_include_pad=True)
    return F.avg_pool3d(x, (1, 1, w), 1, (0, 0, r), count_include_pad=True) * float(w**3)


def box_cumsum(x, w):
    r = w // 2
    for ax in (2, 3, 4):
        c = _pad_axis(x, ax, r + 1, r).cumsum(ax)
        n = c.shape[ax]
        x = c.narrow(ax, w, n - w) - c.narrow(ax, 0, n - w)
    return x


def box_mean_cumsum(x, w):  # mean-unit cumsum box for plugging into the nioreg kernel
    return box_cumsum(x, w) / float(w**3)


def lncc_autograd(I, J, box, dtype, clamp, w=W, eps=1e-5):
    """Official LapIRN NCC formula on window sums, plain autograd, box filter and precision as given."""
    I, J = I.to(dtype), J.to(dtype)
    n = w**3
    x = torch.cat([I, J, I * I, J * J, I * J], 1)
    s = box(x.reshape((-1, 1) + x.shape[2:]), w).reshape(x.shape)  # conv boxes want one channel
    sI, sJ, sII, sJJ, sIJ = (s[:, k : k + 1] for k in range(5))
    cross = sIJ - sI * sJ / n
    vI, vJ = sII - sI * sI / n, sJJ - sJ * sJ / n
    if clamp:
        vI, vJ = vI.clamp_min(0), vJ.clamp_min(0)
    return -(cross * cross / (vI * vJ + eps)).mean()


def with_box(box_mean_fn):
    """nioreg.lncc with its float64 box filter swapped (forward and backward; applied by fwd_bwd)."""

    def run(I, J):
        return lncc(I, J, window=W)

    run.box_mean = box_mean_fn
    return run


f32, f64 = torch.float32, torch.float64
IMPLS = {
    "dense_conv32 (official form)": lambda I, J: lncc_autograd(I, J, box_dense, f32, False),
    "sep_conv32": lambda I, J: lncc_autograd(I, J, box_sepconv, f32, True),
    "sep_avgpool32": lambda I, J: lncc_autograd(I, J, box_avgpool, f32, True),
    "cumsum32": lambda I, J: lncc_autograd(I, J, box_cumsum, f32, True),
    "cumsum64": lambda I, J: lncc_autograd(I, J, box_cumsum, f64, True),
    "sep_avgpool64": lambda I, J: lncc_autograd(I, J, box_avgpool, f64, True),
    "nioreg custom-bwd, cumsum64 box": with_box(box_mean_cumsum),
    "nioreg custom-bwd, avgpool64 box": with_box(kernel.box_mean_pooled),
    "nioreg.lncc (custom-bwd, shifted-sum64 box)": lambda I, J: lncc(I, J, window=W),
    "nioreg.lncc prepared fixed": None,  # filled per image (needs the fixed image)
}


# ------------------------------------------------------------------------------------------------ test images
def _smooth_noise(shape, g, channels=2, factor=4):
    n = torch.randn((channels, 1) + tuple(max(2, s // factor) for s in shape), generator=g, dtype=f64)
    return F.interpolate(n, size=shape, mode="trilinear", align_corners=True)


def blob_pair(shape, g):
    z = [torch.linspace(-1, 1, n, dtype=f64) for n in shape]
    Z, Y, X = torch.meshgrid(*z, indexing="ij")

    def blob(cz, cy, sz, sy, sx):
        b = torch.exp(-2 * (((Z - cz) / sz) ** 2 + ((Y - cy) / sy) ** 2 + (X / sx) ** 2))
        return torch.where(b < 1e-2, torch.zeros_like(b), b)[None, None]  # exactly 0 background

    return blob(0, 0, 0.4, 0.3, 0.35), blob(0.05, -0.04, 0.42, 0.3, 0.33)


def plateau_pair(shape, g):
    n = (_smooth_noise(shape, g) * 2.0 + 0.5).clamp(0, 1)  # exact plateaus at 0 and 1
    return n[0:1], n[1:2]


def real_pair(shape, data: Path):
    import nibabel as nib
    import numpy as np

    a = nib.load(data / "lpba40/images/S01.nii.gz").get_fdata()
    b = nib.load(data / "lpba40/images/S02.nii.gz").get_fdata()
    t = torch.from_numpy(np.stack([a, b]))[:, None].to(f64)
    if tuple(t.shape[2:]) != tuple(shape):
        t = F.interpolate(t, size=shape, mode="trilinear", align_corners=True)
    return t[0:1], t[1:2]


def warp_random(m, g, amp=2.0):
    shape = m.shape[2:]
    d = torch.randn((1, 3) + tuple(max(2, s // 16) for s in shape), generator=g, dtype=f64) * amp
    d = F.interpolate(d, size=shape, mode="trilinear", align_corners=True)
    idx = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=f64) for n in shape], indexing="ij"), 0)[None] + d
    grid = torch.stack([2 * idx[:, k] / (shape[k] - 1) - 1 for k in range(3)], -1).flip(-1)
    return F.grid_sample(m, grid, mode="bilinear", padding_mode="border", align_corners=True)


def image_sets(shape, g, data):
    sets = {}
    f, m = blob_pair(shape, g)
    sets["blob"] = (f, warp_random(m, g))
    f, m = plateau_pair(shape, g)
    mw = warp_random(m, g)
    sets["plat01"] = (f, mw)
    sets["plat37"] = (0.3 + 0.4 * f, 0.3 + 0.4 * mw)
    f = torch.rand((1, 1) + tuple(shape), generator=g, dtype=f64)
    m = 0.5 * f + 0.1 * torch.rand((1, 1) + tuple(shape), generator=g, dtype=f64)
    m[..., shape[0] // 2 :, :, :] = 0.7
    sets["half07"] = (f, m)
    if data is not None:
        f, m = real_pair(shape, data)
        sets["real"] = (f, warp_random(m, g))
    return sets


# ------------------------------------------------------------------------------------------------------- main
def fwd_bwd(fn, I, J):
    Jr = J.detach().clone().requires_grad_()
    old = kernel.box_mean
    kernel.box_mean = getattr(fn, "box_mean", old)
    try:
        loss = fn(I, Jr)
        loss.backward()
    finally:
        kernel.box_mean = old
    return loss.detach(), Jr.grad


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", default="80x96x80,160x192x160")
    ap.add_argument("--data", type=Path, default=None, help="folder with lpba40/images (e.g. ../shared/data)")
    ap.add_argument("--skip-dense-large", action="store_true", help="skip dense conv at sizes > 1e6 voxels")
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--no-timing", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, window {W}", flush=True)

    if not args.no_timing:
        g = torch.Generator().manual_seed(0)
        for shape in sizes:
            f, m = plateau_pair(shape, g)
            I, J = f.float(), warp_random(m, g).float()
            impls = dict(IMPLS)
            prepared = prepare_fixed(I, W)
            impls["nioreg.lncc prepared fixed"] = lambda _I, Jr: lncc(prepared, Jr, window=W)
            large = torch.Size(shape).numel() > 1e6
            times = {k: [] for k in impls}
            for rep in range(args.repeats):  # interleaved, so load changes hit all implementations alike
                for name, fn in impls.items():
                    slow = name.startswith(("dense", "sep_conv"))
                    if slow and large and (args.skip_dense_large or rep >= 2):
                        continue
                    t0 = time.perf_counter()
                    fwd_bwd(fn, I, J)
                    times[name].append(time.perf_counter() - t0)
            print(f"\n== timing {'x'.join(map(str, shape))} (float32 inputs; s per forward+backward) ==")
            for name, ts in times.items():
                if ts:
                    print(f"  {name:38s} min {min(ts):7.3f}  median {statistics.median(ts):7.3f}  (n={len(ts)})")
            t_prep = []
            for _ in range(3):
                t0 = time.perf_counter()
                prepare_fixed(I, W)
                t_prep.append(time.perf_counter() - t0)
            print(f"  {'(prepare_fixed, once per pair)':38s} min {min(t_prep):7.3f}")

    if not args.no_accuracy:
        g = torch.Generator().manual_seed(1)
        for shape in sizes:
            print(f"\n== accuracy {'x'.join(map(str, shape))} vs float64 reference (official formula, sums) ==")
            print(f"  {'image':7s} {'implementation':38s} {'|dloss|':>9s} {'max|dg|/max|g|':>15s} {'|g|/|g_ref|':>12s}")
            for iname, (f, m) in image_sets(shape, g, args.data).items():
                l_ref, g_ref = fwd_bwd(lambda I, J: lncc_autograd(I, J, box_sepconv, f64, False), f, m)
                I32, J32 = f.float(), m.float()
                impls = dict(IMPLS)
                prepared = prepare_fixed(I32, W)
                impls["nioreg.lncc prepared fixed"] = lambda _I, Jr: lncc(prepared, Jr, window=W)
                for name, fn in impls.items():
                    if name.startswith("dense") and torch.Size(shape).numel() > 1e6:
                        continue
                    loss, grad = fwd_bwd(fn, I32, J32)
                    grad = grad.double()
                    err = ((grad - g_ref).abs().max() / g_ref.abs().max()).item()
                    ratio = (grad.norm() / g_ref.norm()).item()
                    print(f"  {iname:7s} {name:38s} {abs(loss.item() - l_ref.item()):9.2e} {err:15.2e} {ratio:12.4f}")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
