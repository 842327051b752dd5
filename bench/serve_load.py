"""Load on `imgcls serve` over loopback, in one run: the default (`--runtime auto`, which runs
EfficientNet-Lite0 through its cached ONNX export where that is measured faster) against the
PyTorch path (`--runtime torch`, what `serve` ran before), at 1, 8 and 32 concurrent clients.

Both servers run at once, each in its own process (`python -m imgcls.cli serve`) with the
default micro-batching (--max-batch 32); they take turns under load, level by level and repeat
by repeat, so a neighbour's load on a shared CPU hits both alike (the idle one waits on its
socket). The clients are asyncio tasks in this process (httpx), each posting one of the sample
JPEGs that ship with imgcls (imgcls/data/samples) per request, in a loop for --seconds. Figures
are medians over --repeats of requests/s, and p50/p95 latency over all repeats' requests; the
ratio is default / PyTorch. Loads are bounded in count and time and only ever target 127.0.0.1.

The default server uses the runtime cache as `imgcls serve` would ($IMGCLS_CACHE, else
$XDG_CACHE_HOME/imgcls, else ~/.cache/imgcls; --cache DIR to use another), so the first run
exports the model there once before it starts serving.

    python bench/serve_load.py                                   # EfficientNet-Lite0, 10 s x 3 per level
    python bench/serve_load.py --seconds 3 --repeats 1           # a quick look
    python bench/serve_load.py --model runs/fashion-5min --json /tmp/serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from machine import banner  # noqa: E402  (bench/machine.py: the CPU and its flags)

SAMPLES = Path(__file__).resolve().parent.parent / "imgcls" / "data" / "samples"
RUNTIMES = {"default (--runtime auto)": "auto", "PyTorch (--runtime torch)": "torch"}


def sample_jpegs() -> list[tuple[str, bytes]]:
    return [(path.name, path.read_bytes()) for path in sorted(SAMPLES.glob("*.jpg"))]


def start_server(model: str, runtime: str, max_batch: int, log) -> tuple[subprocess.Popen, str]:
    """A server on a free loopback port, once it answers /healthz (a first export can take a minute)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "imgcls.cli", "serve", *([model] if model else []), "--port", str(port),
               "--runtime", runtime, "--max-batch", str(max_batch)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 900
    while time.time() < deadline and process.poll() is None:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.5)
    process.kill()
    log.seek(0)
    raise SystemExit(f"the {runtime} server did not start:\n{log.read()[-2000:]}")


async def load(url: str, clients: int, seconds: float, photos: list[tuple[str, bytes]]) -> dict:
    """`clients` concurrent loops posting one photo per request for `seconds`."""
    latencies, errors = [], 0
    stop = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient, index: int) -> None:
        nonlocal errors
        i = index
        while time.perf_counter() < stop:
            name, data = photos[i % len(photos)]
            i += 1
            start = time.perf_counter()
            reply = await http.post(url + "/v1/classify", files={"file": (name, data, "image/jpeg")})
            if reply.status_code == 200:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        began = time.perf_counter()
        await asyncio.gather(*(client(http, i) for i in range(clients)))
        elapsed = time.perf_counter() - began
    return {"requests": len(latencies), "errors": errors, "requests_per_second": len(latencies) / elapsed,
            "latencies_s": latencies}


def summary(runs: list[dict]) -> dict:
    """Median requests/s over repeats; p50/p95 latency over every repeat's requests."""
    ms = np.array([t for r in runs for t in r["latencies_s"]]) * 1000
    return {"requests_per_second": statistics.median(r["requests_per_second"] for r in runs),
            "repeats_requests_per_second": [round(r["requests_per_second"], 2) for r in runs],
            "requests": sum(r["requests"] for r in runs), "errors": sum(r["errors"] for r in runs),
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
            "p95_ms": float(np.percentile(ms, 95)) if len(ms) else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="saved model or pretrained name (default: efficientnet_lite0)")
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration per level and repeat")
    parser.add_argument("--repeats", type=int, default=3, help="runs per level and runtime (median; default 3)")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--max-batch", type=int, default=32, help="the servers' micro-batch (default: serve's 32)")
    parser.add_argument("--cache", default=None, metavar="DIR", help="runtime cache for the servers (IMGCLS_CACHE)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    print(banner(), flush=True)
    os.environ.setdefault("IMGCLS_PROGRESS", "0")
    if args.cache:
        os.environ["IMGCLS_CACHE"] = args.cache
    photos = sample_jpegs()
    levels = [int(c) for c in args.clients.split(",")]
    servers, logs = {}, {}
    try:
        for label, runtime in RUNTIMES.items():        # one at a time: the default may export first
            logs[label] = tempfile.TemporaryFile("w+")
            servers[label] = start_server(args.model, runtime, args.max_batch, logs[label])
            asyncio.run(load(servers[label][1], 2, 2.0, photos))         # warm-up
            logs[label].seek(0)
            said = " | ".join(line.strip() for line in logs[label].read().splitlines() if line.strip())
            print(f"{label}: {said}", flush=True)
        runs = {(label, c): [] for label in RUNTIMES for c in levels}
        for repeat in range(args.repeats):
            for clients in levels:
                for label in RUNTIMES:
                    result = asyncio.run(load(servers[label][1], clients, args.seconds, photos))
                    runs[label, clients].append(result)
                    print(f"repeat {repeat + 1}/{args.repeats}, {clients:2} clients, {label:26}: "
                          f"{result['requests_per_second']:7.1f} req/s, errors {result['errors']}", flush=True)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)
    rows = []
    default, pytorch = RUNTIMES
    print(f"\nmedians of {args.repeats} repeat(s) of {args.seconds:g} s; load average now "
          f"{os.getloadavg()[0]:.2f}\n")
    print("| clients | runtime | req/s | p50 ms | p95 ms | errors |\n|---|---|---|---|---|---|")
    for clients in levels:
        for label in RUNTIMES:
            row = {"runtime": label, "clients": clients, **summary(runs[label, clients])}
            rows.append(row)
            print(f"| {clients} | {label} | {row['requests_per_second']:.1f} | {row['p50_ms']:.1f} | "
                  f"{row['p95_ms']:.1f} | {row['errors']} |")
    print()
    for clients in levels:
        fast, slow = (next(r for r in rows if r["runtime"] == label and r["clients"] == clients)
                      for label in (default, pytorch))
        ratio = fast["requests_per_second"] / max(slow["requests_per_second"], 1e-9)
        print(f"{clients:2} clients: default / PyTorch = {ratio:.2f}x req/s" + ("  (aim: at least 4x)" if clients == 32
                                                                                else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"banner": banner(), "args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
