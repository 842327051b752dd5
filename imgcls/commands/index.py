"""imgcls index: embed a dataset's images and build (or grow) a similarity-search index."""

from __future__ import annotations

import argparse

from imgcls.commands.common import add_command, add_data_argument, add_data_flags, data_options

NAME = "index"
HELP = "embed a dataset's images and build a similarity-search index"
EXAMPLES = """examples:
  imgcls index fashion-mnist --split train --out runs/fashion-index            # raw pixels, exact search
  imgcls index photos/ --features efficientnet_lite0 --kind hnsw --out runs/photo-index
  imgcls index more-photos/ --add --out runs/photo-index    # add images to an existing index, no rebuild"""

def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, HELP, EXAMPLES)
    add_data_argument(parser)
    parser.add_argument("--out", required=True, metavar="INDEX", help="index folder (or .safetensors file)")
    parser.add_argument("--features", default=None,
                        help="pixels, a saved network (run folder or .safetensors) or a pretrained model name "
                             "(default: pixels)")
    parser.add_argument("--kind", choices=["exact", "hnsw"], default=None,
                        help="exact search (default), or an approximate HNSW graph (faiss) for large collections")
    parser.add_argument("--split", default=None, help="comma-separated splits to index (default: all)")
    parser.add_argument("--add", action="store_true",
                        help="add DATA's images to the existing index at --out (those it holds are skipped)")
    parser.add_argument("--m", type=int, default=None, help="HNSW: links per node (default: 32)")
    parser.add_argument("--ef-construction", type=int, default=None,
                        help="HNSW: build-time candidates (default: 200)")
    parser.add_argument("--ef-search", type=int, default=None, help="HNSW: query-time candidates (default: 64)")
    add_data_flags(parser)
    parser.set_defaults(handler=handle)
    return parser


def handle(args) -> int:
    from imgcls.similarity import INDEX_SETTINGS, index_dataset, open_index_for
    chosen = {key: getattr(args, key) for key in INDEX_SETTINGS if getattr(args, key) is not None}
    index, path = open_index_for(args.out, args.add, chosen)
    splits = [s.strip() for s in args.split.split(",")] if args.split else None
    result = index_dataset(index, args.data, splits, data_options(args))
    index.save(path)
    already = f" ({result.skipped:,} already there, skipped)" if result.skipped else ""
    print(f"{'added' if args.add else 'indexed'} {result.added:,} images of {result.name}{already} "
          f"({index.features}, {index.kind}); the index holds {len(index):,}: {path}")
    return 0
