"""Abstention ("I don't know"): a rejection score per input, and a threshold above which the
model answers "unknown" instead of its best class (it still ranks its top k).

Scores, higher meaning less like the training data:

- msp: 1 - the maximum softmax probability (Hendrycks & Gimpel, 2017);
- energy: -logsumexp(logits) (Liu et al., 2020), which needs a model with logits of its own
  (networks, linear models; a kNN model's log-votes make it 0 for every image);
- knn: the L2 distance from the input's unit-length logit vector to the k-th nearest of the
  training images' (Sun et al., 2022, who use embeddings). Logits, not the network's embedding,
  because every classifier gives them, an exported ONNX or OpenVINO file included, and a
  temperature (calibration) leaves unit-length logits unchanged. The reference vectors are
  saved with the model; the search is ExactSearch, the exact kernel behind the similarity index.

The default, auto, is knn for models with logits of their own and msp for kNN models, whose
logits are votes: what bench/ood.py measured best for each (see default_score).

The threshold is chosen on n validation images for a target acceptance rate, as split-conformal
prediction chooses its own (Vovk et al., 2005; Angelopoulos & Bates, "A Gentle Introduction to
Conformal Prediction and Distribution-Free Uncertainty Quantification", 2021, section 1): the
ceil((n + 1) * accept)-th smallest of their scores. For a new image exchangeable with them (of
the same kind), the chance that it scores at or under that threshold is then at least accept,
whatever the scores' distribution and however few the images, and (without ties) under
accept + 1 / (n + 1). The plain accept-quantile, the ceil(n * accept)-th smallest, falls short
of accept on average by up to 1 / (n + 1): little on 6,000 images, 0.5 points on 200, 5 on 20.
When ceil((n + 1) * accept) exceeds n there is no such threshold (it would be +inf, accepting
everything), and fitting says how many images the accept rate needs: accept / (1 - accept),
19 for 0.95, 99 for 0.99.
Scores come from predict_proba and the model's logits (Classifier.predict_logits), so a
calibrated model's are used; fit the abstention after calibrating.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from imgcls.data.dataset import DatasetSplits, ImageDataset
from imgcls.data.stream import ImageFiles
from imgcls.errors import ImgclsError
from imgcls.models.distance import ExactSearch

SCORES = ("msp", "energy", "knn")
DEFAULT_SCORE = "auto"        # knn, or msp for a model whose logits are votes: see default_score
DEFAULT_ACCEPT = 0.95
KNN_K = 10
REFERENCE_MAX = 10_000       # training images kept as knn reference (Sun et al.: a 1% sample still works)
TENSOR = "abstention.reference"
UNKNOWN = "unknown"


@dataclass(frozen=True, eq=False)
class Abstention:
    """How a model abstains: its score, the threshold above which it answers "unknown", and
    (knn) the reference vectors. accept: the acceptance the threshold was chosen for on
    `fitted_on` validation images (None: set by hand)."""

    score: str
    threshold: float
    accept: float | None = None
    k: int = KNN_K
    reference: torch.Tensor | None = field(default=None, repr=False)
    fitted_on: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.score not in SCORES:
            raise ImgclsError(f"unknown rejection score {self.score!r}; valid: {', '.join(SCORES)}")
        if self.score == "knn" and (self.reference is None or not len(self.reference)):
            raise ImgclsError("a knn abstention needs the training images' reference vectors")

    @property
    def needs_logits(self) -> bool:
        return self.score != "msp"

    def scores(self, proba: np.ndarray, logits: np.ndarray | None) -> np.ndarray:
        """Rejection scores (N,) float64 from probabilities (N, C) and, for energy and knn, logits."""
        if self.score == "msp":
            return msp_score(proba)
        if logits is None:
            raise ImgclsError(f"the {self.score} score needs the model's logits")
        if self.score == "energy":
            return energy_score(logits)
        return knn_score(logits, self._search(), self.k)

    def describe(self) -> str:
        """One line: the score, the threshold and what it rests on, e.g. "knn above 0.3119 answers unknown;
        the threshold rests on 135 val images (split-conformal: the 129th smallest score), of which it
        accepts 95.6%"."""
        text = f"{self.score} above {self.threshold:.4g} answers unknown"
        fitted = self.fitted_on
        if not fitted.get("images"):
            return text + " (threshold set by hand)"
        how = f"split-conformal: the {_ordinal(fitted['rank'])} smallest score" if fitted.get("rank") else "quantile"
        return (f"{text}; the threshold rests on {fitted['images']:,} {fitted.get('split', 'val')} images ({how}), "
                f"of which it accepts {fitted['accepted']:.1%}")

    def rejects(self, scores: np.ndarray) -> np.ndarray:
        """Which inputs are answered "unknown": those scoring above the threshold."""
        return np.asarray(scores) > self.threshold

    def _search(self) -> ExactSearch:
        # Built once per Abstention (frozen dataclass: stored past __setattr__).
        search = self.__dict__.get("_search_")
        if search is None:
            search = ExactSearch(self.reference.float(), "l2")
            object.__setattr__(self, "_search_", search)
        return search

    # -- saving: JSON for the metadata, the reference as a tensor (or base64 inside JSON) ---------
    def to_dict(self) -> dict:
        out = {"score": self.score, "threshold": self.threshold, "accept": self.accept,
               "fitted_on": dict(self.fitted_on)}
        if self.score == "knn":
            out.update(k=self.k, features="unit-length logits", reference_images=len(self.reference),
                       reference_tensor=TENSOR)
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        return {TENSOR: self.reference.float().contiguous()} if self.reference is not None else {}

    def to_json(self) -> dict:
        """to_dict with the reference vectors inline (base64 float32), for an exported file's metadata."""
        out = self.to_dict()
        if self.reference is not None:
            array = np.ascontiguousarray(self.reference.float().numpy())
            out.pop("reference_tensor")
            out["reference"] = {"dtype": "float32", "shape": list(array.shape),
                                "base64": base64.b64encode(array.tobytes()).decode("ascii")}
        return out

    @classmethod
    def from_dict(cls, data: dict | None, tensors: dict[str, torch.Tensor] | None = None) -> Abstention | None:
        """Rebuild from to_dict (with the model file's tensors) or to_json; None stays None (no abstention)."""
        if not data:
            return None
        reference = None
        if isinstance(data.get("reference"), dict):
            ref = data["reference"]
            reference = torch.from_numpy(np.frombuffer(base64.b64decode(ref["base64"]), dtype=np.float32)
                                         .reshape(ref["shape"]).copy())
        elif data.get("reference_tensor"):
            reference = (tensors or {}).get(data["reference_tensor"])
        return cls(score=data["score"], threshold=float(data["threshold"]), accept=data.get("accept"),
                   k=int(data.get("k", KNN_K)), reference=reference, fitted_on=dict(data.get("fitted_on") or {}))


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n:,}{suffix}"


