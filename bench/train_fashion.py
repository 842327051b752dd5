"""Training speed and accuracy on Fashion-MNIST, on this machine's CPU.

(a) throughput: the course CNN under imgcls's trainer (uint8 data in memory, batched
    augmentation, precision, layout, threads and compile chosen by measurement for a 10-epoch
    run over the 60,000 images), the same with --bf16 off (fp32: what a CPU without fast bf16
    gets), and a plain PyTorch loop over the same network (torch DataLoader over a Dataset with
    torchvision transforms v2, fp32, 0 and 2 workers): same augmentation (random crop with
    padding 4, horizontal flip), optimiser and batch size. The contenders take turns, a window
    of 20 steps each, and each one's median images/s counts. Also the FLOPs of a training step
    (torch.utils.flop_counter: convolutions and matrix products, forward and backward) and the
    fraction they reach of the machine's GEMM peak, measured in the same run (torch.matmul on
    2048 x 2048 matrices, fp32 and bf16).
(b) time to accuracy: imgcls's CPU recipes, each stating its time budget (recipes/fashion-*.yaml),
    run as `imgcls train fashion-mnist --config ...`: the epochs planned from the speed measured,
    trained on the 60,000 training images and evaluated once on the 10,000 test images; the
    command's wall time (aim: within 10% of the budget) and the test accuracy.
(c) precision: the 5-minute recipe shortened to --precision-epochs, trained in fp32 (contiguous)
    and in bf16 autocast with channels_last, on 54,000 images with 6,000 held out for validation:
    validation accuracy and speed of each.
(d) choice: for the course CNN, the 5-minute recipe's VGG, ResNet-20 and the MLP, one epoch of
    the trainer with the fast path chosen automatically (measured afresh, in a cache of this
    run's own, for the network's usual run) against one epoch in each forced setting (fp32 /
    bf16, contiguous / channels_last), epochs taking turns: the automatic choice's speed as a
    fraction of the best forced one's (aim: 0.95 or more).
(e) ablation: the airbench-style trainer options, each added alone to the 5-minute recipe
    shortened to --ablation-epochs, on 54,000 images with 6,000 held out: validation accuracy
    (with and without TTA) and training time, over --seeds seeds.
(f) profile: torch.profiler over steps of the trainer in fp32 and of the plain loop: CPU time per
    phase (data, forward and loss, backward, optimiser step) and per kind of operation.

    python bench/train_fashion.py                    # (a) and (b)
    python bench/train_fashion.py --part throughput
    python bench/train_fashion.py --part accuracy --recipe 5min 10min 30min
    python bench/train_fashion.py --part precision
    python bench/train_fashion.py --part choice [--quick]
    python bench/train_fashion.py --part ablation [--quick]
    python bench/train_fashion.py --part profile --steps 20
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision.transforms import v2

from machine import banner

from imgcls.data import DataOptions, load_dataset
from imgcls.models import create_model
from imgcls.models.networks import cnn
from imgcls.training.schedule import image_size_at
from imgcls.training.trainer import Hook, Trainer

# imgcls's best CPU recipes live in recipes/*.yaml, the files `imgcls train --config` reads.
RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"
# name: (test accuracy aimed at, seconds allowed): recipes by time budget (each states time_budget).
TARGETS = {"5min": (0.93, 300), "10min": (0.94, 600), "30min": (0.955, 1800)}
# Each recipe's model settings (its time_budget is the command's, not the model's).
RECIPES = {name: {k: v for k, v in yaml.safe_load((RECIPE_DIR / f"fashion-{name}.yaml").read_text()).items()
                  if k != "time_budget"} for name in TARGETS}
# (d): each network as it is usually trained (the run whose length the automatic choice weighs).
NETWORKS = {
    "cnn": dict(model="cnn", batch_size=128, lr=0.05, augment="crop,flip", epochs=10),
    "vgg-5min": {**{k: v for k, v in RECIPES["5min"].items() if k != "tta"}, "epochs": 11},
    "resnet20": dict(model="resnet20", batch_size=128, lr=0.1, augment="crop,flip", epochs=10),
    "mlp": dict(model="mlp", batch_size=128, lr=0.05, epochs=10),
}
WINDOW = 20
FORCED = [("off", "off"), ("off", "on"), ("on", "off"), ("on", "on")]     # (bf16, channels_last)


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


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


# -- (a) throughput -------------------------------------------------------------------------------
class Contender:
    """Something that trains the course CNN a step at a time: a name, its thread count, its steps."""

    def __init__(self, name: str, steps, threads: int | None = None):
        self.name, self.steps, self.threads, self.rates = name, steps, threads or torch.get_num_threads(), []

    def window(self, size: int, batch_size: int) -> None:
        torch.set_num_threads(self.threads)
        start = time.perf_counter()
        for _ in range(size):
            next(self.steps)
        self.rates.append(size * batch_size / (time.perf_counter() - start))


def plain_contender(train, batch_size: int, workers: int) -> Contender:
    torch.manual_seed(0)
    pixels = train.images.float() / 255
    dataset = PlainDataset(train.images, train.labels, pixels.mean().item(), pixels.std().item())
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
    net = cnn(1, 10, image_size=(28, 28))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    net.train()

    def steps():
        while True:
            for x, y in loader:
                loss = F.cross_entropy(net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                yield
    return Contender(f"plain PyTorch, fp32, {workers} workers", steps())


def imgcls_contender(train, batch_size: int, **settings) -> tuple[Contender, Trainer]:
    """The trainer set up for a 10-epoch run over train (so that its automatic choices weigh such a
    run), stepping through shuffled batches: gathering, augmentation and the step, as in an epoch."""
    model = create_model("cnn", batch_size=batch_size, lr=0.05, augment="crop,flip", epochs=10, **settings)
    trainer = Trainer(model.network_for(train), model.training_config())
    threads = torch.get_num_threads()
    trainer.setup(train)
    chosen = torch.get_num_threads()
    torch.set_num_threads(threads)
    images, labels = train.images.to(trainer.device), train.labels.to(trainer.device)
    gen = torch.Generator().manual_seed(0)
    trainer.net.train()

    def steps():
        while True:
            for idx in torch.randperm(len(train), generator=gen).split(batch_size):
                if len(idx) == batch_size:
                    trainer.step(*trainer.training_batch(images[idx], labels[idx], gen), 0.05)
                    yield
    label = "imgcls" + (", --bf16 off" if settings.get("bf16") == "off" else "")
    return Contender(f"{label} ({trainer.execution.name})", steps(), chosen), trainer


def throughput(train, steps: int, batch_size: int) -> dict:
    ours, trainer = imgcls_contender(train, batch_size)
    fp32, trainer32 = imgcls_contender(train, batch_size, bf16="off")
    contenders = [ours, fp32, plain_contender(train, batch_size, 0), plain_contender(train, batch_size, 2)]
    for c in contenders:          # warm-up (and compile, where chosen)
        start = time.perf_counter()
        for _ in range(3):
            torch.set_num_threads(c.threads)
            next(c.steps)
        c.warmup_seconds = time.perf_counter() - start
    # Windows of WINDOW steps: a DataLoader's workers prepare up to 4 batches while the others run,
    # which a short window would not count.
    for _ in range(max(3, steps // WINDOW)):
        for c in contenders:
            c.window(WINDOW, batch_size)
    peak = gemm_peak()
    flops = step_flops(trainer, batch_size)
    best_plain = max(statistics.median(c.rates) for c in contenders[2:])
    rows = []
    for c, t in ((ours, trainer), (fp32, trainer32), *((c, None) for c in contenders[2:])):
        rate = statistics.median(c.rates)
        row = {"name": c.name, "images_per_second": rate, "vs_best_plain": rate / best_plain,
               "warmup_seconds": c.warmup_seconds}
        precision = "bf16" if t is not None and t.bf16 else "fp32"
        row["gflops"] = rate * flops / 1e9
        row["peak_fraction"] = row["gflops"] / peak[precision]
        row["peak_precision"] = precision
        rows.append(row)
    return {"batch_size": batch_size, "flops_per_image": flops, "gemm_peak_gflops": peak, "contenders": rows}


def gemm_peak(n: int = 2048, repeats: int = 7) -> dict[str, float]:
    """The machine's matrix-multiply speed, GFLOP/s: median of repeats of an n x n product."""
    peak = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        torch.matmul(a, b)
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(a, b)
            seconds.append(time.perf_counter() - start)
        peak[name] = 2 * n ** 3 / statistics.median(seconds) / 1e9
    return peak


