"""How well each rejection score tells unseen kinds of images from the training kind: AUROC and
FPR at 95% TPR (scikit-learn's metrics), no download.

- far-OOD: LeNet-5 (or each of --models) trained on Fashion-MNIST (a seeded subsample, a few
  epochs, so it takes minutes on two cores), tested against scikit-learn's handwritten digits
  upscaled to 28x28 (0..255 uint8);
- near-OOD: the same model trained on 8 Fashion-MNIST classes, tested against the 2 held out;
- digits (--parts digits): trained on scikit-learn's digits 0-4 (imgcls's split of them; 66
  validation images choose the threshold), tested against all of the digits 5-9: the small-data
  case of issue 22 (--models cnn).

In-distribution images are the Fashion-MNIST test images of the trained classes. "FPR at 95% TPR"
is the share of OOD images still answered when 95% of in-distribution test images are. "accepted"
columns use the threshold `imgcls` chooses on the validation split for --accept 0.95. The row
knn-embedding (the network's unit-length pre-logit embedding instead of its logits, as Sun et al.
do) is not an imgcls option: it is here to show what the logits cost.

    .venv/bin/python bench/ood.py --json /tmp/ood.json
    .venv/bin/python bench/ood.py --models lenet5,linear,knn --train-images 10000 --epochs 3   # quicker
    .venv/bin/python bench/ood.py --models cnn,linear,knn --parts digits
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("IMGCLS_PROGRESS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from imgcls.data import DataOptions, load_dataset  # noqa: E402
from imgcls.data.dataset import ImageDataset  # noqa: E402
from imgcls.models import create_model  # noqa: E402
from imgcls.models.abstention import KNN_K, SCORES, fit_abstention, knn_score, unit_rows  # noqa: E402
from imgcls.models.distance import ExactSearch  # noqa: E402
from machine import banner  # noqa: E402  (bench/machine.py: the CPU and its flags)

ACCEPT = 0.95


def digits_28() -> torch.Tensor:
    """scikit-learn's 8x8 digits (0..16) as 0..255 uint8 images upscaled to 28x28 (bilinear)."""
    images = np.round(load_digits().images * 255 / 16).astype(np.uint8)
    big = [np.asarray(Image.fromarray(image).resize((28, 28), Image.BILINEAR)) for image in images]
    return torch.from_numpy(np.stack(big)[:, None])


def subsample(data: ImageDataset, n: int, seed: int = 0) -> ImageDataset:
    if len(data) <= n:
        return data
    return data.subset(torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].sort().values)


def only(data: ImageDataset, classes: list[int]) -> ImageDataset:
    """The images of these classes, relabelled 0..len(classes)-1."""
    keep = torch.isin(data.labels, torch.tensor(classes)).nonzero().squeeze(1)
    remap = torch.full((data.num_classes,), -1, dtype=torch.int64)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    return ImageDataset(data.images[keep], remap[data.labels[keep]], [data.class_names[c] for c in classes])


def metrics(id_scores: np.ndarray, ood_scores: np.ndarray, threshold: float | None) -> dict:
    """AUROC (OOD as positive, higher score = more OOD), FPR at 95% TPR (ID as positive, accepted
    when its score is low), and the shares accepted at the validation threshold."""
    y = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    s = np.r_[id_scores, ood_scores]
    fpr, tpr, _ = roc_curve(1 - y, -s)
    out = {"auroc": float(roc_auc_score(y, s)), "fpr_at_95_tpr": float(fpr[np.searchsorted(tpr, 0.95)])}
    if threshold is not None:
        out.update(id_accepted=float(np.mean(id_scores <= threshold)), ood_accepted=float(np.mean(ood_scores <= threshold)))
    return out


def compare(model, train: ImageDataset, val: ImageDataset, test: ImageDataset, ood: torch.Tensor) -> dict:
    rows = {}
    for score in SCORES:           # (a kNN model's energy is 0 for every image: AUROC 0.5)
        start = time.perf_counter()
        abstention = fit_abstention(model, val, ACCEPT, score, reference=train)
        _, id_scores = model.predict_with_rejection(test, abstention)
        _, ood_scores = model.predict_with_rejection(ood, abstention)
        rows[score] = {**metrics(id_scores, ood_scores, abstention.threshold),
                       "seconds": round(time.perf_counter() - start, 1)}
    if not hasattr(model, "embed"):
        return rows
    # The reference row: kNN on the pre-logit embedding (not an imgcls option).
    reference = subsample(train, 10_000)
    search = ExactSearch(unit_rows(model.embed(reference)), "l2")
    id_scores, ood_scores = (knn_score(model.embed(x), search, KNN_K) for x in (test, ood))
    rows["knn-embedding"] = metrics(id_scores, ood_scores, None)
    return rows


