"""docs/troubleshooting.md documents every message nioreg can print about a user's mistake.

The messages are read from the source with ``ast`` (no imports, no torch): the message argument of every
``InputError(...)``, ``input_error(role, path, problem)``, ``_fail(path_or_spec, problem)``, ``fail(...)``,
``interrupted(...)`` (Ctrl-C),
``SpecError(...)``, ``ModelFileError`` and its subclasses, ``BaselineUnavailable(...)``, ``warnings.warn(...)``,
the ``ValueError``/``RuntimeError`` messages of the modules that check what a user chooses
(:data:`USER_FACING_MODULES`), the lines printed as ``nioreg: warning: ...`` / ``nioreg: interrupted ...`` and
the warnings a registration records (``out["warnings"] = [...]``). Of each message the *key* is its first
literal stretch of words (before or between the ``{...}`` placeholders), at most :data:`KEY_WORDS` words; the key
must appear in docs/troubleshooting.md (whitespace normalised). Messages that are only placeholders
(``fail(str(error))``) re-raise a message found elsewhere and have no key.

A new message fails :func:`test_every_user_message_is_documented` with its file, line and key: document it in
docs/troubleshooting.md, or (for a check a user cannot reach through the CLI or the documented Python API) add
its key to :data:`NOT_DOCUMENTED` with the reason.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "nioreg"
DOC = ROOT / "docs" / "troubleshooting.md"

KEY_WORDS = 6
"""At most this many words of a message's first literal stretch are looked for in the doc."""

ALWAYS = {"InputError", "input_error", "_fail", "fail", "interrupted", "SpecError", "BaselineUnavailable", "warn"}
"""Calls whose message is always the user's (plus the ModelFileError family, read from models/errors.py)."""

USER_FACING_MODULES = {
    "methods/options.py", "methods/registry.py", "methods/network.py", "methods/api.py", "methods/contrast.py",
    "io/volume.py",
    "io/preprocess.py", "baselines/__init__.py", "baselines/syn.py", "baselines/f3d.py",
    "spatial/deformation.py", "train/trainer.py", "evaluate/protocols/brain_report.py",
}
"""Modules whose ``ValueError``/``RuntimeError`` messages check a user's options (command line or ``register()``)."""

NOT_DOCUMENTED = {
    # methods/registry.py: checks on a MethodEntry, for authors who register a method of their own (Python)
    "is already registered": "a plug-in author registered the same method name twice (import-time error)",
    "use lower-case letters, digits and '_": "a plug-in author's method name (import-time error)",
    "must hold": "a plug-in author's MethodEntry presets/defaults with the wrong count (import-time error)",
    # methods/api.py
    "this result has no fixed grid": "Python: RegistrationResult.warp_volume on a result of bare arrays; "
                                        "the message says what to do",
    # methods/neural.py is not scanned; io/volume.py's Volume constructor checks
    "Volume needs a 3-D array, got": "Python: constructing nioreg.io.Volume by hand with a wrong array",
    "Volume needs a 4x4 affine, got": "Python: constructing nioreg.io.Volume by hand with a wrong affine",
    # spatial/deformation.py: parameters of the B-spline-like smoothing object (Python only)
    "must be a positive int or": "Python: BSplineSmoothing(...) parameters; the CLI passes only the name",
    "kernel sizes must be odd, got": "Python: BSplineSmoothing(...) parameters; the CLI passes only the name",
    # io/preprocess.py: the stored preprocessing record of a model file or a training run (written by nioreg)
    "preprocessing: expected a dict, got": "a model file's stored preprocessing record that nioreg did not write",
    "preprocessing: unsupported version": "a model file's stored preprocessing record from a newer nioreg",
    "preprocessing: unknown key(s": "a model file's stored preprocessing record that nioreg did not write",
    "preprocessing: antialias must be a bool,": "Python: Preprocessing(antialias=...); the CLI flag is a bool",
    "preprocessing: no CT window set": "internal: the CT window of a Preprocessing without one is never asked for",
    # train/trainer.py: TrainConfig fields the CLI always fills with valid types
    "must be >= 1, got": "TrainConfig counts (log_every, ...): the CLI options are documented in the train "
                         "section by their own messages; this generic form only names the field",
    "must be >= 0, got": "TrainConfig counts (freeze_steps, checkpoint_every): generic form, see above",
}
"""Keys deliberately left out of docs/troubleshooting.md, each with the reason."""


def _model_error_classes() -> set[str]:
    tree = ast.parse((SRC / "models" / "errors.py").read_text())
    names = {"ModelFileError"}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(isinstance(b, ast.Name) and b.id in names for b in node.bases):
            names.add(node.name)
    return names


