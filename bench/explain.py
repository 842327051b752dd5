"""Explanations on the CPU: what each method costs, and how faithful it is, in one run.

1. Cost: milliseconds per image of each method (gradcam, gradcam++, saliency,
   integrated-gradients, occlusion) through imgcls.explain, on
   - the ImageNet-pretrained EfficientNet-Lite0 at 224 px (scikit-image photos), and
   - the course CNN (`cnn`) at 64 px;
   each the median over repeats of a batch, divided by its images.
2. Faithfulness, on Fashion-MNIST items (28 px) pasted at random places on 64x64 noise, labelled
   by the item, with the course CNN trained on them:
   - pointing game: the share of test images whose map peaks inside the item's box; a random
     map hits at the box's share of the canvas (19%);
   - deletion: the model's probability of its predicted class as the map's top 0..30% of pixels
     are replaced by the mean pixel; area under that curve (lower = more faithful) against the
     same number of random pixels.

    .venv/bin/python bench/explain.py [--train 10000 --epochs 4 --test 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("IMGCLS_PROGRESS", "0")

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from imgcls.data import load_dataset  # noqa: E402
from imgcls.data.images import decode_image  # noqa: E402
from imgcls.explain import explain  # noqa: E402
from imgcls.explain.attribution import NETWORK_METHODS  # noqa: E402
from imgcls.explain.faithfulness import deletion_curves, pasted_canvases, pointing_game  # noqa: E402
from imgcls.models import create_model, pretrained_model  # noqa: E402
from machine import banner  # noqa: E402  (bench/machine.py: the CPU and its flags)

SIDE = 64
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
SLOW = {"integrated-gradients", "occlusion"}      # hundreds of forward passes per image: fewer images


def ms_per_image(model, images: torch.Tensor, method: str, repeats: int) -> float:
    """Median milliseconds per image of explain(model, images, method), after a warm-up on the same
    batch (the first backward pass of a shape sets up its kernels)."""
    explain(model, images, method=method)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        explain(model, images, method=method)
        times.append((time.perf_counter() - start) / len(images) * 1000)
    return statistics.median(times)


def photos(model) -> torch.Tensor:
    folder = os.path.join(os.environ.get("TMPDIR", "/tmp"), "imgcls-bench-explain")
    os.makedirs(folder, exist_ok=True)
    decoded = []
    for name in PHOTOS:
        path = os.path.join(folder, f"{name}.png")
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(path)
        decoded.append(decode_image(path, model.preprocessing_))
    return torch.from_numpy(np.stack(decoded))


def fashion_canvases(train: int, test: int):
    splits = load_dataset("fashion-mnist")
    items_train = splits.train.images[:, 0].numpy()
    items_test = splits.test.images[:, 0].numpy()
    x, y, _ = pasted_canvases(items_train, splits.train.labels.numpy(), train, SIDE, seed=0)
    xt, yt, boxes = pasted_canvases(items_test, splits.test.labels.numpy(), test, SIDE, seed=1)
    return (x, y), (xt, yt, boxes), list(splits.train.class_names)


def faithfulness(model, x: torch.Tensor, boxes: np.ndarray, slow_images: int) -> dict:
    targets = model.predict(x)
    random_maps = np.random.default_rng(0).random((len(x), SIDE, SIDE))
    rows = {"random": {"pointing": pointing_game(random_maps, boxes),
                       "deletion": float(deletion_curves(model, x, targets).mean())}}
    for method in NETWORK_METHODS:
        n = slow_images if method in SLOW else len(x)
        maps = np.stack([e.map for e in explain(model, x[:n], method=method)])
        rows[method] = {"pointing": pointing_game(maps, boxes[:n]), "images": n,
                        "deletion": float(deletion_curves(model, x[:n], targets[:n], maps).mean()),
                        "deletion_random": float(deletion_curves(model, x[:n], targets[:n]).mean())}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=10000, help="training canvases")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.01, help="SGD with momentum, one-cycle (the cnn's recipe)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--test", type=int, default=200, help="test canvases for the pointing game and deletion")
    parser.add_argument("--slow-images", type=int, default=40,
                        help="test canvases for integrated gradients and occlusion")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["speed", "faithfulness"], default=None,
                        help="speed: time the methods only (the CNN is then trained for a moment: its speed does "
                             "not depend on its weights)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    console = Console()
    console.print(banner())
    result: dict = {"machine": banner(), "args": vars(args)}

    if args.only == "speed":
        args.train, args.epochs = 500, 1
    (x, y), (xt, yt, boxes), names = fashion_canvases(args.train, args.test)
    start = time.perf_counter()
    cnn = create_model("cnn", epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=0)
    cnn.fit(x, y, class_names=names)
    result["cnn"] = {"fit_seconds": time.perf_counter() - start, "test_accuracy": cnn.score(xt, yt)}
    console.print(f"course CNN on {args.train} Fashion-MNIST canvases ({SIDE} px), {args.epochs} epochs: "
                  f"{result['cnn']['fit_seconds']:.0f} s, test accuracy {result['cnn']['test_accuracy']:.1%}")

    if args.only != "faithfulness":
        result["ms_per_image"] = speed(console, cnn, xt, args.repeats)
    if args.only != "speed":
        result["faithfulness"] = faithfulness_table(console, cnn, xt, boxes, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


def speed(console: Console, cnn, xt: torch.Tensor, repeats: int) -> dict:
    lite0 = pretrained_model("efficientnet_lite0")
    images = photos(lite0)
    table = Table(title="milliseconds per image", title_justify="left")
    table.add_column("method")
    table.add_column("EfficientNet-Lite0, 224 px", justify="right")
    table.add_column(f"course CNN, {SIDE} px", justify="right")
    rows = {}
    for method in NETWORK_METHODS:
        slow = method in SLOW
        row = {"efficientnet_lite0": ms_per_image(lite0, images[:2] if slow else images, method,
                                                  1 if slow else repeats),
               "cnn": ms_per_image(cnn, xt[:8] if slow else xt[:32], method, repeats)}
        rows[method] = row
        table.add_row(method, f"{row['efficientnet_lite0']:,.0f}", f"{row['cnn']:,.1f}")
    console.print(table)
    return rows


def faithfulness_table(console: Console, cnn, xt: torch.Tensor, boxes: np.ndarray, args) -> dict:
    scores = faithfulness(cnn, xt, boxes, args.slow_images)
    table = Table(title=f"faithfulness on {args.test} Fashion-MNIST canvases (course CNN)", title_justify="left")
    for column in ("method", "images", "pointing game", "deletion AUC", "deletion AUC, random pixels"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for method, row in scores.items():
        table.add_row(method, str(row.get("images", args.test)), f"{row['pointing']:.1%}", f"{row['deletion']:.3f}",
                      f"{row.get('deletion_random', row['deletion']):.3f}")
    console.print(table)
    console.print(f"a random map's expected pointing game: the box's share of the canvas, {28 * 28 / SIDE ** 2:.1%}")
    return scores


if __name__ == "__main__":
    main()