def train_model(name: str, train: ImageDataset, val: ImageDataset, epochs: int | None, seed: int):
    """Fit model `name` (epochs None: imgcls's default for it)."""
    start = time.perf_counter()
    params = {} if name == "knn" else {"seed": seed} if name != "linear" else {}
    params.update({"epochs": epochs} if epochs is not None and name != "knn" else {})
    model = create_model(name, **params).fit(train, validation=val)
    return model, time.perf_counter() - start


def experiments(args) -> dict:
    """name -> a function giving (train, val, test, OOD images, what they are), for each of args.parts."""
    def fashion():
        splits = load_dataset("fashion-mnist", DataOptions(val_fraction=0.1, seed=args.seed))
        return splits, subsample(splits.train, args.train_images, args.seed)

    def far():
        splits, train = fashion()
        return (train, splits.val, splits.test, digits_28(), args.epochs,
                f"{len(train):,} Fashion-MNIST images; OOD: {len(load_digits().images):,} sklearn digits at 28x28")

    def near():
        splits, train = fashion()
        held = [int(c) for c in args.held_out.split(",")]
        kept = [c for c in range(splits.train.num_classes) if c not in held]
        names = ", ".join(splits.train.class_names[c] for c in held)
        ood = only(splits.test, held).images
        return (only(train, kept), only(splits.val, kept), only(splits.test, kept), ood, args.epochs,
                f"{len(kept)} Fashion-MNIST classes; OOD: the {len(ood):,} test images of the held-out {names}")

    def digits():
        splits = load_dataset("digits", DataOptions(seed=args.seed))
        low, high = list(range(5)), list(range(5, 10))
        ood = torch.cat([only(part, high).images for part in (splits.train, splits.val, splits.test)])
        return (only(splits.train, low), only(splits.val, low), only(splits.test, low), ood, None,
                f"sklearn digits 0-4, imgcls's default epochs; OOD: the {len(ood):,} digits 5-9")

    known = {"far": far, "near": near, "digits": digits}
    unknown = [p for p in args.parts.split(",") if p not in known]
    if unknown:
        raise SystemExit(f"unknown part(s) {', '.join(unknown)}; valid: {', '.join(known)}")
    return {p: known[p] for p in args.parts.split(",")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="lenet5", help="comma-separated imgcls models, e.g. lenet5,linear,knn")
    parser.add_argument("--parts", default="far,near", help="comma-separated, of: far, near, digits")
    parser.add_argument("--train-images", type=int, default=20_000, help="Fashion-MNIST training subsample")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the far and near parts")
    parser.add_argument("--held-out", default="8,9", help="near-OOD: the Fashion-MNIST classes left out of training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    print(banner())
    results = {"settings": vars(args)}
    for part, make in experiments(args).items():
        train, val, test, ood, epochs, what = make()
        for name in args.models.split(","):
            model, seconds = train_model(name, train, val, epochs, args.seed)
            accuracy = model.score(test)
            print(f"\n{part}-OOD: {name} on {what}; trained in {seconds:.0f} s, test accuracy {accuracy:.1%}")
            rows = compare(model, train, val, test, ood)
            show(rows)
            results.setdefault(name, {})[part] = {"train_seconds": seconds, "test_accuracy": accuracy, "scores": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def show(rows: dict) -> None:
    print(f"{'score':<15}{'AUROC':>8}{'FPR@95TPR':>11}{'ID accepted':>13}{'OOD accepted':>14}")
    for name, r in rows.items():
        accepted = (f"{r['id_accepted']:>13.1%}{r['ood_accepted']:>14.1%}" if "id_accepted" in r
                    else f"{'-':>13}{'-':>14}")
        print(f"{name:<15}{r['auroc']:>8.3f}{r['fpr_at_95_tpr']:>11.1%}{accepted}")


if __name__ == "__main__":
    main()