def _strings_of_module(tree: ast.Module) -> dict[str, ast.expr]:
    """Module-level ``NAME = "text"`` constants (so ``raise BaselineUnavailable(INSTALL)`` is read)."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = node.value
    return out


def _segments(node: ast.expr, constants: dict[str, ast.expr]) -> list[str | None]:
    """The message as literal strings and ``None`` for each placeholder."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [v.value if isinstance(v, ast.Constant) else None for v in node.values]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _segments(node.left, constants) + _segments(node.right, constants)
    if isinstance(node, ast.Name) and node.id in constants:
        return _segments(constants[node.id], constants)
    return [None]


def key_of(segments: list[str | None]) -> str | None:
    """The first literal stretch of >= 3 words (else of >= 2), cut to KEY_WORDS words; None for no literal text."""
    stretches = [" ".join(s.split()).strip(" '\":;,.(){}") for s in segments if s]
    for least in (3, 2):
        for text in stretches:
            words = text.split()
            if len(words) >= least:
                return " ".join(words[:KEY_WORDS])
    return None


def user_messages() -> list[tuple[str, int, str]]:
    """``(file, line, key)`` of every user-facing message in src/nioreg."""
    model_errors = _model_error_classes()
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        tree = ast.parse(path.read_text())
        constants = _strings_of_module(tree)
        for node in ast.walk(tree):
            message = None
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                args = node.args
                if name == "input_error" and len(args) >= 3:
                    message = args[2]
                elif name == "_fail" and len(args) >= 2:
                    message = args[1]
                elif args and (name in ALWAYS or name in model_errors or (
                        name in ("ValueError", "RuntimeError") and rel in USER_FACING_MODULES)):
                    message = args[0]
            elif isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant) and t.slice.value == "warnings"
                    for t in node.targets) and isinstance(node.value, ast.List):
                for element in node.value.elts:
                    found.append((rel, node.lineno, key_of(_segments(element, constants))))
                continue
            elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant) and \
                    node.values[0].value.startswith(("nioreg: warning: ", "nioreg: interrupted")):
                message = node
            if message is not None:
                segments = _segments(message, constants)
                if isinstance(node, ast.JoinedStr) and segments[0].startswith("nioreg: warning: "):
                    segments[0] = segments[0][len("nioreg: warning: "):]
                found.append((rel, node.lineno, key_of(segments)))
    return [(rel, line, key) for rel, line, key in found if key is not None]


def _normalised(text: str) -> str:
    return " ".join(text.split())


def test_the_scan_finds_the_known_kinds_of_message():
    keys = {key for _, _, key in user_messages()}
    for expected in ("file not found", "is in use by another nioreg", "unknown model name",
                     "baselines are not part of the", "--device cuda was asked for, but",
                     "the label maps hold different labels", "the finished cases are kept in",
                     "give either --iters or --preset, not", "is the published"):
        assert any(expected in key for key in keys), expected
    assert len(keys) > 150


def test_every_user_message_is_documented():
    doc = _normalised(DOC.read_text(encoding="utf-8"))
    missing = sorted({f"{rel}:{line}: {key!r}" for rel, line, key in user_messages()
                      if key not in NOT_DOCUMENTED and _normalised(key) not in doc})
    assert not missing, ("messages not documented in docs/troubleshooting.md (document them, or add the key to "
                         "NOT_DOCUMENTED in tests/test_troubleshooting.py with the reason):\n" + "\n".join(missing))


def test_the_allow_list_holds_only_messages_that_exist():
    keys = {key for _, _, key in user_messages()}
    stale = sorted(key for key in NOT_DOCUMENTED if key not in keys)
    assert not stale, f"NOT_DOCUMENTED names messages that no longer exist: {stale}"


def test_the_doc_is_linked():
    assert "docs/troubleshooting.md" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "troubleshooting.md" in (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")


def test_every_documented_error_line_has_the_command_line_form():
    """The doc's messages are quoted as the user sees them: ``nioreg: error: ...`` / ``nioreg: warning: ...``."""
    doc = DOC.read_text(encoding="utf-8")
    quoted = re.findall(r"^- \*\*`+ ?([^`]+)", doc, flags=re.M)
    assert quoted, "no quoted messages found"
    bad = [q for q in quoted if not q.startswith(("nioreg: error: ", "nioreg: warning: ", "nioreg: interrupted",
                                                  "Error: ", "Traceback", "RuntimeError: ", "UserWarning",
                                                  "RuntimeWarning", "ValueError: "))]
    assert not bad, bad
