"""Similarity search over image embeddings: indexes, queries and galleries."""

from imgcls.similarity.build import (INDEX_SETTINGS, index_dataset, open_index_for, queries_from_dataset,
                                     queries_from_inputs)
from imgcls.similarity.features import load_features
from imgcls.similarity.gallery import write_gallery
from imgcls.similarity.index import ImageIndex, index_path

__all__ = ["INDEX_SETTINGS", "ImageIndex", "index_dataset", "index_path", "load_features", "open_index_for",
           "queries_from_dataset", "queries_from_inputs", "write_gallery"]
