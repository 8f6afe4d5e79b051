"""File input/output: the only place in nioreg where files and world coordinates are touched.

Arrays stay in the file's (nibabel) axis order; affines map voxel indices to RAS+ mm; displacement files are
converted from/to nioreg's voxel-unit pull convention here (see docs/conventions.md).

Names are imported lazily, so that the command line can read small vocabularies (``nioreg.io.ct_windows``)
at start-up without loading nibabel.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "CT_WINDOWS": "ct_windows",
    "CTWindow": "ct_windows",
    "LUNG_RECIPE_WINDOW": "ct_windows",
    "load_itk_displacement": "displacement",
    "load_l2r_displacement": "displacement",
    "save_itk_displacement": "displacement",
    "save_l2r_displacement": "displacement",
    "Record": "dataset",
    "read_dataset": "dataset",
    "select": "dataset",
    "write_manifest": "dataset",
    "InputError": "errors",
    "resample_to": "resample",
    "same_grid": "resample",
    "voxel_mapping": "resample",
    "Volume": "volume",
    "load_image": "volume",
    "load_labels": "volume",
    "orientation_matrix": "volume",
    "override_orientation": "volume",
    "parse_orientation": "volume",
    "OutputFolder": "output_folder",
    "load_itk_affine": "transforms",
    "load_itk_composite": "transforms",
    "save_itk_affine": "transforms",
    "save_itk_composite": "transforms",
    "check_not_input": "write",
    "save_nifti": "write",
    "write_json_atomic": "write",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
