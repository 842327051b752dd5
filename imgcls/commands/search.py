"""imgcls search: the nearest indexed images to query images."""

from __future__ import annotations

import argparse
import json
import sys

from imgcls.commands.common import add_command
from imgcls.commands.completers import DATA, completes
from imgcls.errors import ImgclsError

NAME = "search"
HELP = "the nearest indexed images to query images, as text, JSON and a gallery"
EXAMPLES = """examples:
  imgcls search runs/photo-index query.jpg -k 10 --out runs/similar     # gallery.png, gallery.html
  imgcls search runs/fashion-index --from fashion-mnist --split test --n 8 --out runs/fashion-neighbours
  imgcls search runs/photo-index photos/cat/1.jpg --json   # an indexed image: its neighbours, not itself"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, HELP, EXAMPLES)
    parser.add_argument("index", metavar="INDEX", help="index folder or file from `imgcls index`")
    parser.add_argument("queries", metavar="IMAGE", nargs="*",
                        help="image files, folders (searched recursively) or names of indexed items")
    parser.add_argument("-k", type=int, default=10, help="neighbours per query (default: 10)")
    completes(parser.add_argument("--from", dest="from_data", default=None, metavar="DATA",
                                  help="draw queries from a dataset instead (see --split, --n)"), DATA)
    parser.add_argument("--split", default="test", help="--from: the split to draw from (default: test)")
    parser.add_argument("--n", type=int, default=8, help="--from: how many queries (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="--from: seed of the draw (default: 0)")
    parser.add_argument("--ef-search", type=int, default=None,
                        help="HNSW: query-time candidates (more: better recall)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--out", default=None, help="folder for gallery.png, gallery.html, neighbours.json")
    parser.set_defaults(handler=handle)
    return parser


def handle(args) -> int:
    from imgcls.similarity import ImageIndex, queries_from_dataset, queries_from_inputs, write_gallery
    from imgcls.similarity.build import warn_unreadable
    from imgcls.similarity.gallery import results_json
    if args.k < 1 or args.n < 1:
        raise ImgclsError("-k and --n must be at least 1")
    if bool(args.queries) == bool(args.from_data):
        raise ImgclsError("give query images, or --from DATA to draw them from a dataset (not both)")
    index = ImageIndex.load(args.index)
    if args.ef_search:
        index.ef_search = args.ef_search
    failures = []
    if args.from_data:
        queries = queries_from_dataset(index, args.from_data, args.split, args.n, args.seed)
    else:
        queries, failures = queries_from_inputs(index, args.queries)
    results = index.search(queries.images, args.k, queries.exclude)
    if args.json:
        print(json.dumps(results_json(index, queries, results), indent=2))
    else:
        for name, label, found in zip(queries.names, queries.labels, results):
            print(f"{name}" + (f" ({label})" if label else ""))
            for rank, n in enumerate(found, start=1):
                print(f"  {rank:>3}. {n.distance:10.4g}  {n.label:<16} {n.item}")
            if not found:
                print("  (no other indexed images)")
    warn_unreadable(failures)
    if args.out:
        paths = write_gallery(index, queries, results, args.out)
        print(f"gallery: {paths['png']}  {paths['html']}", file=sys.stderr if args.json else sys.stdout)
    return 0