def step_flops(trainer: Trainer, batch_size: int) -> float:
    """FLOPs per image of a training step (forward and backward) of the trainer's network."""
    net = copy.deepcopy(trainer.net).float().train().to(memory_format=torch.contiguous_format)
    x = torch.zeros(batch_size, 1, 28, 28)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(net(x), torch.zeros(batch_size, dtype=torch.long)).backward()
    return counter.get_total_flops() / batch_size


# -- (f) profile: where a training step's time goes ------------------------------------------------
PHASES = ("data", "forward and loss", "backward", "optimiser step")
OP_GROUPS = {"convolutions": ("conv",), "matrix products": ("aten::mm", "aten::addmm", "aten::linear"),
             "batch norm": ("batch_norm",), "pooling": ("pool",),
             "activations and dropout": ("relu", "threshold", "clamp", "bernoulli", "dropout"),
             "optimiser kernels": ("_fused_sgd", "sgd")}


def profile_steps(train, batch_size: int, steps: int) -> dict:
    """torch.profiler over `steps` steps of the trainer in fp32 (--bf16 off, the rest chosen as
    usual) and of the plain loop (0 workers): CPU time per phase of a step, and per kind of operation."""
    from torch.profiler import ProfilerActivity, profile, record_function
    model = create_model("cnn", batch_size=batch_size, lr=0.05, augment="crop,flip", epochs=10, bf16="off")
    trainer = Trainer(model.network_for(train), model.training_config())
    trainer.setup(train)
    trainer.net.train()
    gen = torch.Generator().manual_seed(0)

    def ours():
        with record_function("data"):
            idx = torch.randint(0, len(train), (batch_size,), generator=gen)
            x, y = trainer.training_batch(train.images[idx], train.labels[idx], gen)
        with record_function("forward and loss"):
            with trainer._autocast():
                loss = trainer.task.loss(trainer.model(x), y, label_smoothing=0.0)
        with record_function("backward"):
            loss.backward()
        with record_function("optimiser step"):
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)

    torch.manual_seed(0)
    pixels = train.images.float() / 255
    loader = iter(DataLoader(PlainDataset(train.images, train.labels, pixels.mean().item(), pixels.std().item()),
                             batch_size=batch_size, shuffle=True, drop_last=True))
    net = cnn(1, 10, image_size=(28, 28)).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def plain():
        with record_function("data"):
            x, y = next(loader)
        with record_function("forward and loss"):
            loss = F.cross_entropy(net(x), y)
        with record_function("backward"):
            opt.zero_grad()
            loss.backward()
        with record_function("optimiser step"):
            opt.step()

    found = {}
    for name, step in ((f"imgcls, --bf16 off ({trainer.execution.name})", ours), ("plain PyTorch, fp32, 0 workers", plain)):
        for _ in range(3):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        events = prof.key_averages()
        phases = {e.key: e.cpu_time_total / steps / 1e3 for e in events if e.key in PHASES}
        groups = {group: sum(e.self_cpu_time_total for e in events if any(k in e.key for k in keys)) / steps / 1e3
                  for group, keys in OP_GROUPS.items()}
        found[name] = {"phases_ms": phases, "operations_ms": groups,
                       "images_per_second": batch_size / (sum(phases.values()) / 1e3)}
    return found


