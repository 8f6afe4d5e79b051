"""Defaults that several layers share, kept free of heavy imports (the command line reads them at start-up)."""

DEFAULT_LAMBDA: float = 0.4
"""λ of the objective (1 − λ)·LNCC + λ·diffusion: the paper's value for training and for instance optimisation."""

CONTRAST_PRESETS: dict[str, dict] = {
    "same": {"similarity": "lncc", "lam": DEFAULT_LAMBDA, "match_contrast": False},
    "different": {"similarity": "mind", "lam": DEFAULT_LAMBDA, "match_contrast": True},
}
"""The objective by how the moving image's contrast relates to the fixed one's (``--contrast``):
``same`` is the paper's (LNCC, λ = 0.4, the network sees the moving image as it is); ``different`` (a T2 or
FLAIR moving image onto a T1 atlas, with a network trained on T1) is MIND-SSC, the best measure of
``benchmarks/bench_contrast_shift.py``, at the same λ (its scale keeps λ's meaning; λ = 0.2 gained nothing on
held-out pairs), with the network's input mapped onto the fixed image's contrast (``match_contrast``:
:mod:`nioreg.methods.contrast`), which took NIO_m on FLAIR-like brains from 0.008 below to level with T1 → T1
feed-forward there (T2-like: from 0.029 to 0.010 below; BENCHMARKS.md, "Contrast shift")."""
