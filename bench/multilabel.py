"""Multi-label Fashion-MNIST: 2x2 mosaics of four random items, labelled by the set of classes shown.

Built in memory from the Fashion-MNIST files, no download: 60,000 training mosaics (56x56) from
54,000 training items, 6,000 validation mosaics from the other 6,000 training items (where imgcls
chooses each label's threshold), and 10,000 test mosaics from the 10,000 test items.

In one run it trains
  (1) imgcls's CPU recipe (recipes/fashion-mosaic-multilabel.yaml, read as `imgcls train --config`
      reads it) through the ordinary classifier contract, and
  (2) a plain PyTorch BCE loop of the same network: a DataLoader over a Dataset with torchvision
      transforms v2 (the same horizontal flip), fp32, the same optimiser, schedule and epochs,
and reports, for both, test mAP, macro F1, subset accuracy (scikit-learn's functions on the same
10,000 test mosaics), training images/s and wall time.

    python bench/multilabel.py                       # both
    python bench/multilabel.py --plain-epochs 2      # a shorter plain loop (its speed is per image)
    python bench/multilabel.py --skip-plain
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from sklearn.metrics import accuracy_score, average_precision_score, f1_score
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from machine import banner, describe

from imgcls.data import DataOptions, load_dataset
from imgcls.data.dataset import ImageDataset
from imgcls.models import create_model

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "fashion-mosaic-multilabel.yaml"
AIM_MAP, AIM_SECONDS = 0.95, 600


def mosaics(images: torch.Tensor, labels: torch.Tensor, n: int, seed: int, n_classes: int = 10
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """n mosaics (n, C, 2H, 2W) of four items drawn at random, and their multi-hot labels (n, n_classes)."""
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(images), (n, 4), generator=gen)
    tiles = images[pick]                                   # n, 4, C, H, W
    top = torch.cat([tiles[:, 0], tiles[:, 1]], dim=3)
    bottom = torch.cat([tiles[:, 2], tiles[:, 3]], dim=3)
    hot = torch.zeros(n, n_classes, dtype=torch.uint8)
    hot.scatter_(1, labels[pick], 1)
    return torch.cat([top, bottom], dim=2).contiguous(), hot


def build(seed: int = 0, scale: float = 1.0) -> tuple[ImageDataset, ImageDataset, ImageDataset]:
    splits = load_dataset("fashion-mnist", DataOptions(val_fraction=0.1, seed=seed))
    names = splits.class_names
    sizes = [round(n * scale) for n in (60_000, 6_000, 10_000)]
    parts = [(splits.train, sizes[0], seed), (splits.val, sizes[1], seed + 1), (splits.test, sizes[2], seed + 2)]
    return tuple(ImageDataset(*mosaics(p.images, p.labels, n, s), names) for p, n, s in parts)


def figures(y_true: np.ndarray, proba: np.ndarray, predicted: np.ndarray) -> dict:
    return {"mAP": float(average_precision_score(y_true, proba, average="macro")),
            "macro_f1": float(f1_score(y_true, predicted, average="macro", zero_division=0)),
            "subset_accuracy": float(accuracy_score(y_true, predicted))}


def run_imgcls(train, val, test, recipe: dict) -> dict:
    settings = dict(recipe)
    model = create_model(settings.pop("model"), **settings)
    start = time.perf_counter()
    model.fit(train, validation=val)
    seconds = time.perf_counter() - start
    predicted, proba = model.predict_with_proba(test)
    epochs = len(model.history_)
    speeds = [r["images_per_second"] for r in model.history_ if "images_per_second" in r]
    return {"train_seconds": seconds, "epochs": epochs, "images_per_second": float(np.median(speeds)),
            "thresholds": list(model.task_.thresholds), **figures(test.labels.numpy(), proba, predicted)}


class PlainDataset(Dataset):
    """What a plain PyTorch user writes: one sample at a time through torchvision transforms."""

    def __init__(self, data: ImageDataset, mean: float, std: float, train: bool):
        self.images, self.labels = data.images, data.labels.float()
        steps = [v2.RandomHorizontalFlip()] if train else []
        self.transform = v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize([mean], [std])])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def run_plain(train, test, recipe: dict, epochs: int, workers: int) -> dict:
    """The same network, optimiser and one-cycle schedule in an ordinary fp32 loop with BCE."""
    torch.manual_seed(0)
    pixels = train.images.float() / 255
    mean, std = pixels.mean().item(), pixels.std().item()
    loader = DataLoader(PlainDataset(train, mean, std, True), batch_size=recipe["batch_size"], shuffle=True,
                        num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    template = create_model(recipe["model"], **{k: v for k, v in recipe.items() if k != "model"})
    net = template.build_network(1, train.num_classes, tuple(train.images.shape[2:])).body
    opt = torch.optim.SGD(net.parameters(), lr=recipe["lr"], momentum=recipe.get("momentum", 0.9),
                          nesterov=bool(recipe.get("nesterov")), weight_decay=recipe.get("weight_decay", 0))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=epochs * len(loader))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    speeds, start = [], time.perf_counter()
    for _ in range(epochs):
        net.train()
        epoch_start = time.perf_counter()
        for x, y in loader:
            loss = loss_fn(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        speeds.append(len(loader) * recipe["batch_size"] / (time.perf_counter() - epoch_start))
    seconds = time.perf_counter() - start
    net.eval()
    with torch.no_grad():
        test_loader = DataLoader(PlainDataset(test, mean, std, False), batch_size=512)
        proba = torch.cat([net(x).sigmoid() for x, _ in test_loader]).numpy()
    return {"train_seconds": seconds, "epochs": epochs, "images_per_second": float(np.median(speeds)),
            **figures(test.labels.numpy(), proba, (proba >= 0.5).astype(np.uint8))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plain-epochs", type=int, default=None, help="epochs of the plain loop (default: the recipe's)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop")
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (quick checks)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the mosaics to build (quick checks)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    os.environ.setdefault("IMGCLS_PROGRESS", "0")
    print(banner())
    recipe = yaml.safe_load(RECIPE.read_text())
    if args.epochs:
        recipe["epochs"] = args.epochs
    train, val, test = build(scale=args.scale)
    cardinality = train.labels.sum(1).float().mean().item()
    print(f"mosaics: {len(train):,} train, {len(val):,} val, {len(test):,} test, 56x56, "
          f"{cardinality:.2f} labels per image on average")
    results = {"machine": describe(), "recipe": recipe}
    ours = results["imgcls"] = run_imgcls(train, val, test, recipe)
    met = ours["mAP"] >= AIM_MAP and ours["train_seconds"] <= AIM_SECONDS
    print(f"imgcls {recipe['model']} {ours['epochs']} epochs: test mAP {ours['mAP']:.4f}, macro F1 "
          f"{ours['macro_f1']:.4f}, subset accuracy {ours['subset_accuracy']:.2%}, {ours['images_per_second']:,.0f} "
          f"img/s, {ours['train_seconds']:.0f} s of training (aim mAP >= {AIM_MAP} within {AIM_SECONDS // 60} min: "
          f"{'met' if met else 'not met'})")
    if not args.skip_plain:
        epochs = args.plain_epochs or recipe["epochs"]
        plain = results["plain"] = run_plain(train, test, recipe, epochs, args.workers)
        print(f"plain PyTorch fp32 BCE loop, {args.workers} workers, {epochs} epochs: test mAP {plain['mAP']:.4f}, "
              f"macro F1 {plain['macro_f1']:.4f}, subset accuracy {plain['subset_accuracy']:.2%}, "
              f"{plain['images_per_second']:,.0f} img/s, {plain['train_seconds']:.0f} s of training")
        results["speedup_per_image"] = ours["images_per_second"] / plain["images_per_second"]
        print(f"imgcls trains {results['speedup_per_image']:.2f}x as many images per second")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
