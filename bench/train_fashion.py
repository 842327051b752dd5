"""Training speed on Fashion-MNIST, on this machine's CPU.

(a) throughput: the course CNN under imgcls's trainer (uint8 data in memory, batched
    augmentation, bf16 autocast and channels_last where --bf16 auto measures them faster) against a plain PyTorch
    loop over the same network (torch DataLoader over a Dataset with torchvision transforms v2,
    fp32), in one run, same augmentation (random crop with padding 4, horizontal flip), same
    optimiser and batch size. Images per second, median over timed windows.
(b) time to accuracy: imgcls's CPU recipes trained on the 60,000 training images and evaluated
    once on the 10,000 test images, with the wall time of training.
(c) precision: the 5-minute recipe shortened to --precision-epochs, trained in fp32 (contiguous)
    and in bf16 autocast with channels_last, on 54,000 images with 6,000 held out for validation:
    validation accuracy and speed of each, to back the bf16/channels_last default.

    python bench/train_fashion.py                    # both parts
    python bench/train_fashion.py --part throughput
    python bench/train_fashion.py --part accuracy --recipe 5min 5min-94 30min
    python bench/train_fashion.py --part precision
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from machine import banner

from imgcls.data import DataOptions, load_dataset
from imgcls.models import create_model
from imgcls.models.networks import cnn

# imgcls's best CPU recipes live in recipes/*.yaml, the files `imgcls train --config` reads.
RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"
# name: (test accuracy aimed at, training seconds allowed); the first two are the earlier recipes.
TARGETS = {"5min": (0.93, 300), "15min": (0.94, 900), "5min-94": (0.94, 300), "30min": (0.955, 1800)}
RECIPES = {name: yaml.safe_load((RECIPE_DIR / f"fashion-{name}.yaml").read_text()) for name in TARGETS}


class PlainDataset(Dataset):
    """What a plain PyTorch user writes: one sample at a time through torchvision transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float):
        self.images, self.labels = images, labels
        self.transform = v2.Compose([v2.RandomCrop(28, padding=4), v2.RandomHorizontalFlip(),
                                     v2.ToDtype(torch.float32, scale=True), v2.Normalize([mean], [std])])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def reference_throughput(train, steps: int, batch_size: int, workers: int) -> float:
    torch.manual_seed(0)
    pixels = train.images.float() / 255
    dataset = PlainDataset(train.images, train.labels, pixels.mean().item(), pixels.std().item())
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
    net = cnn(1, 10, image_size=(28, 28))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    net.train()
    return _timed(iter(loader), steps, batch_size, lambda x, y: _plain_step(net, opt, x, y))


def _plain_step(net, opt, x, y) -> None:
    loss = F.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def imgcls_throughput(train, steps: int, batch_size: int) -> tuple[float, dict]:
    """The trainer's own epoch loop on a slice of the data big enough for `steps` batches."""
    from imgcls.training.trainer import Trainer
    model = create_model("cnn", batch_size=batch_size, lr=0.05, augment="crop,flip", epochs=1)
    part = train.subset(range((steps + 8) * batch_size))
    trainer = Trainer(model.network_for(part), model.training_config())
    trainer.setup(part)
    images, labels = part.images.to(trainer.device), part.labels.to(trainer.device)
    gen = torch.Generator().manual_seed(0)
    batches = ((trainer.augmented(images[idx], gen), labels[idx])
               for idx in torch.randperm(len(part), generator=gen).split(batch_size))
    trainer.net.train()
    speed = _timed(batches, steps, batch_size, lambda x, y: trainer.step(x, y, 0.05))
    return speed, {"bf16": trainer.bf16, "channels_last": trainer.channels_last}


def _timed(batches, steps: int, batch_size: int, step) -> float:
    """Median images/s over windows of 5 steps, after 3 warm-up steps; data preparation included."""
    rates = []
    for _ in range(3):
        step(*next(batches))
    for _ in range(steps // 5):
        start = time.perf_counter()
        for _ in range(5):
            step(*next(batches))
        rates.append(5 * batch_size / (time.perf_counter() - start))
    return statistics.median(rates)


def time_to_accuracy(splits, recipe: str) -> dict:
    settings = dict(RECIPES[recipe])
    model = create_model(settings.pop("model"), **settings)
    start = time.perf_counter()
    model.fit(splits.train)
    seconds = time.perf_counter() - start
    accuracy = model.score(splits.test)
    target, budget = TARGETS[recipe]
    return {"recipe": recipe, **RECIPES[recipe], "train_seconds": round(seconds, 1), "test_accuracy": accuracy,
            "target": f">= {target:.1%} within {budget // 60} min", "met": accuracy >= target and seconds <= budget}


def precision_comparison(epochs: int) -> list[dict]:
    splits = load_dataset("fashion-mnist", DataOptions(val_fraction=0.1))
    rows = []
    for bf16, channels_last in (("off", "off"), ("on", "on")):
        settings = {**RECIPES["5min"], "epochs": epochs, "bf16": bf16, "channels_last": channels_last, "tta": "none"}
        model = create_model(settings.pop("model"), **settings)
        start = time.perf_counter()
        model.fit(splits.train)
        seconds = time.perf_counter() - start
        rows.append({"bf16": bf16, "channels_last": channels_last, "epochs": epochs,
                     "images_per_second": len(splits.train) * epochs / seconds,
                     "val_accuracy": model.score(splits.val)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["throughput", "accuracy", "precision", "both"], default="both",
                        help="both = throughput and accuracy")
    parser.add_argument("--precision-epochs", type=int, default=3)
    parser.add_argument("--recipe", nargs="+", choices=[*RECIPES, "all"], default=["all"],
                        help="recipes to train side by side, in this order (default all)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per throughput measurement")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    os.environ.setdefault("IMGCLS_PROGRESS", "0")
    splits = load_dataset("fashion-mnist", DataOptions(val_fraction=0))
    print(banner())
    results = {}
    if args.part in ("throughput", "both"):
        ours, precision = imgcls_throughput(splits.train, args.steps, args.batch_size)
        plain = {w: reference_throughput(splits.train, args.steps, args.batch_size, w) for w in (0, 2)}
        best_plain = max(plain.values())
        results["throughput"] = {"imgcls_images_per_second": ours, "imgcls_precision": precision,
                                 "plain_images_per_second": plain, "speedup_vs_best_plain": ours / best_plain}
        print(f"(a) course CNN, batch {args.batch_size}, crop+flip: imgcls {ours:,.0f} img/s "
              f"(bf16={precision['bf16']}, channels_last={precision['channels_last']}); plain PyTorch fp32 "
              + ", ".join(f"{v:,.0f} img/s with {w} workers" for w, v in plain.items())
              + f"; speed-up {ours / best_plain:.2f}x over the faster plain loop")
    if args.part in ("accuracy", "both"):
        results["accuracy"] = []
        for recipe in (RECIPES if "all" in args.recipe else args.recipe):
            row = time_to_accuracy(splits, recipe)
            results["accuracy"].append(row)
            print(f"(b) {recipe}: {row['model']} {row['epochs']} epochs, {row['train_seconds']:.0f} s, "
                  f"test accuracy {row['test_accuracy']:.2%} (target {row['target']}: "
                  f"{'met' if row['met'] else 'not met'})")
    if args.part == "precision":
        results["precision"] = precision_comparison(args.precision_epochs)
        for row in results["precision"]:
            print(f"(c) bf16={row['bf16']}, channels_last={row['channels_last']}: {row['epochs']} epochs at "
                  f"{row['images_per_second']:,.0f} img/s, validation accuracy {row['val_accuracy']:.2%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