# -- (b) time to accuracy ---------------------------------------------------------------------------
def time_to_accuracy(recipe: str) -> dict:
    """`imgcls train fashion-mnist --config recipes/fashion-RECIPE.yaml` as a user runs it, in a
    process of its own: the planner fits the epochs to the recipe's budget at the speed it
    measures, and the budget covers the whole command, so the command's wall time is what counts."""
    import subprocess
    import sys
    out = Path(tempfile.mkdtemp(prefix=f"imgcls-recipe-{recipe}-"))
    command = [sys.executable, "-m", "imgcls.cli", "train", "fashion-mnist", "--config",
               str(RECIPE_DIR / f"fashion-{recipe}.yaml"), "--out", str(out)]
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "IMGCLS_PROGRESS": "0"})
    seconds = time.perf_counter() - start
    report = json.loads((out / "report.json").read_text())
    config = json.loads((out / "config.json").read_text())
    target, budget = TARGETS[recipe]
    return {"recipe": recipe, "model": config["model"], "epochs": config["params"].get("epochs"),
            "wall_seconds": round(seconds, 1), "fit_seconds": report.get("timings", {}).get("fit_seconds"),
            "test_accuracy": report["accuracy"], "target": f">= {target:.1%} within {budget // 60} min",
            "met": report["accuracy"] >= target and seconds <= budget * 1.1}


