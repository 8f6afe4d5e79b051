"""Deterministic procedural brain-like phantoms (numpy/scipy only, no downloaded data).

Used by the offline demo (the demo pair is built from a seed), to train the small default model on CPU,
and by the unit tests.

Geometry
--------
Array axes follow the RAS+ affine returned with every phantom (1 mm isotropic, identity rotation, the
volume centred on the world origin): axis 0 runs left -> right, axis 1 posterior -> anterior, axis 2
inferior -> superior. "Left" structures therefore have smaller axis-0 indices than the midline.

All anatomy is defined analytically in a normalised head frame ``p`` (each axis scaled so the volume spans
about [-1, 1]); the same seed gives the same anatomy at any resolution and in either contrast. Per-subject
variation (size, position, a small rotation, a smooth non-linear shape warp, boundary and folding noise) is
scaled by ``anatomy_variation``; with ``anatomy_variation=0`` every seed has the same (template) anatomy and
only the intensities (tissue values, bias field, noise) change.

Construction (:func:`make_brain_phantom`): the random numbers are drawn in one fixed order (anatomy scalars,
:meth:`_Anatomy.draw`; noise lattices, :meth:`_Fields.draw`; intensities last), which is what keeps a seed's
arrays unchanged; then the structures are painted one after another, later ones over earlier ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "LABEL_NAMES",
    "Phantom",
    "make_brain_phantom",
    "make_pair",
    "random_smooth_displacement",
    "warp_numpy",
]

LABEL_NAMES: dict[int, str] = {
    0: "background",
    1: "cortex_frontal_left",
    2: "cortex_frontal_right",
    3: "cortex_parietal_left",
    4: "cortex_parietal_right",
    5: "cortex_temporal_left",
    6: "cortex_temporal_right",
    7: "cortex_occipital_left",
    8: "cortex_occipital_right",
    9: "white_matter_left",
    10: "white_matter_right",
    11: "lateral_ventricle_left",
    12: "lateral_ventricle_right",
    13: "caudate_left",
    14: "caudate_right",
    15: "putamen_left",
    16: "putamen_right",
    17: "thalamus_left",
    18: "thalamus_right",
    19: "cerebellum_left",
    20: "cerebellum_right",
    21: "brainstem",
}

# Tissue classes of the intensity model (not labels).
_BG, _CSF, _GM, _WM, _CAUD, _PUT, _THAL, _BS, _CBGM, _CBWM, _CBSULC = range(11)
_TISSUE_VALUES = {
    #          bg   CSF   GM    WM    caud  put   thal  stem  cbGM  cbWM  cbSulc
    "t1": [0.0, 0.14, 0.48, 0.78, 0.58, 0.62, 0.66, 0.72, 0.50, 0.75, 0.30],
    "t2": [0.0, 0.90, 0.62, 0.36, 0.58, 0.52, 0.48, 0.42, 0.62, 0.40, 0.76],
}

_TEMPLATE_SEED = 20240611  # fixed stream for the template anatomy (anatomy_variation = 0)
_EXTENT = 1.4  # noise lattices cover p in [-_EXTENT, _EXTENT]


@dataclass
class Phantom:
    """A synthetic volume: intensities in [0, 1], an int16 label map, its affine and label names."""

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    label_names: dict[int, str] = field(default_factory=lambda: dict(LABEL_NAMES))


def _centred_affine(shape) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, 3] = -(np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    return affine


def _check_seed(seed) -> int:
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return seed


class _NoiseField:
    """Smooth unit-variance random field of p: a coarse random lattice, cubic-upsampled once, then
    evaluated trilinearly (fast, and visually smooth thanks to the oversampling)."""

    def __init__(self, coarse: np.ndarray, up: int = 4):
        n = coarse.shape[0]
        m = (n - 1) * up + 1
        fine = ndi.zoom(coarse.astype(np.float64), m / n, order=3, mode="nearest")
        fine -= fine.mean()
        fine /= fine.std() + 1e-12
        self.fine = fine.astype(np.float32)
        self.m = m

    def __call__(self, p: np.ndarray) -> np.ndarray:
        q = (p + _EXTENT) * ((self.m - 1) / (2.0 * _EXTENT))
        return ndi.map_coordinates(self.fine, q, order=1, mode="nearest", output=np.float32)


def _lattice(rng_subject, rng_template, n: int, mix: float) -> np.ndarray:
    """Coarse lattice mixing template and subject noise (unit variance for any mix in [0, 1])."""
    subject = rng_subject.standard_normal((n, n, n))
    template = rng_template.standard_normal((n, n, n))
    return np.sqrt(1.0 - mix**2) * template + mix * subject


def _rotation(angles_deg) -> np.ndarray:
    a, b, c = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _ellipsoid(px, py, pz, centre, radii):
    """Normalised ellipsoidal radius (< 1 inside)."""
    return np.sqrt(
        ((px - centre[0]) / radii[0]) ** 2
        + ((py - centre[1]) / radii[1]) ** 2
        + ((pz - centre[2]) / radii[2]) ** 2
    )


@dataclass
class _Anatomy:
    """Per-subject scalar anatomy parameters: the template's, jittered by ``anatomy_variation``."""

    shift: np.ndarray  # volume centre, fraction of the half-extent
    angles: np.ndarray  # degrees about axes 0, 1, 2
    cr_scale: np.ndarray  # cerebrum radii factors
    cr_centre: np.ndarray
    cb_scale: np.ndarray  # cerebellum radii factors
    cb_shift: np.ndarray
    vent_scale: float  # lateral ventricles
    vent_shift: np.ndarray
    nuc_scale: np.ndarray  # putamen, caudate, thalamus
    nuc_shift: np.ndarray
    lobe_cuts: np.ndarray  # frontal, parietal, occipital, temporal boundary angles
    thickness: float  # cortical thickness, fraction of the cerebral radius
    sulc_depth: float
    bs_shift: np.ndarray  # brainstem

    @classmethod
    def draw(cls, rng: np.random.Generator, av: float) -> "_Anatomy":
        """Draw the parameters from ``rng`` (in this fixed order: the same seed gives the same subject)."""

        def jitter(scale, size=None):
            return av * scale * np.clip(rng.standard_normal(size), -2.0, 2.0)

        shift = jitter(0.015, 3)
        angles = jitter(1.0, 3) * np.array([3.0, 2.0, 3.0])
        cr_scale = 1.0 + jitter(0.03, 3)
        cr_centre = np.array([0.0, 0.0, 0.12]) + jitter(0.015, 3) * np.array([0.3, 1.0, 1.0])
        cb_scale = 1.0 + jitter(0.04, 3)
        cb_shift = jitter(0.02, 3) * np.array([0.3, 1.0, 1.0])
        vent_scale = 1.0 + jitter(0.12)
        vent_shift = jitter(0.012, 3)
        nuc_scale = 1.0 + jitter(0.06, 3)
        nuc_shift = jitter(0.012, (3, 3))
        lobe_cuts = np.array([-0.5, 1.45, 2.55, -2.5]) + jitter(0.06, 4)
        thickness = 0.11 * (1.0 + jitter(0.08))
        sulc_depth = 0.24 * (1.0 + jitter(0.1))
        bs_shift = jitter(0.015, 2)
        return cls(shift, angles, cr_scale, cr_centre, cb_scale, cb_shift, vent_scale, vent_shift, nuc_scale,
                   nuc_shift, lobe_cuts, thickness, sulc_depth, bs_shift)


