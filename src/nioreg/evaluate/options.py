"""The options of one evaluation run, and which protocol honours which.

:class:`EvaluateOptions` holds everything ``nioreg evaluate`` (and the Python entry points
:func:`~nioreg.evaluate.protocols.brain.run_brain`, :func:`~nioreg.evaluate.protocols.dirlab.evaluate_dirlab`)
can be asked for. The harness honours the common ones (:data:`COMMON_OPTIONS`); every other option belongs to
the protocols that declare it. An option that the chosen protocol does not honour is an error
(:func:`refuse_unhonoured`), never silently dropped: a user who passes ``--atlas`` to the chest protocol, or
``--augment`` to the brain protocol, is told so in one line.

This module imports nothing heavy: the command line builds the options before anything is loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..defaults import DEFAULT_LAMBDA


def _option(default: Any = None, flag: str | None = None, *, factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field that knows its command-line flag (``None``: a keyword of the Python API only)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"flag": flag})
    return field(default=default, metadata={"flag": flag})


@dataclass
class EvaluateOptions:
    """One evaluation run, as asked for (``None`` means "not given": the protocol's default applies)."""

    # --------------------------------------------------------------------------------- the harness (every protocol)
    dataset: str | Path | None = _option(None, "DATASET")
    out: str | Path | None = _option(None, "--out")
    protocol: str | None = _option(None, "--protocol")
    model: Any = _option(None, "--model")  # a file, a torch module, or {case: model} (leave-one-out)
    variant: str | None = _option(None, "--variant")
    methods: Sequence[str] | None = _option(None, "--method")
    reference: str | None = _option(None, "--reference")
    subjects: Sequence[str] | None = _option(None, "--subjects")
    lam: float = _option(DEFAULT_LAMBDA, "--lambda")
    seed: int = _option(0, "--seed")
    device: str | None = _option(None, "--device")
    threads: int | None = _option(None, "--threads")
    shard: str | None = _option(None, "--shard")
    merge_only: bool = _option(False, "--merge-only")
    no_merge: bool = _option(False, "--no-merge")
    max_cases: int | None = _option(None, "--max-cases")
    progress: bool = _option(True, "--quiet")
    # --------------------------------------------------------------------------------- brain atlas registration
    atlas: Sequence[str] = _option(flag="--atlas", factory=list)
    split: str | None = _option(None, "--split")
    labels: Sequence[str | int] | None = _option(None, "--labels")
    orientation: str | None = _option(None, "--orientation")
    affine: str | None = _option(None, "--affine")  # brain: None = prealign.DEFAULT_AFFINE
    figure_case: str | None = _option(None, "--figure-case")
    skip_unavailable: bool = _option(False, "--skip-unavailable")
    workdir: str | Path | None = _option(None, "--workdir")
    # --------------------------------------------------------------------------------- chest 4D-CT (DIR-Lab)
    smoothing: Any = _option(None, "--smoothing")  # "bspline" or a callable field filter
    augment: int = _option(0, "--augment")
    roi: str = _option("auto", "--roi")
    crop_margin_mm: float | None = _option(10.0)
    hu_offset: float | str = _option("auto")
    landmarks: str | Path | None = _option(None)
    geometry: Any = _option(None)  # DirLabGeometry or {case: DirLabGeometry}, for raw files of other releases
    save_fields: bool = _option(False)

    def replace(self, **changes: Any) -> "EvaluateOptions":
        return dataclasses.replace(self, **changes)


COMMON_OPTIONS = frozenset({
    "dataset", "out", "protocol", "model", "variant", "methods", "reference", "subjects", "lam", "seed", "device",
    "threads", "shard", "merge_only", "no_merge", "max_cases", "progress",
})
"""What the harness itself honours, whatever the protocol."""


def option_name(name: str) -> str:
    """How the user spelled an option: its command-line flag, else the Python keyword."""
    flag = {f.name: f.metadata.get("flag") for f in dataclasses.fields(EvaluateOptions)}[name]
    return flag or name


def given_options(options: EvaluateOptions) -> list[str]:
    """The options that differ from their defaults (what the user asked for)."""
    given = []
    for f in dataclasses.fields(options):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if getattr(options, f.name) != default:
            given.append(f.name)
    return given


def refuse_unhonoured(options: EvaluateOptions, protocol: str, honoured: frozenset[str]) -> None:
    """Raise :class:`~nioreg.io.InputError` naming the first given option that ``protocol`` does not honour."""
    from ..io import InputError

    for name in given_options(options):
        if name not in COMMON_OPTIONS and name not in honoured:
            flags = sorted(option_name(n) for n in honoured if option_name(n).startswith("--"))
            python_only = sorted(n for n in honoured if not option_name(n).startswith("--"))
            own = ", ".join(flags) or "none"
            if python_only:
                own += f"; from Python also {', '.join(python_only)}"
            raise InputError(f"{option_name(name)} is not an option of the {protocol} protocol "
                             f"(its own options: {own})")


def split_list(text: str | None) -> list[str] | None:
    """``"S02,S03"`` or ``"S02 S03"`` -> ``["S02", "S03"]``; ``None`` stays ``None``."""
    if text is None:
        return None
    return [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]
