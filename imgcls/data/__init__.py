"""Data layer: sources -> in-memory uint8 datasets -> seeded stratified splits."""

from imgcls.data.dataset import DatasetSplits, ImageDataset, PixelRangeWarning, SkippedFile
from imgcls.data.images import Preprocessing, decode_image
from imgcls.data.load import DataOptions, from_arrays, load_dataset
from imgcls.data.named import NAMED_DATASETS
from imgcls.data.splits import stratified_kfold, stratified_split

__all__ = ["DataOptions", "DatasetSplits", "ImageDataset", "NAMED_DATASETS", "PixelRangeWarning", "Preprocessing",
           "SkippedFile", "decode_image", "from_arrays", "load_dataset", "stratified_kfold", "stratified_split"]
