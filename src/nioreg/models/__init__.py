"""LapIRN-family networks for nioreg: architectures, official-checkpoint import, model files.

The networks work in the OFFICIAL LapIRN field convention (normalised ``[-1, 1]`` units,
``align_corners=True``, channel 0 along the last array axis); :func:`official_to_voxel` and
:func:`voxel_to_official` convert to and from nioreg's voxel convention (docs/conventions.md).
:func:`pyramid_downsample` is one step of the networks' image pyramid (the official average pooling), for
code that needs a level's images exactly as the network sees them (e.g. the training loss).
"""

from ._official_ops import downsample as pyramid_downsample
from .files import (
    FORMAT,
    FORMAT_VERSION,
    OFFICIAL_VARIANTS,
    ModelFileError,
    import_official,
    load_model,
    official_config,
    save_model,
)
from .lapirn import DEFAULT_CONFIG, LapIRN, LevelOutput, build_model, lambda_to_reg_code, normalise_config
from .shipped import DEFAULT_MODEL, DEMO_MODEL, default_model_path, shipped_model_path
from .units import official_to_voxel, voxel_to_official

__all__ = [
    "LapIRN",
    "LevelOutput",
    "build_model",
    "normalise_config",
    "lambda_to_reg_code",
    "DEFAULT_CONFIG",
    "official_to_voxel",
    "voxel_to_official",
    "pyramid_downsample",
    "save_model",
    "load_model",
    "import_official",
    "official_config",
    "ModelFileError",
    "OFFICIAL_VARIANTS",
    "FORMAT",
    "FORMAT_VERSION",
    "DEFAULT_MODEL",
    "DEMO_MODEL",
    "default_model_path",
    "shipped_model_path",
]
