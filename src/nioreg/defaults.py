"""Defaults that several layers share, kept free of heavy imports (the command line reads them at start-up)."""

DEFAULT_LAMBDA: float = 0.4
"""λ of the objective (1 − λ)·LNCC + λ·diffusion: the paper's value for training and for instance optimisation."""
