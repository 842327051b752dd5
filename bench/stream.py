"""Training on a folder of photographs streamed from disk: imgcls against the plain torchvision way,
peak memory as the folder grows, and the in-memory trainer unchanged.

The folder is made here, with no download: JPEGs of 256-500 px cut from the colour photographs
scikit-image ships (random crops and scales, flips, colour shifts), one class per source photo.
Every timed side uses the same number of DataLoader worker processes (--workers) and the same
batch size; each repeat runs the sides in turn (interleaved), and the medians are compared.

lenet     one epoch of LeNet-5 at 160 px with random resized crops (35-100% of the area) and
          flips, batches of 128, on --train-images photos; images/s of the epoch:
          - imgcls: `imgcls train DIR --data-mode stream --model lenet5 --image-size 160
            --augment rrc,flip` (the workers decode, crop and resize once; the precision and
            layout measured fastest here, bf16 and channels_last included);
          - imgcls with `--cache DIR`, warm (a first run filled it);
          - plain: torchvision's ImageFolder + v2.RandomResizedCrop(160, scale=(0.35, 1)) +
            RandomHorizontalFlip + DataLoader, the same LeNet-5 (imgcls.models.networks.lenet5),
            SGD, fp32, as a plain PyTorch loop is written.
finetune  fine-tuning EfficientNet-Lite0 (ImageNet weights, every layer trained) at 224 px, batches
          of 32, on --finetune-images photos:
          - imgcls: `imgcls train DIR --data-mode stream --model transfer:efficientnet_lite0
            --mode finetune --head-epochs 0 --epochs 1 --augment rrc,flip` (its fast path: the
            precision and layout measured fastest);
          - imgcls with its execution measured as a 5-epoch fine-tune measures it before training
            (cached; one epoch of a few hundred photos is too short to repay the race, so a first
            run of that length takes the defaults, fp32 and contiguous);
          - imgcls in bf16 and channels_last, forced (what the race chooses on a CPU with fast bf16,
            for a fine-tune long enough to measure);
          - imgcls in fp32, contiguous (`--bf16 off --channels-last off`): the fast path's share
            of the speed, and its effect on the validation accuracy (printed for both);
          - plain: timm's tf_efficientnet_lite0 with the same weights, ImageFolder +
            v2.RandomResizedCrop(224, scale=(0.35, 1)) + flip + normalise, DataLoader, AdamW, fp32.
memory    peak memory of `imgcls train DIR --data-mode stream --model lenet5 --image-size 192
          --epochs 1` on --memory-images photos (default 5,000 and 20,000: the folder 4x larger):
          the training process's peak RSS (what /usr/bin/time reports: the largest process), and
          the peak of the proportional set size (PSS: shared pages split) of it and its workers.
decode    JPEG decoding in draft mode (libjpeg's DCT scaling, imgcls's default) against the full
          decode, on 200 of the folder's photos and on scikit-image's own (300-600 px) at 64, 128
          and 224 px: milliseconds per image, and how far the pixels move (mean |difference| of
          0..255 values), beside how far two good resampling filters (PIL's bilinear and
          Lanczos, both from the full decode) differ from each other.
pipeline  images/s of the input pipeline alone (no network) at 224 px, rrc + flip, batches of 64:
          imgcls's workers (decode, crop, resize once) against torchvision's ImageFolder + DataLoader.
inmemory  the in-memory trainer's throughput on Fashion-MNIST (bench/train_fashion.py --part
          throughput) for this checkout and for the commit given by --baseline, in one run.

    python bench/stream.py                       # everything, 20,000 photos (about an hour on 2 cores)
    python bench/stream.py --quick               # every part, small sizes, a few minutes
    python bench/stream.py --parts lenet,finetune --repeats 3 --baseline main
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
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
PARTS = ("lenet", "finetune", "memory", "decode", "pipeline", "inmemory")
RRC_SCALE = 0.35            # imgcls's rrc default; the plain loops use the same range


# -- the folder ------------------------------------------------------------------------------------

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


def subset(folder: Path, count: int, where: Path) -> Path:
    """The first `count` photos of folder (every class alike), as symbolic links in where/subset-<count>."""
    out = where / f"subset-{count}"
    if not out.exists():
        for name in PHOTOS:
            (out / name).mkdir(parents=True)
        for f in (f for f in folder.glob("*/*.jpg") if int(f.stem) < count):
            (out / f.parent.name / f.name).symlink_to(f)
    return out


# -- running a side in a process of its own ----------------------------------------------------------

def run(command: list[str], sample_memory: bool = False, env: dict | None = None) -> dict:
    """Run a command (a fresh process: no side inherits another's warm state); its wall seconds,
    and with sample_memory its peak RSS (/usr/bin/time: the largest process) and the peak PSS of
    it and its children, sampled every 50 ms."""
    env = {**os.environ, "IMGCLS_PROGRESS": "0", "PYTHONPATH": str(ROOT), **(env or {})}
    start = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    peak_pss = [0]
    if sample_memory:
        threading.Thread(target=_sample_pss, args=(proc, peak_pss), daemon=True).start()
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])} ... failed:\n{err[-3000:]}")
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": int(err.strip().splitlines()[-1]) / 1024,
            "peak_pss_mb": peak_pss[0] / 2**20, "stdout": out}


def _sample_pss(proc: subprocess.Popen, peak: list[int]) -> None:
    while proc.poll() is None:
        peak[0] = max(peak[0], sum(_pss(pid) for pid in _tree(proc.pid)))
        time.sleep(0.05)


def _tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                todo += [int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return found


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def imgcls_train(data: Path, out: Path, args: list[str], sample_memory: bool = False, env: dict | None = None) -> dict:
    """`imgcls train` in a fresh process; its run's epoch images/s (history.json) and its costs."""
    shutil.rmtree(out, ignore_errors=True)
    result = run([sys.executable, "-m", "imgcls.cli", "train", str(data), "--data-mode", "stream", *args,
                  "--out", str(out)], sample_memory, env)
    history = json.loads((out / "history.json").read_text())
    result["images_per_second"] = history[-1]["images_per_second"]
    result["val_accuracy"] = history[-1].get("val_accuracy")
    return result


def plain_loop(kind: str, data: Path, workers: int, batches: int | None = None) -> dict:
    """bench/stream.py's plain PyTorch loop (see plain_main) in a fresh process."""
    command = [sys.executable, __file__, "--plain", kind, "--folder", str(data), "--workers", str(workers)]
    result = run(command + (["--batches", str(batches)] if batches else []))
    result.update(json.loads(result["stdout"].strip().splitlines()[-1]))
    return result


# -- the plain loops ------------------------------------------------------------------------------------

def plain_main(kind: str, folder: Path, workers: int) -> None:
    """One epoch of the plain loop over folder, printed as JSON: images/s of the epoch (the loader's
    start included, as imgcls's epoch includes its workers' start) and the last batch's loss."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2
    torch.manual_seed(0)
    if kind == "lenet":
        from imgcls.models.networks import lenet5
        size, batch, mean, std = 160, 128, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        net = lenet5(3, len(PHOTOS), image_size=(size, size))
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    else:
        from imgcls.models.pretrained import pretrained_model
        size, batch, mean, std = 224, 32, (127 / 255,) * 3, (128 / 255,) * 3
        net = pretrained_model("efficientnet_lite0").net_.body       # timm's tf_efficientnet_lite0, its weights
        net.reset_classifier(len(PHOTOS))
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    transform = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(size, scale=(RRC_SCALE, 1.0), antialias=True),
                            v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    dataset = ImageFolder(str(folder), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         drop_last=True, generator=torch.Generator().manual_seed(0))
    net.train()
    seen, start = 0, time.perf_counter()
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seen += len(x)
    print(json.dumps({"images_per_second": seen / (time.perf_counter() - start), "images": seen,
                      "loss": float(loss)}))


# -- the parts ----------------------------------------------------------------------------------------------

def lenet_part(folder: Path, work: Path, count: int, workers: int, repeats: int) -> dict:
    data = subset(folder, count, work)
    flags = ["--model", "lenet5", "--image-size", "160", "--epochs", "1", "--batch-size", "128",
             "--augment", "rrc,flip", "--val-fraction", "0.05", "--test-fraction", "0.05"]
    cache = work / "decoded-cache"
    imgcls_train(data, work / "run-fill", flags + ["--cache", str(cache)])            # fills the cache
    sides = {"imgcls": lambda: imgcls_train(data, work / "run", flags),
             "imgcls --cache (warm)": lambda: imgcls_train(data, work / "run", flags + ["--cache", str(cache)]),
             "plain": lambda: plain_loop("lenet", data, workers)}
    return interleaved(sides, repeats)


def finetune_part(folder: Path, work: Path, count: int, workers: int, repeats: int) -> dict:
    data = subset(folder, count, work)
    flags = ["--model", "transfer:efficientnet_lite0", "--mode", "finetune", "--head-epochs", "0", "--epochs", "1",
             "--batch-size", "32", "--augment", "rrc,flip", "--val-fraction", "0.1", "--test-fraction", "0.05"]
    cache = work / "fast-paths"
    said = measure_finetune_execution(cache, count, epochs=5)
    print(f"    the execution a 5-epoch fine-tune of {count:,} photos measures before training: {said}", flush=True)
    sides = {"imgcls": lambda: imgcls_train(data, work / "run-ft", flags),
             "imgcls, execution measured": lambda: imgcls_train(data, work / "run-ft", flags,
                                                                 env={"IMGCLS_CACHE": str(cache)}),
             "imgcls bf16, channels_last": lambda: imgcls_train(data, work / "run-ft", flags + ["--bf16", "on",
                                                                                             "--channels-last", "on"]),
             "imgcls fp32, contiguous": lambda: imgcls_train(data, work / "run-ft", flags + ["--bf16", "off",
                                                                                          "--channels-last", "off"]),
             "plain": lambda: plain_loop("finetune", data, workers)}
    return interleaved(sides, repeats)


def measure_finetune_execution(cache: Path, count: int, epochs: int) -> str:
    """Choose the fine-tune's execution as a run of `epochs` epochs on `count` photos does before it
    trains (one epoch of them is too short to repay the race: it takes the defaults), in a process of
    its own, with the fast-path cache at `cache`; what it chose."""
    code = f"""
import torch
from imgcls.data.dataset import ImageDataset
from imgcls.models.registry import create_model
from imgcls.training.execution import Settings, choose_execution
from imgcls.training.trainer import build_optimizer
model = create_model("transfer:efficientnet_lite0", mode="finetune", batch_size=32)
net = model.network_for(ImageDataset(torch.zeros((2, 3, 224, 224), dtype=torch.uint8), torch.arange(2), ["a", "b"]))
batch = torch.randint(0, 256, (32, 3, 224, 224), dtype=torch.uint8)
steps = {epochs} * -(-{count} * 85 // 100 // 32)
chosen = choose_execution(net, batch, Settings(), torch.device("cpu"), steps,
                          lambda n: build_optimizer(n, model.training_config()))
print(chosen.name)
"""
    result = run([sys.executable, "-c", code], env={"IMGCLS_CACHE": str(cache)})
    return result["stdout"].strip().splitlines()[-1]


def interleaved(sides: dict, repeats: int) -> dict:
    """Each side once per repeat, in turn; every side's images/s, their median, and the load average."""
    found = {name: [] for name in sides}
    loads = []
    for _ in range(repeats):
        for name, side in sides.items():
            loads.append(os.getloadavg()[0])
            found[name].append(side())
    rates = {name: [r["images_per_second"] for r in runs] for name, runs in found.items()}
    return {"images_per_second": rates, "median": {name: statistics.median(r) for name, r in rates.items()},
            "load_average": loads, "val_accuracy": {n: [r.get("val_accuracy") for r in runs] for n, runs in found.items()}}


def print_speed(title: str, result: dict, aims: dict[str, float]) -> None:
    plain = result["median"]["plain"]
    print(f"{title} (load average {min(result['load_average']):.1f}-{max(result['load_average']):.1f}):")
    for name, median in result["median"].items():
        runs = ", ".join(f"{r:,.1f}" for r in result["images_per_second"][name])
        ratio = "" if name == "plain" else f"  {median / plain:.2f}x plain"
        aim = aims.get(name)
        verdict = "" if aim is None else f" (aim >= {aim}x: {'met' if median / plain >= aim else 'missed'})"
        accuracy = [a for a in result.get("val_accuracy", {}).get(name, []) if a is not None]
        accuracy = f"; val accuracy {', '.join(f'{a:.3f}' for a in accuracy)}" if accuracy else ""
        print(f"    {name:<24}{median:8,.1f} img/s (runs: {runs}){ratio}{verdict}{accuracy}")


def memory_part(folder: Path, work: Path, counts: list[int]) -> list[dict]:
    rows = []
    for count in counts:
        data = subset(folder, count, work)
        result = imgcls_train(data, work / f"run-memory-{count}", ["--model", "lenet5", "--image-size", "192",
                                                                    "--epochs", "1"], sample_memory=True)
        rows.append({"images": count, "peak_rss_mb": result["peak_rss_mb"], "peak_pss_mb": result["peak_pss_mb"],
                     "seconds": result["seconds"], "decoded_mb": count * 3 * 192 * 192 / 2**20,
                     "load_average": os.getloadavg()[0]})
    return rows


def decode_part(folder: Path) -> list[dict]:
    """Draft against full decoding (see the module docstring), one thread."""
    import io

    import skimage.data
    from PIL import ImageOps

    from imgcls.data.images import Preprocessing, decode_image
    torch.set_num_threads(1)
    sources = {"the folder's photos (256-500 px)": [f.read_bytes() for f in sorted(folder.glob("*/*.jpg"))[::97][:200]]}
    originals = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        buffer = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).save(buffer, "JPEG", quality=90)
        originals.append(buffer.getvalue())
    sources["scikit-image's photos (300-600 px)"] = originals * 25
    rows = []
    for label, files in sources.items():
        for size in (64, 128, 224):
            found = {}
            for decode in ("full", "draft"):
                prep = Preprocessing(3, (size, size), decode=decode)
                start = time.perf_counter()
                found[decode] = [decode_image(data, prep).astype(np.int16) for data in files]
                found[decode + "_ms"] = (time.perf_counter() - start) / len(files) * 1e3
            lanczos = [np.asarray(ImageOps.fit(Image.open(io.BytesIO(data)).convert("RGB"), (size, size),
                                               Image.Resampling.LANCZOS)).transpose(2, 0, 1).astype(np.int16)
                       for data in files]
            rows.append({"photos": label, "size": size, "full_ms": found["full_ms"], "draft_ms": found["draft_ms"],
                         "draft_vs_full": float(np.mean([np.abs(a - b).mean() for a, b in zip(found["draft"], found["full"])])),
                         "bilinear_vs_lanczos": float(np.mean([np.abs(a - b).mean() for a, b in zip(found["full"], lanczos)]))})
    return rows


def pipeline_part(folder: Path, batches: int, workers: int, repeats: int) -> dict:
    """imgcls's workers (decode + rrc crop + resize once, then flip) against torchvision's loader."""
    from imgcls.data import DataOptions, load_dataset
    from imgcls.training.augment import AugmentConfig, augment_batch, crop_boxes
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2
    train = load_dataset(folder, DataOptions(data_mode="stream", size=224, val_fraction=0, test_fraction=0.01)).train
    cfg = AugmentConfig.from_spec("rrc,flip")

    def ours() -> float:
        gen = torch.Generator().manual_seed(0)
        order = torch.randperm(len(train), generator=gen)
        positions = [order[i * 64:(i + 1) * 64] for i in range(batches + 2)]
        generators = [torch.Generator().manual_seed(i) for i in range(len(positions))]
        crops = [crop_boxes(len(p), (224, 224), cfg, g) for p, g in zip(positions, generators)]
        generators = [torch.Generator().manual_seed(i) for i in range(len(positions))]
        seen, start = 0, None
        for step, ((x, ok), g) in enumerate(zip(train.images.batches(positions, workers=workers, crops=crops),
                                                generators)):
            augment_batch(x[ok], cfg, g, cropped=True)
            if step == 1:                      # the first two batches include starting the workers
                start = time.perf_counter()
            elif step > 1:
                seen += len(x)
        return seen / (time.perf_counter() - start)

    def theirs() -> float:
        transform = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(224, scale=(RRC_SCALE, 1.0), antialias=True),
                                v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True)])
        loader = torch.utils.data.DataLoader(ImageFolder(str(folder), transform=transform), batch_size=64,
                                             shuffle=True, num_workers=workers,
                                             generator=torch.Generator().manual_seed(0))
        seen, start = 0, None
        for step, (x, _) in enumerate(loader):
            if step == 1:
                start = time.perf_counter()
            elif step > 1:
                seen += len(x)
            if step == batches + 1:
                break
        return seen / (time.perf_counter() - start)

    rates = {"imgcls": [], "plain": []}
    for _ in range(repeats):
        rates["imgcls"].append(ours())
        rates["plain"].append(theirs())
    return {"images_per_second": rates, "median": {k: statistics.median(v) for k, v in rates.items()},
            "load_average": [os.getloadavg()[0]]}


