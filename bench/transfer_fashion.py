"""Transfer learning on Fashion-MNIST, side by side in one run: pixel kNN, kNN on EfficientNet-Lite0
features, a linear probe on those features, and fine-tuning; test accuracy and wall time of each.

    python bench/transfer_fashion.py                         # defaults below
    python bench/transfer_fashion.py --train 60000 --image-size 96

The pretrained rows feed Fashion-MNIST's 28 px grayscale images to the ImageNet backbone through
the transfer adapter (grayscale repeated to RGB, resized to --image-size). Wall time covers fit and
prediction on the test images; the pretrained weights are converted and cached before timing.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from imgcls.data import DataOptions, load_dataset, stratified_split
from imgcls.models import create_model, pretrained_model
from machine import banner  # noqa: E402  (bench/machine.py: the CPU and its flags)


def run(name: str, model, train, test) -> dict:
    start = time.perf_counter()
    model.fit(train)
    fitted = time.perf_counter() - start
    accuracy = model.score(test)
    total = time.perf_counter() - start
    print(f"  {name}: accuracy {accuracy:.2%}, fit {fitted:.1f} s, fit+predict {total:.1f} s", flush=True)
    return {"method": name, "test_accuracy": accuracy, "fit_seconds": fitted, "total_seconds": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=10000, help="training images (stratified subset of 60,000)")
    parser.add_argument("--test", type=int, default=10000, help="test images (first N of 10,000)")
    parser.add_argument("--image-size", type=int, default=64, help="side fed to the backbone")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    print(banner())
    os.environ.setdefault("IMGCLS_PROGRESS", "0")
    splits = load_dataset("fashion-mnist", DataOptions(val_fraction=0))
    train = splits.train
    if args.train < len(train):
        _, keep = stratified_split(train.labels.numpy(), args.train / len(train), seed=0)
        train = train.subset(keep)
    test = splits.test.subset(np.arange(min(args.test, len(splits.test))))
    pretrained_model("efficientnet_lite0")   # convert and cache outside the timings
    print(f"Fashion-MNIST: {len(train):,} training and {len(test):,} test images; backbone input "
          f"{args.image_size} px; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    common = dict(input_size=args.image_size)
    rows = [
        run("pixel kNN (k=5, L2)", create_model("knn", k=5), train, test),
        run("kNN on Lite0 features (k=10, cosine)", create_model("transfer:efficientnet_lite0", mode="knn",
                                                                 **common), train, test),
        run("linear probe on Lite0 features", create_model("transfer:efficientnet_lite0", mode="probe", **common),
            train, test),
        run(f"fine-tune Lite0 (1 head epoch + {args.finetune_epochs})",
            create_model("transfer:efficientnet_lite0", mode="finetune", head_epochs=1,
                         epochs=args.finetune_epochs, batch_size=64, augment="crop=2,flip", **common), train, test),
    ]
    print("\n| method | test accuracy | fit s | fit + predict s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['test_accuracy']:.2%} | {r['fit_seconds']:.1f} | {r['total_seconds']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