@dataclass
class _Fields:
    """The smooth random fields of one phantom (anatomy: subject/template mix; intensities: subject only)."""

    deform: list[_NoiseField]  # shape warp, one per axis
    boundary: _NoiseField  # brain surface
    sulci: _NoiseField  # zero level set = sulci
    folia: _NoiseField  # sulcal depth, cerebellar folia
    texture: _NoiseField
    bias: _NoiseField

    @classmethod
    def draw(cls, rng: np.random.Generator, rng_template: np.random.Generator, rng_intensity: np.random.Generator,
             mix: float) -> "_Fields":
        """Draw the lattices (after :meth:`_Anatomy.draw`, in this fixed order)."""
        deform = [_NoiseField(rng.standard_normal((5, 5, 5))) for _ in range(3)]
        boundary = _NoiseField(_lattice(rng, rng_template, 7, mix))
        sulci = _NoiseField(_lattice(rng, rng_template, 13, mix))
        folia = _NoiseField(_lattice(rng, rng_template, 9, mix))
        texture = _NoiseField(rng_intensity.standard_normal((21, 21, 21)), up=3)
        bias = _NoiseField(rng_intensity.standard_normal((4, 4, 4)))
        return cls(deform, boundary, sulci, folia, texture, bias)


@dataclass
class _Head:
    """Every voxel in the normalised head frame: ``p`` (3, D, H, W), its hemisphere and midline distance."""

    p: np.ndarray
    half: np.ndarray  # half the volume size per axis, in voxels
    left: np.ndarray  # px < 0
    midline_voxels: np.ndarray  # distance to the midline in voxels

    @classmethod
    def build(cls, shape: tuple[int, int, int], anatomy: _Anatomy, deform: list[_NoiseField], av: float) -> "_Head":
        half = np.asarray(shape, dtype=np.float64) / 2.0
        centre = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0 + anatomy.shift * half
        rot = _rotation(anatomy.angles)
        grids = np.ogrid[: shape[0], : shape[1], : shape[2]]
        rel = [(g - c).astype(np.float32) for g, c in zip(grids, centre)]
        p0 = np.empty((3,) + shape, dtype=np.float32)
        for k in range(3):
            # rotate in voxel (mm) space, then normalise per axis
            p0[k] = (rot[k, 0] * rel[0] + rot[k, 1] * rel[1] + rot[k, 2] * rel[2]) / half[k]
        p = p0
        if av > 0:
            p = p0 + np.stack([(0.03 * av) * f(p0) for f in deform])
        return cls(p, half, p[0] < 0.0, np.abs(p[0]) * half[0])


