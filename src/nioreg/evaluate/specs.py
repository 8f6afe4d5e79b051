"""Method specifications of ``nioreg evaluate``: ``[LABEL=]NAME[:ITERS][@KEY=VALUE]...``.

The one parser of both protocols. Examples::

    initial                 no registration (the moving image as given; the "Initial" row)
    ff                      feed-forward LapIRN
    io:50   io:200          instance optimisation of the field (Adam), 50 / 200 iterations
    nio:50                  neural instance optimisation, 50 iterations
    nio_m:100,60,30         multi-resolution NIO (levels 1, 2, 3)
    nio_m:100,60,30@lr=2e-4@lambda=0.3
    nio_m:100,60,30@precision=bf16   the network in bf16 autocast (loss and optimiser stay fp32); the
                            default, auto, is bf16 where the device computes it natively, else fp32
    nio_m:100,60,30@similarity=mind  the objective with MIND-SSC instead of LNCC (also ngf, mi; parameters
                            as mind:dilation=1)
    nio_m:100,60,30@contrast=different  the cross-contrast preset (nioreg.defaults.CONTRAST_PRESETS:
                            MIND-SSC, the network's input contrast-matched); an explicit
                            @similarity=, @lambda= or @match_contrast= wins over it
    ff@match_contrast=yes   the network sees the moving image mapped onto the fixed contrast
                            (nioreg.methods.contrast)
    syn                     ANTs SyN (antspyx; options: iters=100x70x50, metric=CC, radius=4, ...)
    niftyreg@maxit=300      NiftyReg reg_f3d (options: maxit, ln, lp, be, le, sx, sim)
    best=nio_m:100,60,60    an explicit label (table row / result file name)

A learned method without ``:ITERS`` takes the iterations of the *preset* it is parsed with: the chest
protocol parses with ``preset="lung"`` (io 200, nio 50, nio_m 100,60,60), the brain protocol with
``preset="brain"`` (the registry defaults io 50, nio 50, nio_m 100,60,30). The spec keeps what was written
(``iterations`` is ``None``) and :attr:`MethodSpec.iteration_counts` resolves it.

The label names the result files and the table row. Without an explicit label it is the method name when
the spec has nothing else (``ff``, ``syn``), otherwise the name followed by the iterations and options
(``io_50``, ``nio_m_100-60-30``, ``nio_m_100-60-30_lr0.0002``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

from ..runtime import PRECISIONS
BASELINES = ("syn", "niftyreg")
IDENTITY = ("initial",)


def yes_or_no(text: str) -> bool:
    """``yes``/``true``/``1`` -> True, ``no``/``false``/``0`` -> False; ValueError otherwise."""
    value = text.strip().lower()
    if value in ("yes", "true", "1"):
        return True
    if value in ("no", "false", "0"):
        return False
    raise ValueError(f"expected yes or no, got {text!r}")


yes_or_no.__name__ = "yes/no"  # how an error message names the type
LEARNED_OPTIONS = {"lr": float, "lambda": float, "seed": int, "precision": str, "similarity": str, "contrast": str,
                   "match_contrast": yes_or_no}
BASELINE_OPTIONS = {
    "syn": {"iters": str, "metric": str, "radius": int, "transform": str, "grad_step": float,
            "flow_sigma": float, "total_sigma": float},
    "niftyreg": {"maxit": int, "ln": int, "lp": int, "be": float, "le": float, "sx": float, "sim": str},
}
BASELINE_DISPLAY = {"initial": "Initial", "syn": "SyN (ANTs)", "niftyreg": "NiftyReg (f3d)"}
_LABEL_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


# ------------------------------------------------------------------------------------ what the methods take


def learned_methods() -> list[str]:
    """The learned methods of the registry (ff, io, nio, nio_m, and any registered later)."""
    from ..methods.registry import method_names

    return method_names()


def all_methods() -> list[str]:
    return list(IDENTITY) + learned_methods() + list(BASELINES)


# ------------------------------------------------------------------------------------ the spec


class SpecError(ValueError):
    """A method specification that cannot be parsed (one line, names the spec)."""


@dataclass(frozen=True)
class MethodSpec:
    """One parsed method specification (``iterations`` as written: ``None`` when the spec gives none)."""

    text: str
    label: str
    name: str
    iterations: tuple[int, ...] | None = None
    options: tuple[tuple[str, object], ...] = field(default_factory=tuple)
    preset: str | None = None

    @property
    def kind(self) -> str:
        return "identity" if self.name in IDENTITY else "baseline" if self.name in BASELINES else "learned"

    @property
    def option_dict(self) -> dict:
        return dict(self.options)

    @property
    def iteration_counts(self) -> list[int] | None:
        """The iterations a learned method runs: as written, else those of the preset; ``None`` otherwise."""
        if self.kind != "learned":
            return None
        from ..methods.registry import get_method

        return get_method(self.name).check_iterations(self.iterations, self.preset)

    @property
    def has_explicit_label(self) -> bool:
        return "=" in self.text.split("@", 1)[0]

    @property
    def display(self) -> str:
        """Row name of the table: ``IO (η=50)``, ``NIO_m (η=[100, 60, 30])``, ``SyN (ANTs)``..."""
        extra = []
        iters = self.iteration_counts
        if iters:
            extra.append(f"η={iters[0]}" if len(iters) == 1 else f"η={iters}")
        extra += [f"{k}={v}" for k, v in self.options]
        if self.kind == "learned":
            from ..methods.registry import get_method

            base = get_method(self.name).display or self.name
        else:
            base = BASELINE_DISPLAY[self.name]
        return f"{base} ({', '.join(extra)})" if extra else base

    def to_dict(self) -> dict:
        return {"text": self.text, "label": self.label, "name": self.name, "kind": self.kind,
                "iterations": None if self.iterations is None else list(self.iterations),
                "options": self.option_dict, "preset": self.preset, "display": self.display}


def _fail(text: str, problem: str) -> SpecError:
    return SpecError(f"method spec {text!r}: {problem} (format: [LABEL=]NAME[:ITERS][@KEY=VALUE]..., "
                     f"NAME one of {', '.join(all_methods())})")


def _split_label(raw: str) -> tuple[str | None, str]:
    text = raw.strip()
    if "=" not in text.split("@", 1)[0]:
        return None, text
    label, text = (part.strip() for part in text.split("=", 1))
    if not _LABEL_OK.match(label):
        raise _fail(raw, f"label {label!r} may only hold letters, digits and . _ + -")
    return label, text


def _parse_iterations(raw: str, name: str, text: str) -> tuple[int, ...] | None:
    if not text.strip():
        return None
    from ..methods.registry import get_method

    wanted = get_method(name).iteration_counts if name in learned_methods() else 0
    if wanted == 0:
        raise _fail(raw, f"{name} takes no ':ITERS'" + (" (use options, e.g. syn@iters=100x70x50)"
                                                         if name in BASELINES else ""))
    try:
        iterations = tuple(int(p) for p in text.replace(" ", "").split(",") if p)
    except ValueError:
        raise _fail(raw, f"iterations must be integers separated by commas, got {text!r}") from None
    if any(i < 0 for i in iterations):
        raise _fail(raw, "iterations must be >= 0")
    if len(iterations) != wanted:
        raise _fail(raw, f"{name} takes {wanted} iteration count{'s' if wanted > 1 else ''}, got {len(iterations)}")
    return iterations


def _parse_options(raw: str, name: str, parts: list[str]) -> dict[str, object]:
    allowed = BASELINE_OPTIONS[name] if name in BASELINES else {} if name in IDENTITY else LEARNED_OPTIONS
    options: dict[str, object] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        key = "lambda" if key == "lam" else key
        if not eq or not key or not value.strip():
            raise _fail(raw, f"option {part!r} must be KEY=VALUE")
        if key not in allowed:
            raise _fail(raw, f"unknown option {key!r} for {name}; allowed: {', '.join(allowed) or 'none'}")
        try:
            options[key] = allowed[key](value.strip())
        except ValueError:
            raise _fail(raw, f"option {key}={value!r} is not a valid {allowed[key].__name__}") from None
    if "lambda" in options and not 0.0 <= float(options["lambda"]) <= 1.0:  # type: ignore[arg-type]
        raise _fail(raw, "lambda must be in [0, 1]")
    if options.get("precision", "auto") not in PRECISIONS:
        raise _fail(raw, f"precision must be one of {', '.join(PRECISIONS)}")
    if "similarity" in options:
        options["similarity"] = _check_similarity(raw, str(options["similarity"]))
    if "contrast" in options:
        from ..methods.options import contrast_settings  # torch-free, like this parser

        try:
            contrast_settings(str(options["contrast"]))
        except ValueError as error:
            raise _fail(raw, str(error)) from None
    return options


def _check_similarity(raw: str, text: str) -> str:
    from ..losses.similarity import parse_similarity  # lazily: the parser is torch-free until a measure is named

    try:
        return parse_similarity(text.lower()).text
    except ValueError as error:
        raise _fail(raw, str(error)) from None


def automatic_label(name: str, iterations: tuple[int, ...] | None, options: dict[str, object]) -> str:
    """``io`` + (50,) + {"lr": 0.1} -> ``io_50_lr0.1`` (file-name safe)."""
    label = name
    if iterations is not None:
        label += "_" + "-".join(str(i) for i in iterations)
    for key, value in options.items():
        label += f"_{key}{('yes' if value else 'no') if isinstance(value, bool) else value}"
    return re.sub(r"[^A-Za-z0-9._+-]", "-", label)


def parse_method_spec(text: str, *, preset: str | None = None) -> MethodSpec:
    """Parse one spec (see the module docstring); raises :class:`SpecError` with a one-line message.

    ``preset`` names the iteration preset of learned methods given without ``:ITERS`` (``"brain"``, ``"lung"``;
    ``None``: the registry defaults).
    """
    raw = text
    if not text.strip():
        raise _fail(raw, "empty")
    label, text = _split_label(raw)
    core, *option_parts = text.split("@")
    name, _, iter_text = core.strip().partition(":")
    name = name.strip().lower()
    if name not in all_methods():
        raise _fail(raw, f"unknown method {name!r}")
    iterations = _parse_iterations(raw, name, iter_text)
    options = _parse_options(raw, name, option_parts)
    return MethodSpec(text=raw.strip(), label=label or automatic_label(name, iterations, options), name=name,
                      iterations=iterations, options=tuple(options.items()),
                      preset=preset if name in learned_methods() else None)


def check_unique_labels(specs: Iterable[MethodSpec]) -> None:
    labels = [s.label for s in specs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise SpecError(f"method labels must be unique, repeated: {repeated}; give explicit labels (LABEL=SPEC)")


def parse_methods(texts: Iterable[str], *, preset: str | None = None) -> list[MethodSpec]:
    """Parse several specs; labels must be unique. ``initial`` is not added here (the harness adds it)."""
    specs = [parse_method_spec(t, preset=preset) for t in texts]
    check_unique_labels(specs)
    return specs


def resolve_reference(reference: str, specs: list[MethodSpec]) -> MethodSpec:
    """The spec named by ``--reference``: an exact label, else the only spec of that method name."""
    for spec in specs:
        if spec.label == reference:
            return spec
    named = [s for s in specs if s.name == reference.lower()]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise SpecError(f"--reference {reference!r} is ambiguous: {[s.label for s in named]}; give the label")
    raise SpecError(f"--reference {reference!r} is not among the methods {[s.label for s in specs]}")