# -- (c) precision ----------------------------------------------------------------------------------
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


# -- (d) the automatic choice against every forced setting ------------------------------------------
class FirstEpochOnly(Hook):
    """Stops a run after its first epoch: the run is set up for all its epochs (the automatic choice
    weighs them) but only one is timed."""

    def on_epoch_end(self, trainer, record):
        trainer.state.stopped_early = True


def epoch_speed(train, network: str, **settings) -> dict:
    """One epoch of the trainer over train: images/s, the execution, and the setup's seconds (the
    automatic choice's measuring, where it measured)."""
    options = {**NETWORKS[network], **settings}
    model = create_model(options.pop("model"), **options)
    trainer = Trainer(model.network_for(train), model.training_config(), hooks=[FirstEpochOnly()])
    start = time.perf_counter()
    state = trainer.fit(train)
    record = state.history[0]
    return {"images_per_second": record["images_per_second"], "execution": trainer.execution.name,
            "setup_seconds": time.perf_counter() - start - record["seconds"]}


def choice_comparison(train, networks: list[str], compile_: str, rounds: int) -> list[dict]:
    rows = []
    threads = torch.get_num_threads()
    for network in networks:
        convolutional = network != "mlp"
        settings = {"auto": {"compile": compile_}}
        settings |= {f"bf16 {b}, channels_last {c}": dict(bf16=b, channels_last=c, threads=threads, compile="off")
                     for b, c in FORCED if convolutional or c == "off"}
        runs: dict[str, list[dict]] = {name: [] for name in settings}
        before = os.environ.get("IMGCLS_CACHE")
        with tempfile.TemporaryDirectory() as cache:
            os.environ["IMGCLS_CACHE"] = cache           # the automatic choice measured afresh, in round 1
            try:
                for _ in range(rounds):
                    for name, options in settings.items():
                        runs[name].append(epoch_speed(train, network, **options))
            finally:
                os.environ.pop("IMGCLS_CACHE") if before is None else os.environ.update(IMGCLS_CACHE=before)
        speed = {name: statistics.median(r["images_per_second"] for r in found) for name, found in runs.items()}
        best = max((name for name in speed if name != "auto"), key=speed.get)
        ratio = speed["auto"] / speed[best]
        auto = runs["auto"][0]
        rows.append({"network": network, "images_per_second": speed, "auto_execution": auto["execution"],
                     "measuring_seconds": auto["setup_seconds"], "best_forced": best, "auto_vs_best": ratio,
                     "met": ratio >= 0.95, "load": os.getloadavg()})
        print(f"(d) {network}: auto ({auto['execution']}, measured in {auto['setup_seconds']:.0f} s) "
              f"{speed['auto']:,.0f} img/s; forced: "
              + ", ".join(f"{name} {v:,.0f}" for name, v in speed.items() if name != "auto")
              + f"; auto at {ratio:.2f}x the best forced ({best}): {'met' if ratio >= 0.95 else 'not met'}; {load()}",
              flush=True)
    return rows