def abstention_summary(model, data, split: str = "test") -> dict | None:
    """For report.json: the model's abstention (score, threshold, accept, what the threshold rests
    on) and the share of data's images it accepts (answers as before); None for a model that
    does not abstain."""
    abstention = model.abstention_
    if abstention is None:
        return None
    out = {key: value for key, value in abstention.to_dict().items() if key != "reference_tensor"}
    if data is not None and len(data):
        _, scores = model.predict_with_rejection(data)
        out[f"{split}_accepted"] = float(np.mean(~abstention.rejects(scores)))
        out[f"{split}_images"] = int(len(scores))
    out["text"] = abstention.describe()
    return out


def check_score(score: str) -> None:
    """A score a user may ask for: one of SCORES, or auto (see default_score)."""
    if score not in ("auto", *SCORES):
        raise ImgclsError(f"unknown rejection score {score!r}; valid: auto, {', '.join(SCORES)}")


def default_score(model, reference=None) -> str:
    """The score "auto" stands for: the one that told unseen kinds of images apart best in
    bench/ood.py for this kind of model (AUROC).

    knn for models with logits of their own (networks, linear), the best or within a point of it
    everywhere: far-OOD 0.939 against msp's 0.793 and energy's 0.909 for LeNet-5, 0.882 against
    0.734 and 0.669 for a linear model; near-OOD 0.664 against msp's 0.670 (LeNet-5) and 0.727
    against 0.511 (linear); digits 0-4 against 5-9, 0.940 against msp's 0.929 and energy's 0.949
    for the course CNN. Energy, best on the digits, fails a linear model (0.365 near-OOD).
    msp for a model whose logits are the logs of its neighbours' votes (kNN, transfer --mode
    knn): knn on those discrete vectors measured worse (far-OOD 0.633 against msp's 0.775, near
    0.611 against 0.647). Without reference (training) images, which knn needs, msp.
    """
    if model.logits_are_votes or reference is None or not len(reference):
        return "msp"
    return "knn"


def check_accept(accept: float) -> None:
    """The acceptance rate must lie strictly between 0 and 1 (1 would accept everything)."""
    if not (isinstance(accept, (int, float)) and math.isfinite(accept) and 0 < accept < 1):
        raise ImgclsError(f"--accept must be between 0 and 1 (exclusive), e.g. 0.95; got {accept}")


def check_can_abstain(splits: DatasetSplits, abstain: dict) -> None:
    """Refuse, before any training, an abstention the data cannot give ({"accept", "score"}): it
    needs single-label data with a validation split to choose the threshold on."""
    check_accept(abstain["accept"])
    check_score(abstain["score"])
    if splits.train.multi_label:
        raise ImgclsError("--accept is for single-label data; a multi-label model already answers no label "
                          "when none is above its threshold")
    if splits.val is None or not len(splits.val):
        raise ImgclsError("--accept chooses its threshold on the validation split; use a --val-fraction above 0")
    check_enough_images(len(splits.val), abstain["accept"])


