"""imgcls data info: what is in a dataset."""

from __future__ import annotations

import argparse
import json

from imgcls.commands.common import add_command, add_data_argument, add_data_flags, data_options

NAME = "data"
HELP = "inspect datasets"
INFO_HELP = "counts per class, image size and mode, skipped files, sample grid"
EXAMPLES = """examples:
  imgcls data info fashion-mnist
  imgcls data info photos/ --out photos-info"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, HELP, EXAMPLES)
    data_commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    info = add_command(data_commands, "info", INFO_HELP, EXAMPLES)
    add_data_argument(info)
    info.add_argument("--out", default=None, help="folder for info.json and samples.png (default: ./<name>-info)")
    info.add_argument("--json", action="store_true", help="print JSON instead of tables")
    add_data_flags(info)
    info.set_defaults(handler=handle_info)
    return parser


def handle_info(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from imgcls.data.inspect import write_info
    from imgcls.data.load import load_dataset
    splits = load_dataset(args.data, data_options(args))
    info, paths = write_info(splits, args.out or f"{splits.name.replace('/', '_')}-info", seed=args.seed)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    console = Console()
    split_names = list(info["sizes"])
    labels = info.get("labels")
    kind = "labels (multi-label)" if labels else "classes"
    console.print(f"[bold]{info['name']}[/]: {info['classes']} {kind}, {info['mode']} "
                  f"{info['image_size'][0]}x{info['image_size'][1]}", highlight=False)
    table = Table()
    table.add_column("label" if labels else "class")
    for split in split_names:
        table.add_column(f"{split} images" if labels else split, justify="right")
    if labels:
        table.add_column("frequency (train)", justify="right")
    for name, counts in info["counts"].items():
        share = [f"{labels['frequency'][name]:.1%}"] if labels else []
        table.add_row(name, *(f"{counts.get(s, 0):,}" for s in split_names), *share)
    table.add_section()
    table.add_row("images" if labels else "total", *(f"{info['sizes'][s]:,}" for s in split_names))
    console.print(table)
    if labels:
        console.print(f"label cardinality {labels['cardinality']:.2f} labels per image; "
                      f"{labels['without_labels']:.1%} of images carry none", highlight=False)
        pairs = ", ".join(f"{' + '.join(c['labels'])} ({c['images']:,})" for c in labels["co_occurrences"][:5])
        if pairs:
            console.print(f"most frequent pairs: {pairs}", highlight=False)
    console.print(f"pixel mean {info['pixels']['mean']}, std {info['pixels']['std']} (0..1 scale)")
    for s in info["skipped_files"]:
        console.print(f"[yellow]skipped[/] {s['path']}: {s['reason']}")
    console.print(f"samples: {paths['png']}\ninfo:    {paths['json']}")
    return 0
