"""Streaming image files while training: imgcls's streamed datasets against torchvision's
ImageFolder + DataLoader, peak memory as the folder grows, and the in-memory path unchanged.

The folder is made here, with no download: JPEGs of 256-500 px cut from the colour photographs
scikit-image ships (random crops and scales, flips, colour shifts), one class per source photo.

(a) images/s of the training input pipeline with RandomResizedCrop(224) + flip, batches of 64,
    the same number of DataLoader worker processes on both sides, no network:
    - imgcls: a streamed dataset decoded at 224 px (short side, centre crop) by the workers, a
      whole batch per trip, then `rrc,flip` batched on the uint8 batch (imgcls.training.augment);
    - torchvision: ImageFolder with v2.RandomResizedCrop(224) + RandomHorizontalFlip per image on
      the full-size decode, default collate.
(b) peak resident memory of `imgcls train DIR --data-mode stream --model lenet5 --image-size 160
    --epochs 1` on 5,000 of the images (500 per class) and on all of them, against the size the
    images would take decoded into memory at 160 px and against the same run with --data-mode memory.
(c) the in-memory trainer's throughput on Fashion-MNIST (bench/train_fashion.py part (a)), for
    this checkout and for the commit given by --baseline, in one run.

    python bench/stream.py --images 20000 [--folder /tmp/imgcls-stream] [--baseline REV]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("IMGCLS_PROGRESS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from machine import banner  # noqa: E402  (bench/machine.py: the CPU and its flags)

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "colorwheel", "stereo_motorcycle", "logo")


def source_photos() -> dict[str, np.ndarray]:
    import skimage.data
    photos = {}
    for name in PHOTOS:
        image = getattr(skimage.data, name)()
        image = image[0] if isinstance(image, tuple) else image
        photos[name] = np.ascontiguousarray(image[..., :3])
    return photos


def _write_some(args) -> int:
    folder, names, start, count, seed = args
    photos = source_photos()
    rng = np.random.default_rng(seed)
    for i in range(start, start + count):
        name = names[i % len(names)]
        photo = photos[name]
        h, w = photo.shape[:2]
        scale = rng.uniform(0.35, 1.0)
        ch, cw = max(32, int(h * scale)), max(32, int(w * scale * rng.uniform(0.75, 1.33)))
        ch, cw = min(ch, h), min(cw, w)
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = photo[top:top + ch, left:left + cw].astype(np.float32)
        crop = crop * rng.uniform(0.7, 1.3, 3) + rng.uniform(-20, 20)
        image = Image.fromarray(crop.clip(0, 255).astype(np.uint8))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        side = int(rng.integers(256, 501))
        image.thumbnail((side, side)) if max(image.size) > side else None
        if max(image.size) < 256:
            ratio = 256 / max(image.size)
            image = image.resize((round(image.size[0] * ratio), round(image.size[1] * ratio)))
        image.save(folder / name / f"{i:06d}.jpg", quality=90)
    return count


def make_folder(folder: Path, count: int) -> float:
    """count JPEGs in folder/<photo>/, made in parallel; returns seconds (0 if already there)."""
    done = folder / f".made-{count}"
    if done.exists():
        return 0.0
    start = time.perf_counter()
    for name in PHOTOS:
        (folder / name).mkdir(parents=True, exist_ok=True)
    workers = os.cpu_count() or 1
    per = -(-count // workers)
    jobs = [(folder, PHOTOS, w * per, min(per, count - w * per), w) for w in range(workers) if w * per < count]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_some, jobs))
    done.touch()
    return time.perf_counter() - start


def imgcls_pipeline(folder: Path, batches: int, batch: int, workers: int) -> float:
    from imgcls.data import DataOptions, load_dataset
    from imgcls.training.augment import AugmentConfig, augment_batch
    splits = load_dataset(folder, DataOptions(data_mode="stream", size=224, val_fraction=0, test_fraction=0.01))
    train = splits.train
    cfg = AugmentConfig.from_spec("rrc,flip")
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train), generator=gen)
    positions = [order[i * batch:(i + 1) * batch] for i in range(batches + 2)]
    seen, start = 0, None
    for step, (x, ok) in enumerate(train.images.batches(positions, workers=workers)):
        augment_batch(x[ok], cfg, gen)
        if step == 1:                      # the first two batches include starting the workers
            start = time.perf_counter()
        elif step > 1:
            seen += len(x)
    return seen / (time.perf_counter() - start)


def torchvision_pipeline(folder: Path, batches: int, batch: int, workers: int) -> float:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2
    transform = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(),
                            v2.ToDtype(torch.float32, scale=True)])
    loader = torch.utils.data.DataLoader(ImageFolder(str(folder), transform=transform), batch_size=batch,
                                         shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(0))
    seen, start = 0, None
    for step, (x, _) in enumerate(loader):
        if step == 1:
            start = time.perf_counter()
        elif step > 1:
            seen += len(x)
        if step == batches + 1:
            break
    return seen / (time.perf_counter() - start)


def peak_memory_of_training(folder: Path, count: int, out: Path, mode: str = "stream") -> dict:
    """Peak RSS (MB) of one epoch of lenet5 at 160 px on `count` of the images, streamed or in memory."""
    subset = out / f"subset-{count}"
    if not subset.exists():
        for name in PHOTOS:
            (subset / name).mkdir(parents=True)
        for f in (f for f in folder.glob("*/*.jpg") if int(f.stem) < count):   # every class alike
            (subset / f.parent.name / f.name).symlink_to(f)
    command = [str(Path(sys.executable).with_name("imgcls")), "train", str(subset), "--data-mode", mode,
               "--model", "lenet5", "--image-size", "160", "--epochs", "1", "--batch-size", "64",
               "--out", str(out / f"run-{count}-{mode}")]
    start = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-f", "%M", *command], capture_output=True, text=True,
                            env={**os.environ, "IMGCLS_PROGRESS": "0"})
    if result.returncode != 0:
        raise SystemExit(f"training failed: {result.stderr[-2000:]}")
    peak_kb = int(result.stderr.strip().splitlines()[-1])
    images = len(list(subset.glob("*/*.jpg")))
    return {"mode": mode, "images": images, "peak_rss_mb": peak_kb / 1024, "seconds": time.perf_counter() - start,
            "decoded_mb": images * 3 * 160 * 160 / 2**20}


def in_memory_throughput(baseline: str | None) -> dict:
    """bench/train_fashion.py part (a) for this checkout and, in a worktree, for baseline."""
    runs = {"this checkout": ROOT}
    tmp = None
    if baseline:
        tmp = Path(tempfile.mkdtemp(prefix="imgcls-baseline-"))
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tmp), baseline], check=True)
        runs[f"baseline {baseline}"] = tmp
    figures = {}
    try:
        for label, tree in runs.items():
            out = Path(tempfile.mkstemp(suffix=".json")[1])
            subprocess.run([sys.executable, str(tree / "bench" / "train_fashion.py"), "--part", "throughput",
                            "--json", str(out)], check=True, capture_output=True,
                           env={**os.environ, "PYTHONPATH": str(tree)})
            figures[label] = json.loads(out.read_text())["throughput"]["imgcls_images_per_second"]
    finally:
        if tmp:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp)], check=False)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "imgcls-stream")
    parser.add_argument("--batches", type=int, default=40, help="timed batches of 64 per pipeline (default 40)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", default=None, help="git revision for (c); default: skip (c)")
    parser.add_argument("--parts", default="abc")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    print(banner(), flush=True)
    folder = args.folder / f"photos-{args.images}"
    made = make_folder(folder, args.images)
    sizes = [os.path.getsize(p) for p in list(folder.glob("*/*.jpg"))[:500]]
    print(f"folder: {folder}, {args.images} JPEGs in {len(PHOTOS)} classes, ~{statistics.mean(sizes) / 1e3:.0f} kB "
          f"each" + (f" (made in {made:.0f} s)" if made else ""), flush=True)
    results = {"images": args.images, "workers": args.workers}
    if "a" in args.parts:
        ours = [imgcls_pipeline(folder, args.batches, 64, args.workers) for _ in range(args.repeats)]
        theirs = [torchvision_pipeline(folder, args.batches, 64, args.workers) for _ in range(args.repeats)]
        results["pipeline"] = {"imgcls": ours, "torchvision": theirs,
                               "ratio": statistics.median(ours) / statistics.median(theirs)}
        print(f"(a) RandomResizedCrop(224)+flip, batches of 64, {args.workers} workers: imgcls streamed "
              f"{statistics.median(ours):,.0f} img/s, torchvision ImageFolder+DataLoader "
              f"{statistics.median(theirs):,.0f} img/s (median of {args.repeats}): "
              f"{results['pipeline']['ratio']:.2f}x", flush=True)
    if "b" in args.parts:
        with tempfile.TemporaryDirectory() as tmp:
            rows = [peak_memory_of_training(folder, n, Path(tmp)) for n in (min(5000, args.images), args.images)]
            rows.append(peak_memory_of_training(folder, args.images, Path(tmp), mode="memory"))
        results["memory"] = rows
        for row in rows:
            print(f"(b) imgcls train --data-mode {row['mode']}, lenet5 at 160 px, 1 epoch, {row['images']:,} images: peak RSS "
                  f"{row['peak_rss_mb']:,.0f} MB (decoded at 160 px they would take {row['decoded_mb']:,.0f} MB; "
                  f"{row['seconds']:.0f} s)", flush=True)
        growth = rows[1]["peak_rss_mb"] / rows[0]["peak_rss_mb"] - 1
        print(f"    peak RSS grew {growth:.1%} while the images grew {rows[1]['images'] / rows[0]['images']:.1f}x",
              flush=True)
    if "c" in args.parts and args.baseline:
        results["in_memory"] = in_memory_throughput(args.baseline)
        print("(c) in-memory trainer, course CNN on Fashion-MNIST (bench/train_fashion.py (a)): "
              + ", ".join(f"{k} {v:,.0f} img/s" for k, v in results["in_memory"].items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