# -- (e) ablation of the airbench-style options -----------------------------------------------------
# Each row adds its options to the 5-minute recipe (shortened to --ablation-epochs). The recipe
# already has label smoothing, so its row takes it away.
ABLATIONS = {
    "5-minute recipe": {},
    "whiten": {"whiten": True},
    "dirac": {"dirac": True},
    "norm_bias_lr=16": {"norm_bias_lr": 16.0},
    "norm_bias_lr=64": {"norm_bias_lr": 64.0},
    "lookahead=5, bn_momentum=0.4": {"lookahead": 5, "bn_momentum": 0.4},
    "flip=alternate": {"augment": "crop=2,flip=alternate"},
    "label_smoothing=0": {"label_smoothing": 0.0},
    "progressive_size=0.6": {"progressive_size": 0.6},
}
TTA_COLUMNS = ("none", "flip", "multicrop")


def ablation(epochs: int, seeds: int, rows: list[str], train_images: int | None) -> list[dict]:
    splits = load_dataset("fashion-mnist", DataOptions(val_fraction=0.1))
    if train_images:
        splits.train = splits.train.subset(range(train_images))
    results = []
    for name in rows:
        results.append(ablation_row(splits, name, ABLATIONS[name], epochs, seeds))
        print_ablation_row(results[-1], results[0])
    helpful = [r for r in results[1:] if r["gain"] > 0]
    if helpful:
        combined = {k: v for r in helpful for k, v in ABLATIONS[r["name"]].items()}
        results.append(ablation_row(splits, " + ".join(r["name"] for r in helpful), combined, epochs, seeds))
        print_ablation_row(results[-1], results[0])
    return results


def ablation_row(splits, name: str, options: dict, epochs: int, seeds: int) -> dict:
    runs = []
    for seed in range(seeds):
        settings = {**RECIPES["5min"], "epochs": epochs, "seed": seed, **options}
        model = create_model(settings.pop("model"), **settings)
        start = time.perf_counter()
        model.fit(splits.train)
        seconds = time.perf_counter() - start
        accuracy = {}
        for tta in TTA_COLUMNS:
            model.tta = tta
            accuracy[tta] = model.score(splits.val)
        runs.append({"seed": seed, "val_accuracy": accuracy, "train_seconds": seconds})
    mean = {tta: statistics.mean(r["val_accuracy"][tta] for r in runs) for tta in TTA_COLUMNS}
    return {"name": name, "options": options, "runs": runs, "val_accuracy": mean,
            "train_seconds": statistics.median(r["train_seconds"] for r in runs),
            "train_gflop": training_flops(options, epochs, len(splits.train)) / 1e9, "load": os.getloadavg()}


def training_flops(options: dict, epochs: int, images: int) -> float:
    """FLOPs of training the 5-minute recipe's VGG for epochs over images, at each epoch's image size."""
    settings = {**RECIPES["5min"], "epochs": epochs, **options}
    model = create_model(settings.pop("model"), **settings)
    net, cfg = model.build_network(1, 10, (28, 28)).train(), model.training_config()
    total = 0.0
    for epoch in range(epochs):
        with FlopCounterMode(display=False) as counter:
            x = torch.zeros(8, 1, *image_size_at(epoch, (28, 28), cfg))
            F.cross_entropy(net(x), torch.zeros(8, dtype=torch.long)).backward()
        total += counter.get_total_flops() / 8 * images
    return total


