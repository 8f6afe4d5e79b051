"""LapIRN-family networks for nioreg: architectures, official-checkpoint import, model files, the model registry.

The networks work in the OFFICIAL LapIRN field convention (normalised ``[-1, 1]`` units,
``align_corners=True``, channel 0 along the last array axis); :func:`official_to_voxel` and
:func:`voxel_to_official` convert to and from nioreg's voxel convention (docs/conventions.md).

Models are known by name too (:mod:`nioreg.models.zoo`, ``nioreg models list``): ``load_model("lapirn-oasis-disp")``.
:func:`pyramid_downsample` is one step of the networks' image pyramid (the official average pooling), for
code that needs a level's images exactly as the network sees them (e.g. the training loss).
Names are imported lazily, so that the registry, the cache and ``nioreg models`` load without torch.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "FORMAT": "files",
    "FORMAT_VERSION": "files",
    "OFFICIAL_VARIANTS": "files",
    "import_official": "files",
    "load_model": "files",
    "official_config": "files",
    "save_model": "files",
    "DEFAULT_CONFIG": "lapirn",
    "LapIRN": "lapirn",
    "LevelOutput": "lapirn",
    "build_model": "lapirn",
    "lambda_to_reg_code": "lapirn",
    "normalise_config": "lapirn",
    "DEFAULT_MODEL": "shipped",
    "DEMO_MODEL": "shipped",
    "default_model_path": "shipped",
    "shipped_model_path": "shipped",
    "pyramid_downsample": "_official_ops:downsample",
    "official_to_voxel": "units",
    "voxel_to_official": "units",
    "ModelFileError": "errors",
    "UnknownModelError": "errors",
    "ModelNotInstalledError": "errors",
    "ChecksumMismatchError": "errors",
    "DownloadError": "errors",
    "ModelEntry": "zoo",
    "MODELS": "zoo",
    "get_entry": "zoo",
    "model_names": "zoo",
    "cache_root": "cache",
    "models_dir": "cache",
    "local_path": "cache",
    "is_installed": "cache",
    "resolve_model": "cache",
    "fetch_model": "cache",
    "import_model_file": "cache",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
