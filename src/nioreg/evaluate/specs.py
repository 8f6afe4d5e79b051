"""Method specifications of ``nioreg evaluate``: ``[LABEL=]NAME[:ITERS][@KEY=VALUE]...``.

Examples::

    initial                 no registration (the moving image as given; the "Initial" row)
    ff                      feed-forward LapIRN
    io:50   io:200          instance optimisation of the field (Adam), 50 / 200 iterations
    nio:50                  neural instance optimisation, 50 iterations
    nio_m:100,60,30         multi-resolution NIO (levels 1, 2, 3)
    nio_m:100,60,30@lr=2e-4@lambda=0.3
    nio_m:100,60,30@precision=bf16   the network in bf16 autocast (loss and optimiser stay fp32); the
                            default, auto, is bf16 where the device computes it natively, else fp32
    syn                     ANTs SyN (antspyx; options: iters=100x70x50, metric=CC, radius=4, ...)
    niftyreg@maxit=300      NiftyReg reg_f3d (options: maxit, ln, lp, be, le, sx, sim)
    best=nio_m:100,60,60    an explicit label (table row / result folder name)

The label names the result folder ``OUT/cases/<label>/`` and the table row. Without an explicit label it is
the method name when the spec has nothing else (``ff``, ``syn``), otherwise the name followed by the iterations
and options (``io_50``, ``nio_m_100-60-30``, ``nio_m_100-60-30_lr2e-4``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..runtime import PRECISIONS

LEARNED = ("ff", "io", "nio", "nio_m")
BASELINES = ("syn", "niftyreg")
IDENTITY = ("initial",)
ALL_METHODS = IDENTITY + LEARNED + BASELINES

LEARNED_OPTIONS = {"lr": float, "lambda": float, "seed": int, "precision": str}
BASELINE_OPTIONS = {
    "syn": {"iters": str, "metric": str, "radius": int, "transform": str, "grad_step": float,
            "flow_sigma": float, "total_sigma": float},
    "niftyreg": {"maxit": int, "ln": int, "lp": int, "be": float, "le": float, "sx": float, "sim": str},
}
DISPLAY = {"initial": "Initial", "ff": "LapIRN (ff)", "io": "IO", "nio": "NIO", "nio_m": "NIO_m",
           "syn": "SyN (ANTs)", "niftyreg": "NiftyReg (f3d)"}
_LABEL_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class SpecError(ValueError):
    """A method specification that cannot be parsed (one line, names the spec)."""


@dataclass(frozen=True)
class MethodSpec:
    """One parsed method specification."""

    text: str
    label: str
    name: str
    iterations: tuple[int, ...] | None = None
    options: tuple[tuple[str, object], ...] = field(default_factory=tuple)

    @property
    def kind(self) -> str:
        return "identity" if self.name in IDENTITY else "learned" if self.name in LEARNED else "baseline"

    @property
    def option_dict(self) -> dict:
        return dict(self.options)

    @property
    def display(self) -> str:
        """Row name of the table: ``IO (η=50)``, ``NIO_m (η=[100, 60, 30])``, ``SyN (ANTs)``..."""
        base = DISPLAY[self.name]
        extra = []
        if self.name in ("io", "nio", "nio_m"):
            from ..methods.registry import get_method

            iters = list(self.iterations) if self.iterations is not None else get_method(self.name).iterations_for()
            extra.append(f"η={iters[0]}" if len(iters) == 1 else f"η={iters}")
        extra += [f"{k}={v}" for k, v in self.options]
        return f"{base} ({', '.join(extra)})" if extra else base

    def to_dict(self) -> dict:
        return {"text": self.text, "label": self.label, "name": self.name, "kind": self.kind,
                "iterations": None if self.iterations is None else list(self.iterations),
                "options": self.option_dict, "display": self.display}


def _fail(text: str, problem: str) -> SpecError:
    return SpecError(f"method spec {text!r}: {problem} (format: [LABEL=]NAME[:ITERS][@KEY=VALUE]..., "
                     f"NAME one of {', '.join(ALL_METHODS)})")


def parse_method_spec(text: str) -> MethodSpec:
    """Parse one spec (see the module docstring); raises :class:`SpecError` with a one-line message."""
    raw = text
    text = text.strip()
    if not text:
        raise _fail(raw, "empty")
    label = None
    head = text.split("@", 1)[0]
    if "=" in head:
        label, text = text.split("=", 1)
        label = label.strip()
        if not _LABEL_OK.match(label):
            raise _fail(raw, f"label {label!r} may only hold letters, digits and . _ + -")
    parts = text.split("@")
    core, option_parts = parts[0].strip(), parts[1:]
    name, _, iter_text = core.partition(":")
    name = name.strip().lower()
    if name not in ALL_METHODS:
        raise _fail(raw, f"unknown method {name!r}")
    iterations = None
    if iter_text.strip():
        if name not in ("io", "nio", "nio_m"):
            raise _fail(raw, f"{name} takes no ':ITERS' (use options, e.g. syn@iters=100x70x50)")
        try:
            iterations = tuple(int(p) for p in iter_text.replace(" ", "").split(",") if p)
        except ValueError:
            raise _fail(raw, f"iterations must be integers separated by commas, got {iter_text!r}") from None
        if any(i < 0 for i in iterations):
            raise _fail(raw, "iterations must be >= 0")
        wanted = 3 if name == "nio_m" else 1
        if len(iterations) != wanted:
            raise _fail(raw, f"{name} takes {wanted} iteration count{'s' if wanted > 1 else ''}, got {len(iterations)}")
    allowed = LEARNED_OPTIONS if name in LEARNED else BASELINE_OPTIONS.get(name, {})
    options: dict[str, object] = {}
    for part in option_parts:
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if key == "lam":
            key = "lambda"
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
    if label is None:
        label = name
        if iterations is not None:
            label += "_" + "-".join(str(i) for i in iterations)
        for key, value in options.items():
            label += f"_{key}{value}"
        label = re.sub(r"[^A-Za-z0-9._+-]", "-", label)
    return MethodSpec(text=raw.strip(), label=label, name=name, iterations=iterations,
                      options=tuple(options.items()))


def parse_methods(texts) -> list[MethodSpec]:
    """Parse several specs; labels must be unique. ``initial`` is not added here (the harness adds it)."""
    specs = [parse_method_spec(t) for t in texts]
    labels = [s.label for s in specs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise SpecError(f"method labels must be unique, repeated: {repeated}; give explicit labels (LABEL=SPEC)")
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