def in_memory_throughput(baseline: str) -> dict:
    """bench/train_fashion.py part (a) for this checkout and, in a worktree, for baseline."""
    tmp = Path(tempfile.mkdtemp(prefix="imgcls-baseline-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tmp), baseline], check=True)
    runs = {"this checkout": ROOT, f"baseline {baseline}": tmp}
    figures = {}
    try:
        for label, tree in runs.items():
            out = Path(tempfile.mkstemp(suffix=".json")[1])
            subprocess.run([sys.executable, str(tree / "bench" / "train_fashion.py"), "--part", "throughput",
                            "--json", str(out)], check=True, capture_output=True,
                           env={**os.environ, "PYTHONPATH": str(tree)})
            figures[label] = json.loads(out.read_text())["throughput"]["imgcls_images_per_second"]
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp)], check=False)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000, help="photos in the folder made (default 20,000)")
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "imgcls-stream")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    parser.add_argument("--train-images", type=int, default=6000, help="photos in lenet's epoch (default 6,000)")
    parser.add_argument("--finetune-images", type=int, default=800, help="photos in finetune's epoch (default 800)")
    parser.add_argument("--memory-images", default="5000,20000", help="folder sizes for memory (default 5000,20000)")
    parser.add_argument("--batches", type=int, default=40, help="pipeline: timed batches of 64 (default 40)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="DataLoader workers on every side (default: imgcls's, min(8, cores))")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", default=None, help="git revision for inmemory; default: skip inmemory")
    parser.add_argument("--quick", action="store_true", help="small sizes: a check that every part runs")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plain", choices=["lenet", "finetune"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        return plain_main(args.plain, args.folder, args.workers)
    if args.quick:
        args.images, args.train_images, args.finetune_images = 2000, 1000, 96
        args.memory_images, args.batches, args.repeats = "500,2000", 8, 1
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"unknown part(s) {', '.join(unknown)}; valid: {', '.join(PARTS)}")
    print(banner(), flush=True)
    folder = args.folder / f"photos-{args.images}"
    made = make_folder(folder, args.images)
    print(f"folder: {folder}, {args.images:,} JPEGs (256-500 px) in {len(PHOTOS)} classes"
          + (f" (made in {made:.0f} s)" if made else "") + f"; {args.workers} workers on every side", flush=True)
    results: dict = {"images": args.images, "workers": args.workers, "machine": banner()}
    work = Path(tempfile.mkdtemp(prefix="imgcls-stream-bench-"))
    try:
        if "lenet" in parts:
            results["lenet"] = lenet_part(folder, work, min(args.train_images, args.images), args.workers, args.repeats)
            print_speed(f"lenet: one epoch of LeNet-5 at 160 px, rrc + flip, {min(args.train_images, args.images):,} "
                        "photos, batches of 128", results["lenet"], {"imgcls": 1.5, "imgcls --cache (warm)": 3.0})
        if "finetune" in parts:
            count = min(args.finetune_images, args.images)
            results["finetune"] = finetune_part(folder, work, count, args.workers, args.repeats)
            print_speed(f"finetune: one epoch fine-tuning EfficientNet-Lite0 at 224 px, rrc + flip, {count:,} photos, "
                        "batches of 32", results["finetune"], {"imgcls": 1.5})
        if "memory" in parts:
            counts = [min(int(n), args.images) for n in args.memory_images.split(",")]
            results["memory"] = rows = memory_part(folder, work, counts)
            for row in rows:
                print(f"memory: imgcls train --data-mode stream, lenet5 at 192 px, 1 epoch, {row['images']:,} photos "
                      f"(decoded {row['decoded_mb']:,.0f} MB): peak RSS {row['peak_rss_mb']:,.0f} MB (the training "
                      f"process), peak PSS {row['peak_pss_mb']:,.0f} MB (it and its workers), {row['seconds']:.0f} s, "
                      f"load average {row['load_average']:.1f}", flush=True)
            growth = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"] - 1
            print(f"    peak RSS at {rows[-1]['images']:,} photos: {rows[-1]['peak_rss_mb']:,.0f} MB (aim <= 1,200 MB: "
                  f"{'met' if rows[-1]['peak_rss_mb'] <= 1200 else 'missed'}); it grew {growth:+.1%} while the folder "
                  f"grew {rows[-1]['images'] / rows[0]['images']:.1f}x (aim <= +10%: "
                  f"{'met' if growth <= 0.10 else 'missed'})", flush=True)
        if "decode" in parts:
            results["decode"] = decode_part(folder)
            print("decode: draft against full JPEG decoding, one thread (pixels: mean |difference| of 0..255):")
            for row in results["decode"]:
                print(f"    {row['photos']:<36} {row['size']:>3} px: full {row['full_ms']:.2f} ms, draft "
                      f"{row['draft_ms']:.2f} ms ({row['full_ms'] / row['draft_ms']:.2f}x); draft vs full "
                      f"{row['draft_vs_full']:.2f}, bilinear vs Lanczos {row['bilinear_vs_lanczos']:.2f}", flush=True)
        if "pipeline" in parts:
            results["pipeline"] = pipeline_part(folder, args.batches, args.workers, args.repeats)
            print_speed(f"pipeline: input alone, rrc + flip at 224 px, batches of 64", results["pipeline"], {})
        if "inmemory" in parts and args.baseline:
            results["inmemory"] = in_memory_throughput(args.baseline)
            print("inmemory: the in-memory trainer, course CNN on Fashion-MNIST (bench/train_fashion.py "
                  "--part throughput): " + ", ".join(f"{k} {v:,.0f} img/s" for k, v in results["inmemory"].items()),
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
