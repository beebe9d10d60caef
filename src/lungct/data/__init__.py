"""Data wing: finding and reading images, the audit, grouped splits, preprocessing, synthetic phantoms.

Knows nothing of models, evaluation or serving; everything above imports from here.
"""

from lungct.data.discovery import find_class_dirs, list_dataset, parse_class_map, resolve_data_dir
from lungct.data.imaging import Window, decode_bytes, read_image
from lungct.data.manifest import ManifestRow
from lungct.data.transforms import Geometry, PreprocessConfig, preprocess

__all__ = [
    "Geometry",
    "ManifestRow",
    "PreprocessConfig",
    "Window",
    "decode_bytes",
    "find_class_dirs",
    "list_dataset",
    "parse_class_map",
    "preprocess",
    "read_image",
    "resolve_data_dir",
]