def print_ablation_row(row: dict, base: dict) -> None:
    row["gain"] = row["val_accuracy"]["flip"] - base["val_accuracy"]["flip"]
    spread = [r["val_accuracy"]["flip"] for r in row["runs"]]
    print(f"(e) {row['name']}: validation accuracy " + ", ".join(f"{row['val_accuracy'][t]:.2%} (tta {t})"
                                                                 for t in TTA_COLUMNS)
          + f"; seeds {', '.join(f'{a:.2%}' for a in spread)} (tta flip); {row['gain']:+.2%} against the recipe; "
          f"{row['train_seconds']:.0f} s, {row['train_gflop']:,.0f} GFLOP of training; {load()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["throughput", "accuracy", "precision", "choice", "ablation", "profile", "both"],
                        default="both", help="both = throughput and accuracy")
    parser.add_argument("--quick", action="store_true",
                        help="choice: epochs of 10,000 images; ablation: 2 epochs, one seed")
    parser.add_argument("--precision-epochs", type=int, default=3)
    parser.add_argument("--ablation-epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3, help="ablation: seeds per row")
    parser.add_argument("--train-images", type=int, default=None,
                        help="ablation: train on the first N of the 54,000 training images (default all)")
    parser.add_argument("--ablations", nargs="+", choices=list(ABLATIONS), default=list(ABLATIONS),
                        help="ablation: the rows to train (the first is the reference)")
    parser.add_argument("--recipe", nargs="+", choices=[*RECIPES, "all"], default=["all"],
                        help="recipes to train side by side, in this order (default all)")
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS),
                        help="choice: the networks to compare")
    parser.add_argument("--rounds", type=int, default=1, help="choice: epochs of each setting, taking turns")
    parser.add_argument("--compile", choices=["auto", "off"], default="off",
                        help="choice: let the automatic choice consider torch.compile (long runs only)")
    parser.add_argument("--steps", type=int, default=100,
                        help="throughput: timed steps per contender (in windows of 20); profile: profiled steps")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    os.environ.setdefault("IMGCLS_PROGRESS", "0")
    splits = load_dataset("fashion-mnist", DataOptions(val_fraction=0))
    print(banner())
    print(load())
    results = {}
    if args.part in ("throughput", "both"):
        results["throughput"] = found = throughput(splits.train, args.steps, args.batch_size)
        peak = found["gemm_peak_gflops"]
        print(f"(a) course CNN, batch {args.batch_size}, crop+flip, {found['flops_per_image'] / 1e6:.0f} MFLOP per "
              f"image per training step; GEMM peak {peak['fp32']:.0f} GFLOP/s fp32, {peak['bf16']:.0f} bf16:")
        for row in found["contenders"]:
            print(f"    {row['name']}: {row['images_per_second']:,.0f} img/s, {row['vs_best_plain']:.2f}x the faster "
                  f"plain loop, {row['gflops']:.0f} GFLOP/s = {row['peak_fraction']:.0%} of the "
                  f"{row['peak_precision']} peak (warm-up {row['warmup_seconds']:.1f} s)")
        print(f"    {load()}")
    if args.part in ("accuracy", "both"):
        results["accuracy"] = []
        for recipe in (RECIPES if "all" in args.recipe else args.recipe):
            row = time_to_accuracy(recipe)
            results["accuracy"].append(row)
            print(f"(b) {recipe}: {row['model']} {row['epochs']} epochs planned, {row['wall_seconds']:.0f} s wall, "
                  f"test accuracy {row['test_accuracy']:.2%} (target {row['target']}: "
                  f"{'met' if row['met'] else 'not met'}); {load()}")
    if args.part == "precision":
        results["precision"] = precision_comparison(args.precision_epochs)
        for row in results["precision"]:
            print(f"(c) bf16={row['bf16']}, channels_last={row['channels_last']}: {row['epochs']} epochs at "
                  f"{row['images_per_second']:,.0f} img/s, validation accuracy {row['val_accuracy']:.2%}")
    if args.part == "choice":
        train = splits.train.subset(range(10_000)) if args.quick else splits.train
        results["choice"] = choice_comparison(train, args.networks, args.compile, args.rounds)
    if args.part == "profile":
        results["profile"] = profile_steps(splits.train, args.batch_size, args.steps)
        for name, row in results["profile"].items():
            print(f"(f) {name}, ms per step of {args.batch_size}: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in row["phases_ms"].items()) + "; of which "
                  + ", ".join(f"{k} {v:.1f}" for k, v in row["operations_ms"].items())
                  + f" ({row['images_per_second']:,.0f} img/s profiled)")
        print(f"    {load()}")
    if args.part == "ablation":
        epochs, seeds = (2, 1) if args.quick else (args.ablation_epochs, args.seeds)
        results["ablation"] = ablation(epochs, seeds, args.ablations, args.train_images)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
