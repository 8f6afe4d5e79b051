"""File input/output: the only place in nioreg where files and world coordinates are touched.

Arrays stay in the file's (nibabel) axis order; affines map voxel indices to RAS+ mm; displacement files are
converted from/to nioreg's voxel-unit pull convention here (see docs/conventions.md).
"""

from .ct_windows import CT_WINDOWS, LUNG_RECIPE_WINDOW, CTWindow
from .displacement import (
    load_itk_displacement,
    load_l2r_displacement,
    save_itk_displacement,
    save_l2r_displacement,
)
from .dataset import Record, read_dataset, select, write_manifest
from .errors import InputError
from .resample import resample_to, same_grid, voxel_mapping
from .volume import Volume, load_image, load_labels, orientation_matrix, override_orientation, parse_orientation
from .write import check_not_input, save_nifti, write_json_atomic

__all__ = [
    "CT_WINDOWS",
    "CTWindow",
    "InputError",
    "LUNG_RECIPE_WINDOW",
    "Record",
    "read_dataset",
    "select",
    "write_manifest",
    "Volume",
    "load_image",
    "load_labels",
    "parse_orientation",
    "orientation_matrix",
    "override_orientation",
    "resample_to",
    "same_grid",
    "voxel_mapping",
    "save_nifti",
    "check_not_input",
    "write_json_atomic",
    "save_itk_displacement",
    "load_itk_displacement",
    "save_l2r_displacement",
    "load_l2r_displacement",
]