def _checked_arguments(shape, seed, anatomy_variation, contrast) -> tuple[tuple[int, int, int], int, float, str]:
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be 3-D with every size >= 16, got {shape}")
    contrast = str(contrast).lower()
    if contrast not in _TISSUE_VALUES:
        raise ValueError(f"contrast must be one of {sorted(_TISSUE_VALUES)}, got {contrast!r}")
    seed = _check_seed(seed)
    av = float(anatomy_variation)
    if av < 0:
        raise ValueError("anatomy_variation must be >= 0")
    return shape, seed, av, contrast  # type: ignore[return-value]


def make_brain_phantom(
    shape=(64, 80, 64),
    seed: int = 0,
    *,
    anatomy_variation: float = 1.0,
    contrast: str = "t1",
) -> Phantom:
    """Build a deterministic brain-like phantom.

    Parameters
    ----------
    shape: volume shape (D, H, W) = (left-right, posterior-anterior, inferior-superior); the brain fills it.
    seed: non-negative integer; same seed -> identical arrays.
    anatomy_variation: scale of the per-seed anatomical variation (0 = template anatomy for every seed).
    contrast: ``"t1"`` (WM bright, GM mid, CSF dark) or ``"t2"`` (inverted: CSF bright, WM dark).

    Returns a :class:`Phantom` with ``image`` float32 in [0, 1], ``labels`` int16 (0 = background,
    1..21, see :data:`LABEL_NAMES`) and a 1 mm isotropic RAS affine centring the volume.
    """
    shape, seed, av, contrast = _checked_arguments(shape, seed, anatomy_variation, contrast)
    rng = np.random.default_rng([seed, 1])  # anatomy (scalars, then lattices, fixed order)
    rng_t = np.random.default_rng([_TEMPLATE_SEED, 1])  # template lattices
    rng_i = np.random.default_rng([seed, 2])  # intensities
    anatomy = _Anatomy.draw(rng, av)
    fields = _Fields.draw(rng, rng_t, rng_i, min(av, 1.0))
    head = _Head.build(shape, anatomy, fields.deform, av)

    labels = np.zeros(shape, dtype=np.int16)
    tissue = np.zeros(shape, dtype=np.uint8)
    # Painted in order, later structures over earlier ones
    e_cr, e_cb, cerebrum, cerebellum, brainstem = _paint_envelopes(tissue, head, anatomy, fields.boundary)
    gm, wm, csf_cuts, sulcal_field = _cortex(head, anatomy, e_cr, cerebrum, fields)
    _paint_cortex(labels, tissue, head, anatomy, gm, wm)
    _paint_deep_structures(labels, tissue, head, anatomy, cerebrum & (e_cr < 0.8))
    labels[csf_cuts] = 0  # CSF cuts through the cortex: interhemispheric fissure and sulci
    tissue[csf_cuts] = _CSF
    _paint_cerebellum_and_brainstem(labels, tissue, head, e_cb, cerebellum, brainstem,
                                    np.sin(2 * np.pi * 4.0 * e_cb + 2.0 * fields.folia(head.p) + 2.0 * sulcal_field))
    img = _intensities(tissue, contrast, rng_i, head, fields)
    return Phantom(
        image=img.astype(np.float32, copy=False),
        labels=labels,
        affine=_centred_affine(shape),
        label_names=dict(LABEL_NAMES),
    )


