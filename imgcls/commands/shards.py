"""imgcls shards: write a dataset as WebDataset tar shards with a manifest, for training on many machines."""

from __future__ import annotations

import argparse
import re

from imgcls.commands.common import add_command, add_data_argument

NAME = "shards"
HELP = "write a dataset as WebDataset tar shards, for training on many machines"
EXAMPLES = """examples:
  imgcls shards photos/ --out photos-shards                  # then: imgcls train photos-shards
  imgcls shards labels.csv --out shards/ --shard-size 500MB
  imgcls shards fashion-mnist --out fashion-shards"""

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, HELP, EXAMPLES)
    add_data_argument(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the shards and manifest.json")
    parser.add_argument("--shard-size", type=byte_size, default=10**9, metavar="SIZE",
                        help="bytes of images per shard, as 1GB, 500MB or 64MiB (default: 1GB)")
    parser.set_defaults(handler=handle)
    return parser


def byte_size(text: str) -> int:
    """'1GB', '500MB', '64MiB', '2.5gb' or a plain number of bytes, as bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", text)
    unit = match and match.group(2).lower()
    if not match or unit not in UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1GB, 500MB, 64MiB)")
    size = int(float(match.group(1)) * UNITS[unit])
    if size <= 0:
        raise argparse.ArgumentTypeError(f"a shard size must be positive, not {text!r}")
    return size


def handle(args) -> int:
    import time

    from imgcls.data.shard_writer import write_shards
    start = time.perf_counter()
    manifest = write_shards(args.data, args.out, args.shard_size)
    seconds = time.perf_counter() - start
    images = sum(part["count"] for part in manifest["splits"].values())
    shards = sum(len(part["shards"]) for part in manifest["splits"].values())
    size = sum(shard["bytes"] for part in manifest["splits"].values() for shard in part["shards"])
    parts = ", ".join(f"{split} {part['count']:,}" for split, part in manifest["splits"].items())
    print(f"wrote {images:,} images of {manifest['name']} ({parts}) into {shards:,} shard(s), "
          f"{size / 1e6:,.1f} MB, in {seconds:.1f} s ({images / max(seconds, 1e-9):,.0f} images/s): {args.out}")
    return 0
