"""Load on `imgcls serve` over loopback: requests per second and p50/p99 latency at 1, 8 and 32
concurrent clients, with micro-batching (--max-batch 32) and without (--max-batch 1), in one run.

The server runs in its own process (`python -m imgcls.cli serve`); clients are threads here, each
posting one photo per request in a loop for --seconds. Loads are bounded in count and time and
only ever target 127.0.0.1.

    python bench/serve_load.py                       # the pretrained EfficientNet-Lite0
    python bench/serve_load.py --model runs/fashion-5min --seconds 5
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import skimage.data
from PIL import Image
from machine import banner  # noqa: E402  (bench/machine.py: the CPU and its flags)


def photo_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(skimage.data.coffee()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def start_server(model: str, max_batch: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "imgcls.cli", "serve", *([model] if model else []), "--port", str(port),
               "--max-batch", str(max_batch), "--queue-size", "1024"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"server did not start: {process.stderr.read()[-2000:]}")


def load(url: str, clients: int, seconds: float, payload: bytes) -> dict:
    latencies, errors, stop = [], [], time.perf_counter() + seconds
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while time.perf_counter() < stop:
                start = time.perf_counter()
                reply = http.post(url + "/v1/classify", files={"file": ("coffee.jpg", payload, "image/jpeg")})
                with lock:
                    (latencies if reply.status_code == 200 else errors).append(time.perf_counter() - start)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "errors": len(errors),
            "requests_per_second": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="saved model, .onnx file or pretrained name (default: Lite0)")
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration per level")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    print(banner())
    os.environ.setdefault("IMGCLS_PROGRESS", "0")
    payload = photo_bytes()
    rows = []
    for label, max_batch in (("no batching (--max-batch 1)", 1), ("micro-batching (--max-batch 32)", 32)):
        process, url = start_server(args.model, max_batch)
        try:
            load(url, 2, 2.0, payload)                       # warm-up
            for clients in map(int, args.clients.split(",")):
                row = {"mode": label, **load(url, clients, args.seconds, payload)}
                rows.append(row)
                print(f"{label:32} {clients:3} clients: {row['requests_per_second']:7.1f} req/s, "
                      f"p50 {row['p50_ms']:8.1f} ms, p99 {row['p99_ms']:8.1f} ms, errors {row['errors']}", flush=True)
        finally:
            process.terminate()
            process.wait(timeout=30)
    print("\n| mode | clients | req/s | p50 ms | p99 ms |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['clients']} | {r['requests_per_second']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