def msp_score(proba: np.ndarray) -> np.ndarray:
    return 1.0 - np.asarray(proba, dtype=np.float64).max(axis=1)


def energy_score(logits: np.ndarray) -> np.ndarray:
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    return (-torch.logsumexp(logits, dim=1)).numpy()


def unit_rows(vectors) -> torch.Tensor:
    """Rows scaled to unit length (float32); an all-zero row stays zero."""
    v = torch.as_tensor(np.asarray(vectors), dtype=torch.float32)
    return torch.nn.functional.normalize(v, dim=1)


def knn_score(logits: np.ndarray, search: ExactSearch, k: int) -> np.ndarray:
    """Distance from each unit-length logit vector to its k-th nearest reference vector."""
    distances, _ = search.search(unit_rows(logits), k)
    return distances[:, -1].double().numpy()


def conformal_rank(n: int, accept: float) -> int:
    """ceil((n + 1) * accept): the rank (1-based, smallest first) of the calibration score that is
    the conformal threshold; above n, no threshold accepts `accept` of new images for sure."""
    return math.ceil((n + 1) * accept - 1e-9)      # 1e-9: (n + 1) * 0.95 may land a hair above an integer


def images_needed(accept: float) -> int:
    """The fewest calibration images with a finite conformal threshold for accept: n >= accept / (1 - accept)."""
    n = max(1, math.floor(accept / (1 - accept)) - 1)
    while conformal_rank(n, accept) > n:
        n += 1
    return n


def threshold_for(scores: np.ndarray, accept: float) -> float:
    """The split-conformal threshold for accept: the ceil((n + 1) * accept)-th smallest of the n
    calibration scores, +inf when that rank exceeds n. A new exchangeable image scores at or under
    it (is accepted) with probability at least accept."""
    scores = np.asarray(scores, dtype=np.float64)
    rank = conformal_rank(len(scores), accept)
    if rank > len(scores):
        return math.inf
    return float(np.partition(scores, rank - 1)[rank - 1])


def check_enough_images(n: int, accept: float, split: str = "val") -> None:
    """Refuse an accept rate that n calibration images cannot support (its conformal threshold is +inf)."""
    if conformal_rank(n, accept) > n:
        raise ImgclsError(f"--accept {accept:g} needs at least {images_needed(accept)} validation images to choose a "
                          f"threshold, and the {split} split has {n}: raise --val-fraction or lower --accept")


def fit_abstention(model, validation, accept: float = DEFAULT_ACCEPT, score: str = DEFAULT_SCORE, *,
                   reference=None, k: int = KNN_K, split: str = "val", seed: int = 0) -> Abstention:
    """An Abstention for model whose threshold, chosen on the validation images (an ImageDataset
    or images of the model's kind) by threshold_for, accepts at least `accept` of new images of
    their kind; too few images for accept are an error. score: one of SCORES, or "auto" for
    default_score's choice. knn needs `reference`: the training images,
    of which up to REFERENCE_MAX (a seeded random sample) are kept. Does not change model; set
    model.abstention_ to the result."""
    check_accept(accept)
    check_score(score)
    score = default_score(model, reference) if score == "auto" else score
    if model.task_.multi_label:
        raise ImgclsError("abstention is for single-label models; a multi-label model already answers "
                          "no label when none is above its threshold")
    if validation is None or not len(validation):
        raise ImgclsError("choosing a rejection threshold needs validation images (a val split)")
    check_enough_images(len(validation), accept, split)
    if k < 1:
        raise ImgclsError("the knn rejection score needs k of at least 1")
    vectors = None
    if score == "knn":
        if reference is None or not len(reference):
            raise ImgclsError("the knn rejection score needs the training images as reference")
        if len(reference) > REFERENCE_MAX:
            chosen = torch.randperm(len(reference), generator=torch.Generator().manual_seed(seed))[:REFERENCE_MAX]
            reference = (reference.subset(chosen.sort().values) if isinstance(reference, (ImageDataset, ImageFiles))
                         else reference[chosen])
        vectors = unit_rows(model.predict_logits(reference))
    draft = Abstention(score, math.inf, accept, k, vectors)
    _, scores = model.predict_with_rejection(validation, draft)
    threshold = threshold_for(scores, accept)
    accepted = float(np.mean(scores <= threshold))
    return replace(draft, threshold=threshold,
                   fitted_on={"split": split, "images": int(len(scores)), "accepted": accepted,
                              "method": "split-conformal", "rank": conformal_rank(len(scores), accept)})

