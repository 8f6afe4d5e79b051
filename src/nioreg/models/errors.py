"""The errors of :mod:`nioreg.models` (torch-free, so the model registry and the CLI can raise them cheaply).

Every one is a :class:`ModelFileError`, hence a ``ValueError``: callers that catch model problems around
``load_model`` also catch a model name that is not installed, a download that failed or a wrong checksum.
"""

from __future__ import annotations

__all__ = ["ModelFileError", "UnknownModelError", "ModelNotInstalledError", "ChecksumMismatchError",
           "DownloadError"]


class ModelFileError(ValueError):
    """A model file cannot be used: missing, unreadable, unknown content, or not fitting the architecture."""


class UnknownModelError(ModelFileError):
    """A name that is neither an existing file nor a model of the registry."""


class ModelNotInstalledError(ModelFileError):
    """A registered model whose file is not in the local cache yet (``nioreg models fetch``/``import``)."""


class ChecksumMismatchError(ModelFileError):
    """A downloaded or imported file whose SHA-256 or size is not the registry's."""


class DownloadError(ModelFileError):
    """A download that did not complete (network, server or disk problem)."""