def _paint_envelopes(tissue: np.ndarray, head: _Head, a: _Anatomy, boundary: _NoiseField) -> tuple[np.ndarray, ...]:
    """Cerebrum, cerebellum and brainstem envelopes; paints the CSF rim around them (label 0).

    Returns the normalised radii of the cerebrum and cerebellum ellipsoids (< 1 inside) and the three masks.
    """
    px, py, pz = head.p
    bnd = boundary(head.p)
    e_cr = _ellipsoid(px, py, pz, a.cr_centre, np.array([0.75, 0.80, 0.66]) * a.cr_scale) + 0.035 * bnd
    cb_centre = np.array([0.0, -0.48, -0.50]) + a.cb_shift
    e_cb = _ellipsoid(px, py, pz, cb_centre, np.array([0.50, 0.27, 0.25]) * a.cb_scale) + 0.03 * bnd
    e_bs = np.sqrt((px / 0.13) ** 2 + ((py + 0.10 - a.bs_shift[0]) / 0.12) ** 2)
    brainstem = (e_bs < 1.0) & (pz < -0.12 + a.bs_shift[1]) & (pz > -0.88)
    cerebellum = (e_cb < 1.0) & ~brainstem
    cerebrum = (e_cr < 1.0) & (e_cb >= 1.08) & ~brainstem
    rim = (e_cr < 1.06) | (e_cb < 1.08) | ((e_bs < 1.25) & (pz < -0.05) & (pz > -0.92))
    tissue[rim] = _CSF
    return e_cr, e_cb, cerebrum, cerebellum, brainstem


def _zero_crossings(positive: np.ndarray) -> np.ndarray:
    """One-voxel sheet where ``positive`` changes along any axis (both voxels of each change)."""
    sheet = np.zeros(positive.shape, dtype=bool)
    for k in range(3):
        lo = tuple(slice(None, -1) if j == k else slice(None) for j in range(3))
        hi = tuple(slice(1, None) if j == k else slice(None) for j in range(3))
        sheet[lo] |= positive[lo] & ~positive[hi]
        sheet[hi] |= positive[hi] & ~positive[lo]
    return sheet


