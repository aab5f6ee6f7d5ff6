"""Data layer: every supported layout read into one `FaceSet`."""

from .faceset import FER2013_CLASSES, SPLITS, DataError, FaceSet
from .fer2013 import FER2013_MD5, read_fer2013_csv
from .ferplus import FERPLUS_CLASSES, load_ferplus
from .readers import cache_dir, load

__all__ = [
    "FER2013_CLASSES",
    "FER2013_MD5",
    "FERPLUS_CLASSES",
    "SPLITS",
    "DataError",
    "FaceSet",
    "cache_dir",
    "load",
    "load_ferplus",
    "read_fer2013_csv",
]
