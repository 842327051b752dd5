"""A searchable collection of images: their vectors, labels and where they came from.

`ImageIndex(features, kind)` embeds images with `load_features(features)` and finds the nearest
ones to a query, by one of two searches:

- exact: `ExactSearch`, the kNN classifier's kernel (int8 GEMM for pixels, exact re-rank);
- hnsw: faiss's HNSW graph (approximate; M links per node, ef_construction and ef_search
  candidate lists), for collections where a brute-force scan per query is too slow.

Either way the reported distances are recomputed exactly from the stored vectors, so exact and
approximate results are directly comparable. Images can be added later without a rebuild (the
HNSW graph grows in place).

The index is one .safetensors file: vectors, labels, item names (paths), small thumbnails for
galleries and the serialised HNSW graph as tensors; the features (with the network file's
SHA-256), preprocessing and class names as JSON in the header. Nothing is unpickled on load.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from imgcls import __version__
from imgcls.data.dataset import ImageDataset
from imgcls.data.images import Preprocessing
from imgcls.errors import ImgclsError
from imgcls.models.artifact import read_safetensors_metadata, write_safetensors
from imgcls.models.distance import ExactSearch
from imgcls.similarity.features import PIXELS, distances_from_l2, load_features, metric_of
from imgcls.storage import check_format_version

KINDS = ("exact", "hnsw")
INDEX_FILE = "index.safetensors"
FORMAT, FORMAT_VERSION = "imgcls-index", 1
THUMBNAIL_MAX_SIDE = 64      # images up to this side are stored, so galleries need no files


@dataclass
class Neighbour:
    item: str          # the file's path, or "<dataset>/<split>/<number>" for in-memory datasets
    label: str
    split: str
    distance: float
    index: int

    def to_dict(self) -> dict:
        return {"item": self.item, "label": self.label, "split": self.split, "distance": self.distance}


class ImageIndex:
    def __init__(self, features: str = "pixels", kind: str = "exact", m: int = 32, ef_construction: int = 200,
                 ef_search: int = 64):
        if kind not in KINDS:
            raise ImgclsError(f"unknown index kind {kind!r}; valid: {', '.join(KINDS)}")
        if min(m, ef_construction, ef_search) < 1:
            raise ImgclsError("HNSW settings m, ef_construction and ef_search must be at least 1")
        self.features, self.kind = features, kind
        self.m, self.ef_construction, self.ef_search = m, ef_construction, ef_search
        self._vectors, self._labels, self._thumbnails = _Parts(), _Parts(), _Parts()
        self._item_set: set[str] = set()
        self.class_names_: list[str] = []
        self.items_: list[str] = []
        self.splits_: list[str] = []
        self.preprocessing_: Preprocessing | None = None
        self.fingerprint_: dict | None = None     # the features' identity when the index was built
        self._featurizer = None
        self._search = None
        self._norms: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.items_)

    # Appended to a part at a time (one per chunk of files), joined once when read.
    vectors_ = property(lambda self: self._vectors.joined())
    labels_ = property(lambda self: self._labels.joined(torch.empty(0, dtype=torch.int64)))

    @property
    def thumbnails_(self) -> torch.Tensor | None:
        """Indexed images up to THUMBNAIL_MAX_SIDE, for galleries (pixel vectors are the images)."""
        prep = self.preprocessing_
        if self.features == PIXELS and prep is not None and max(prep.size) <= THUMBNAIL_MAX_SIDE and len(self):
            return self.vectors_.reshape(len(self), prep.channels, *prep.size)
        return self._thumbnails.joined()

    @property
    def featurizer(self):
        if self._featurizer is None:
            try:
                featurizer = load_features(self.features)
            except ImgclsError as exc:
                if not len(self):
                    raise
                raise ImgclsError(f"this index was built with features {self.features}, which are gone: {exc}") from exc
            if self.fingerprint_ is not None and featurizer.fingerprint() != self.fingerprint_:
                raise ImgclsError(f"{self.features} has changed since this index was built; rebuild the index")
            self._featurizer, self.features = featurizer, featurizer.spec
            self.fingerprint_ = featurizer.fingerprint()
        return self._featurizer

    @property
    def metric(self) -> str:
        return metric_of(self.features)

    # -- building ---------------------------------------------------------------------------
    def add(self, data: ImageDataset, items: list[str], split: str, progress=None,
            preprocessing: Preprocessing | None = None) -> ImageIndex:
        """Embed data's images and append them with their item names, labels and split.
        preprocessing: how data's files were decoded (default: in-memory images of data's shape);
        every image of an index is decoded the same way."""
        if len(items) != len(data):
            raise ImgclsError(f"{len(items)} item names for {len(data)} images")
        if len(set(items)) < len(items):
            raise ImgclsError(f"item names must be unique; {len(items) - len(set(items))} repeated among those added")
        already = self._item_set & set(items)
        if already:
            raise ImgclsError(f"{len(already)} item(s) already in the index, e.g. {sorted(already)[0]}")
        if not len(data):
            return self
        self._check_preprocessing(preprocessing or data.preprocessing)
        vectors = self.featurizer.vectors(data.images, progress=progress).contiguous().clone()
        self._vectors.append(vectors)
        self._labels.append(self._merge_classes(data))
        self.items_ += list(items)
        self._item_set.update(items)
        self.splits_ += [split] * len(data)
        if max(self.preprocessing_.size) <= THUMBNAIL_MAX_SIDE and self.features != PIXELS:
            self._thumbnails.append(data.images.clone())
        self._grow_search(vectors)
        return self

    def _check_preprocessing(self, prep: Preprocessing) -> None:
        if self.preprocessing_ is None:
            self.preprocessing_ = prep
        elif prep != self.preprocessing_:
            raise ImgclsError(f"images decoded as {_describe(prep)} cannot join an index of images decoded as "
                              f"{_describe(self.preprocessing_)}")

    def _merge_classes(self, data: ImageDataset) -> torch.Tensor:
        """data's labels in this index's class numbering; new classes are appended."""
        for name in data.class_names:
            if name not in self.class_names_:
                self.class_names_.append(name)
        remap = torch.tensor([self.class_names_.index(n) for n in data.class_names], dtype=torch.int64)
        return remap[data.labels]

    def _squared_norms(self) -> torch.Tensor:
        """||v||^2 of every indexed vector in float64, kept for the exact re-rank of HNSW answers."""
        if self._norms is None or len(self._norms) < len(self.vectors_):
            done = 0 if self._norms is None else len(self._norms)
            fresh = self.vectors_[done:].double().square().sum(1)
            self._norms = fresh if self._norms is None else torch.cat([self._norms, fresh])
        return self._norms

    def _grow_search(self, new_vectors: torch.Tensor) -> None:
        if self.kind == "exact":
            self._search = None          # rebuilt lazily over all vectors: a flat scan has no structure
            return
        if self._search is None:
            self._search = _new_hnsw(new_vectors.shape[1], self.m, self.ef_construction)
        self._search.add(_float32(new_vectors))

    # -- searching --------------------------------------------------------------------------
    def search(self, images: torch.Tensor, k: int = 10, exclude: list[int | None] | None = None
               ) -> list[list[Neighbour]]:
        """The k nearest indexed images to each query image (uint8, decoded like the index)."""
        return self.search_vectors(self.featurizer.vectors(images), k, exclude)

    def search_vectors(self, queries: torch.Tensor, k: int = 10, exclude: list[int | None] | None = None
                       ) -> list[list[Neighbour]]:
        """Neighbours of query vectors; exclude[i] is an indexed item to leave out of query i's answer."""
        distances, indices = self.nearest(queries, k + (exclude is not None))
        results = []
        for row, (dist, idx) in enumerate(zip(distances.tolist(), indices.tolist())):
            skip = exclude[row] if exclude is not None else None
            pairs = [(d, i) for d, i in zip(dist, idx) if i != skip and i >= 0][:k]
            results.append([Neighbour(self.items_[i], self.class_names_[int(self.labels_[i])], self.splits_[i], d, i)
                             for d, i in pairs])
        return results

    def nearest(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances float64 (Q, k), indices int64 (Q, k)) of query vectors (for pixels: the images),
        nearest first; -1 pads missing ones."""
        if not len(self):
            raise ImgclsError("the index is empty")
        if queries[0].numel() != self.vectors_.shape[1]:
            raise ImgclsError(f"queries give vectors of {queries[0].numel()} values, the index holds "
                              f"{self.vectors_.shape[1]}: were they decoded like the index's images?")
        k = min(k, len(self))
        if self.kind == "exact":
            if self._search is None:
                self._search = ExactSearch(self.vectors_, "l2")
            l2, indices = self._search.search(queries, k)
        else:
            self._search.hnsw.efSearch = max(self.ef_search, k)
            _, found = self._search.search(_float32(queries), k)
            l2, indices = _exact_l2(self.vectors_, self._squared_norms(), queries, torch.from_numpy(found))
        return distances_from_l2(l2, self.metric), indices

    # -- saving -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = index_path(path, must_exist=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        code = {name: i for i, name in enumerate(self._split_names)}
        tensors = {"vectors": self.vectors_, "labels": self.labels_, "items": _encode(self.items_),
                   "splits": torch.tensor([code[s] for s in self.splits_], dtype=torch.uint8)}
        if self.features != PIXELS and self.thumbnails_ is not None:    # pixel vectors are the thumbnails
            tensors["thumbnails"] = self.thumbnails_
        if self.kind == "hnsw":
            import faiss
            tensors["hnsw"] = torch.from_numpy(faiss.serialize_index(self._search))
        write_safetensors(path, tensors, self._metadata())
        return path

    @property
    def _split_names(self) -> list[str]:
        return sorted(set(self.splits_))

    def _metadata(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "imgcls_version": __version__,
                "features": self.features, "fingerprint": self.fingerprint_, "metric": self.metric, "kind": self.kind,
                "hnsw": {"m": self.m, "ef_construction": self.ef_construction, "ef_search": self.ef_search},
                "preprocessing": self.preprocessing_.to_dict(), "class_names": self.class_names_,
                "split_names": self._split_names, "count": len(self),
                "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    @classmethod
    def load(cls, path: str | Path) -> ImageIndex:
        from safetensors.torch import load_file
        path = index_path(path)
        meta = read_safetensors_metadata(path)
        if not meta or meta.get("format") != FORMAT:
            raise ImgclsError(f"{path}: not an imgcls index (build one with `imgcls index`)")
        check_format_version(path, "index", meta.get("format_version"), FORMAT_VERSION)
        tensors = load_file(str(path))
        index = cls(meta["features"], meta["kind"], **meta["hnsw"])
        index._vectors.reset(tensors["vectors"])
        index._labels.reset(tensors["labels"])
        index.class_names_, index.items_ = list(meta["class_names"]), _decode(tensors["items"])
        index._item_set = set(index.items_)
        index.fingerprint_ = meta.get("fingerprint")
        index.splits_ = [meta["split_names"][i] for i in tensors["splits"].tolist()]
        index.preprocessing_ = Preprocessing.from_dict(meta["preprocessing"])
        index._thumbnails.reset(tensors.get("thumbnails"))
        if index.kind == "hnsw":
            import faiss
            index._search = faiss.deserialize_index(tensors["hnsw"].numpy())
        return index


def index_path(path: str | Path, must_exist: bool = True) -> Path:
    """An index file (.safetensors), or a folder holding index.safetensors."""
    path = Path(path).expanduser()
    if path.suffix != ".safetensors":
        path = path / INDEX_FILE
    if must_exist and not path.is_file():
        raise ImgclsError(f"{path}: no index there (build one with `imgcls index DATA --out FOLDER`)")
    return path


class _Parts:
    """A tensor grown by appending parts: joined on first read after a change, so growing it chunk by
    chunk costs one copy instead of one per chunk."""

    def __init__(self):
        self.parts: list[torch.Tensor] = []

    def append(self, tensor: torch.Tensor) -> None:
        self.parts.append(tensor)

    def reset(self, tensor: torch.Tensor | None) -> None:
        self.parts = [] if tensor is None else [tensor]

    def joined(self, empty: torch.Tensor | None = None) -> torch.Tensor | None:
        if len(self.parts) > 1:
            self.parts = [torch.cat(self.parts)]
        return self.parts[0] if self.parts else empty


def _describe(prep: Preprocessing) -> str:
    h, w = prep.size
    return f"{prep.channels}x{h}x{w} ({prep.resize}, crop {prep.crop_pct:g}, {prep.interpolation})"


def _encode(items: list[str]) -> torch.Tensor:
    """Item names as one uint8 tensor of NUL-separated UTF-8 (paths never hold NUL): unlike the JSON
    header, which safetensors caps at 100 MB, a tensor holds millions of paths."""
    return torch.frombuffer(bytearray("\0".join(items).encode("utf-8", "surrogateescape")), dtype=torch.uint8)


def _decode(tensor: torch.Tensor) -> list[str]:
    return bytes(tensor.numpy()).decode("utf-8", "surrogateescape").split("\0")


def _new_hnsw(dim: int, m: int, ef_construction: int):
    import faiss
    graph = faiss.IndexHNSWFlat(dim, m)
    graph.hnsw.efConstruction = ef_construction
    return graph


def _float32(vectors: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(vectors.reshape(len(vectors), -1).numpy(), dtype=np.float32)


def _exact_l2(reference: torch.Tensor, norms: torch.Tensor, queries: torch.Tensor, found: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances of the found candidates (-1: none), re-sorted nearest first.

    ||q - r||^2 = ||q||^2 + ||r||^2 - 2 q.r in float64, from the reference's squared norms: for
    uint8 pixels every term is an integer below 2^53, so the result is exact (and it costs one
    small batched product instead of a pass over every candidate's difference)."""
    queries = queries.reshape(len(queries), -1).double()
    l2 = torch.empty(found.shape, dtype=torch.float64)
    for start in range(0, len(queries), 1024):
        rows, q = found[start:start + 1024].clamp(min=0), queries[start:start + 1024]
        dots = torch.bmm(reference[rows].double(), q[:, :, None]).squeeze(-1)
        l2[start:start + 1024] = (norms[rows] + q.square().sum(1, keepdim=True) - 2 * dots).clamp(min=0).sqrt()
    l2 = l2.masked_fill(found < 0, float("inf"))
    order = l2.argsort(dim=1, stable=True)
    return l2.gather(1, order), found.gather(1, order)