def _cortex(head: _Head, a: _Anatomy, e_cr: np.ndarray, cerebrum: np.ndarray,
            fields: _Fields) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cerebral grey and white matter with gyri-like folding: ``(gm, wm, csf_cuts, sulcal_field)``.

    Sulci are thin CSF sheets (the zero level set of a smooth random field) cut into the outer shell of
    the cerebrum, their depth varying smoothly; the white matter keeps a cortical thickness away from both
    the outer surface and every sulcus, so the grey-matter ribbon folds around the sulci. ``csf_cuts`` are
    the sulci and the interhemispheric fissure.
    """
    p = head.p
    px, py, pz = p
    res = float(np.mean(head.half)) / 32.0  # voxels per unit of the 64-voxel reference resolution
    depth = a.sulc_depth * (1.0 + 0.35 * np.clip(fields.folia(p), -2.0, 2.0))
    t_vox = 2.6 * res * a.thickness / 0.11  # cortical thickness in voxels
    w_csf = 0.45 * res - 0.2  # sulcal CSF half-width in voxels beyond the one-voxel sheet
    shell = cerebrum & (e_cr > 1.0 - depth)
    sulcal_field = fields.sulci(p)
    sheet = _zero_crossings(sulcal_field > 0.0) & shell
    d_sulc = ndi.distance_transform_edt(~sheet).astype(np.float32)  # voxels to the nearest sulcus
    cc_span = np.abs(py - 0.02) < 0.40
    above_cc = np.where(cc_span, pz > a.cr_centre[2] + 0.24, pz > -0.30)
    fissure = cerebrum & above_cc & (head.midline_voxels < max(w_csf, 0.0) + 0.6)
    medial_gm = above_cc & (head.midline_voxels < max(w_csf, 0.0) + 0.6 + t_vox)
    sulcal_csf = sheet | (shell & (d_sulc <= w_csf))
    near_sulcus = d_sulc < t_vox + max(w_csf, 0.0) + 0.5
    wm = cerebrum & (e_cr < 1.0 - a.thickness) & ~near_sulcus & ~medial_gm
    gm = cerebrum & ~wm
    return gm, wm, fissure | sulcal_csf, sulcal_field


def _paint_cortex(labels: np.ndarray, tissue: np.ndarray, head: _Head, a: _Anatomy, gm: np.ndarray,
                  wm: np.ndarray) -> None:
    """Grey matter labelled by lobe (angle about the cerebrum's centre) and hemisphere; white matter by hemisphere."""
    _, py, pz = head.p
    phi = np.arctan2(pz - a.cr_centre[2], py - a.cr_centre[1])
    f_cut, p_cut, o_cut, t_cut = a.lobe_cuts
    lobe = np.full(labels.shape, 3, dtype=np.int16)  # occipital by default
    lobe[(phi >= f_cut) & (phi < p_cut)] = 0  # frontal
    lobe[(phi >= p_cut) & (phi < o_cut)] = 1  # parietal
    lobe[(phi >= t_cut) & (phi < f_cut)] = 2  # temporal
    cortex_label = (1 + 2 * lobe + (~head.left)).astype(np.int16)
    labels[gm] = cortex_label[gm]
    tissue[gm] = _GM
    labels[wm] = np.where(head.left, 9, 10)[wm]
    tissue[wm] = _WM


def _paint_deep_structures(labels: np.ndarray, tissue: np.ndarray, head: _Head, a: _Anatomy,
                           deep_region: np.ndarray) -> None:
    """Putamen, caudate, thalamus and lateral ventricle of each side, then the third ventricle (in this order)."""
    px, py, pz = head.p
    for side, lab_off in ((-1.0, 0), (1.0, 1)):
        sel_side = head.left if side < 0 else ~head.left
        # putamen, caudate, thalamus
        specs = [
            (15, _PUT, (0.34, 0.08, 0.00), (0.075, 0.22, 0.15), 0),
            (13, _CAUD, (0.22, 0.20, 0.12), (0.075, 0.20, 0.12), 1),
            (17, _THAL, (0.11, -0.14, -0.03), (0.10, 0.17, 0.12), 2),
        ]
        for lab, tis, c, r, i in specs:
            cc = np.array([side * c[0], c[1], c[2]]) + a.nuc_shift[i] * np.array([side, 1.0, 1.0])
            m = deep_region & sel_side & (_ellipsoid(px, py, pz, cc, np.array(r) * a.nuc_scale[i]) < 1.0)
            labels[m] = lab + lab_off
            tissue[m] = tis
        # lateral ventricle: a banana curving down at both ends, anterior horns closer to the midline
        vy = py - (0.02 + a.vent_shift[1])
        vx = px - side * (0.12 + a.vent_shift[0] - 0.06 * vy)
        vz = pz - (0.18 + a.vent_shift[2] - 0.45 * vy**2)
        e_v = np.sqrt((vx / (0.085 * a.vent_scale)) ** 2 + (vy / 0.42) ** 2 + (vz / (0.11 * a.vent_scale)) ** 2)
        m = deep_region & sel_side & (e_v < 1.0)
        labels[m] = 11 + lab_off
        tissue[m] = _CSF
    third_ventricle = deep_region & (head.midline_voxels < 0.7) & (np.abs(py + 0.12) < 0.14) & (np.abs(pz) < 0.1)
    labels[third_ventricle] = 0
    tissue[third_ventricle] = _CSF


def _paint_cerebellum_and_brainstem(labels: np.ndarray, tissue: np.ndarray, head: _Head, e_cb: np.ndarray,
                                    cerebellum: np.ndarray, brainstem: np.ndarray, folia: np.ndarray) -> None:
    """Cerebellar grey matter with folia (sulci where ``folia`` is high) around white matter; the brainstem."""
    cb_wm = cerebellum & (e_cb < 0.45 + 0.06 * folia)
    labels[cerebellum] = np.where(head.left, 19, 20)[cerebellum]
    tissue[cerebellum] = _CBGM
    tissue[cerebellum & (folia > 0.6) & (e_cb > 0.55)] = _CBSULC
    tissue[cb_wm] = _CBWM
    labels[brainstem] = 21
    tissue[brainstem] = _BS


def _intensities(tissue: np.ndarray, contrast: str, rng_i: np.random.Generator, head: _Head,
                 fields: _Fields) -> np.ndarray:
    """Image of the tissue map: jittered tissue values, partial volume, texture, bias field, noise; in [0, 1]."""
    values = np.asarray(_TISSUE_VALUES[contrast], dtype=np.float32)
    values[1:] *= (1.0 + 0.03 * np.clip(rng_i.standard_normal(len(values) - 1), -2, 2)).astype(np.float32)
    img = values[tissue]
    img = ndi.gaussian_filter(img, 0.6, mode="nearest")  # partial volume
    img *= 1.0 + 0.04 * fields.texture(head.p)
    img *= np.exp(0.06 * fields.bias(head.p)).astype(np.float32)
    img += 0.015 * rng_i.standard_normal(tissue.shape, dtype=np.float32)
    np.abs(img, out=img)
    np.clip(img, 0.0, 1.0, out=img)
    return img


def random_smooth_displacement(shape, seed: int = 0, max_voxels: float = 4.0, smoothness: float = 8.0) -> np.ndarray:
    """Random smooth displacement field, float32 ``(3, D, H, W)`` in voxels, channel k along array axis k.

    Gaussian-filtered (sigma = ``smoothness`` voxels) white noise, scaled so that the largest vector norm is
    exactly ``max_voxels``. With the defaults (ratio max_voxels / smoothness = 0.5) the Jacobian determinant of
    ``x -> x + u(x)`` stays well above 0; much larger ratios can fold.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3:
        raise ValueError(f"shape must be 3-D, got {shape}")
    rng = np.random.default_rng([_check_seed(seed), 3])
    disp = np.empty((3,) + shape, dtype=np.float32)
    for k in range(3):
        noise = rng.standard_normal(shape, dtype=np.float32)
        disp[k] = ndi.gaussian_filter(noise, float(smoothness), mode="reflect")
    norm_max = float(np.sqrt((disp**2).sum(axis=0)).max())
    if norm_max > 0:
        disp *= np.float32(max_voxels / norm_max)
    return disp


def warp_numpy(image, disp, order: int = 1) -> np.ndarray:
    """Reference pull warp: ``out[x] = image[x + disp[:, x]]`` (voxel units, channel k along axis k).

    ``scipy.ndimage.map_coordinates`` with ``mode="nearest"`` (border values outside, like the torch warp).
    Use ``order=0`` for label maps (the output keeps the input dtype); otherwise a float array is returned.
    """
    image = np.asarray(image)
    disp = np.asarray(disp)
    if image.ndim != 3 or disp.shape != (3,) + image.shape:
        raise ValueError(f"expected image (D,H,W) and disp (3,D,H,W), got {image.shape} and {disp.shape}")
    coords = np.indices(image.shape, dtype=np.float64) + disp
    if order == 0:
        out_dtype = image.dtype
    else:
        out_dtype = np.float64 if image.dtype == np.float64 else np.float32
    return ndi.map_coordinates(image, coords, order=order, mode="nearest", output=out_dtype)


def make_pair(
    shape=(64, 80, 64),
    seed: int = 0,
    *,
    contrast_moving: str = "t1",
    contrast_fixed: str = "t1",
    max_voxels: float = 4.0,
) -> tuple[Phantom, Phantom]:
    """Return ``(fixed, moving)``.

    ``fixed`` is subject ``make_brain_phantom(shape, 2 * seed)``; ``moving`` is a different subject
    (seed ``2 * seed + 1``) additionally pulled through ``random_smooth_displacement(shape, seed, max_voxels)``
    (image trilinear, labels nearest), so a registration has real work to do. Both share the same grid/affine.
    """
    seed = _check_seed(seed)
    fixed = make_brain_phantom(shape, 2 * seed, contrast=contrast_fixed)
    subject = make_brain_phantom(shape, 2 * seed + 1, contrast=contrast_moving)
    disp = random_smooth_displacement(shape, seed=seed, max_voxels=max_voxels)
    moving = Phantom(
        image=np.clip(warp_numpy(subject.image, disp, order=1), 0.0, 1.0).astype(np.float32),
        labels=warp_numpy(subject.labels, disp, order=0),
        affine=subject.affine,
        label_names=subject.label_names,
    )
    return fixed, moving
