"""imgcls doctor: check a dataset before training on it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imgcls.commands.common import add_command, add_data_argument, add_data_flags, data_options
from imgcls.errors import ImgclsError

NAME = "doctor"
HELP = ("check a dataset: unreadable files, wrong extensions, duplicates, "
        "near-duplicates, leakage between splits, class balance, likely label errors")
EXAMPLES = """examples:
  imgcls doctor photos/                                  # photos-doctor/doctor.html, doctor.json
  imgcls doctor photos/ --fail-on leakage,corrupt        # exit status 1 when either has findings (CI)
  imgcls doctor photos/ --quarantine ../photos-quarantine   # move unreadable files and redundant byte copies
  imgcls doctor fashion-mnist --near 0.04 --out runs/fashion-doctor
  imgcls doctor photos/ --features efficientnet_lite0 --near 0.02   # near-duplicates by embedding
  imgcls doctor fashion-mnist --label-errors                          # likely label errors (cleanlab)
  imgcls doctor photos/ --label-errors --features efficientnet_lite0 --relabel-csv review.csv"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, HELP, EXAMPLES)
    add_data_argument(parser)
    parser.add_argument("--out", default=None,
                        help="folder for doctor.json and doctor.html (default: ./<name>-doctor)")
    parser.add_argument("--features", default="pixels",
                        help="what near-duplicates (and label errors) are compared on: pixels, a saved network or "
                             "a pretrained model name (default: pixels)")
    parser.add_argument("--near", type=float, default=None, metavar="THRESHOLD",
                        help="near-duplicate limit: RMS pixel difference on a 0..1 scale for pixels (default: 0.03), "
                             "cosine distance for a network's embeddings (default: 0.02)")
    parser.add_argument("--neighbours", type=int, default=10, help="nearest images searched per image (default: 10)")
    parser.add_argument("--imbalance", type=float, default=3.0, metavar="RATIO",
                        help="warn when train's largest class is over RATIO times its smallest (default: 3)")
    parser.add_argument("--tiny", type=int, default=10, metavar="N",
                        help="warn about classes with fewer than N training images (default: 10)")
    parser.add_argument("--fail-on", default=None, metavar="CHECKS",
                        help="exit with status 1 when any of these checks has findings: comma list of corrupt, "
                             "mismatch, duplicates, near-duplicates, leakage, imbalance, tiny, label-errors, or any")
    parser.add_argument("--label-errors", action="store_true",
                        help="look for likely label errors: out-of-fold predictions of a quick model on --features, "
                             "ranked by confident learning (cleanlab)")
    parser.add_argument("--label-model", choices=("knn", "logistic"), default="knn",
                        help="the quick model of --label-errors: kNN (k=10, distance-weighted) or logistic regression "
                             "(default: knn)")
    parser.add_argument("--folds", type=int, default=5, help="folds of the out-of-fold predictions (default: 5)")
    parser.add_argument("--relabel-csv", default=None, metavar="FILE",
                        help="write a manifest CSV of every file with the suggested label in place of each likely "
                             "error's, flagged files first, for review (implies --label-errors); nothing is changed")
    parser.add_argument("--quarantine", default=None, metavar="DIR",
                        help="move unreadable files and the redundant byte-identical copies (a train copy stays) "
                             "into DIR, keeping their relative paths, logged in DIR/quarantine.json; "
                             "near-duplicates are reported, never moved")
    add_data_flags(parser)
    parser.set_defaults(handler=handle)
    return parser


def handle(args) -> int:
    from imgcls.doctor import (DoctorOptions, check_quarantine, diagnose, parse_fail_on, print_report, quarantine,
                               write_relabel_csv, write_report)
    if args.strict:
        raise ImgclsError("--strict does not apply to doctor: it reports unreadable files instead of stopping")
    if args.neighbours < 1 or args.tiny < 0 or args.imbalance < 1 or (args.near is not None and args.near < 0):
        raise ImgclsError("--neighbours must be at least 1, --imbalance at least 1, --tiny and --near at least 0")
    if args.folds < 2:
        raise ImgclsError("--folds must be at least 2")
    fail_on = parse_fail_on(args.fail_on)
    if "label-errors" in (args.fail_on or "") and not (args.label_errors or args.relabel_csv):
        raise ImgclsError("--fail-on label-errors needs --label-errors")
    options = DoctorOptions(features=args.features, near=args.near, neighbours=args.neighbours,
                            imbalance=args.imbalance, tiny=args.tiny, fail_on=fail_on,
                            label_errors=bool(args.label_errors or args.relabel_csv), label_model=args.label_model,
                            folds=args.folds)
    if args.quarantine:
        check_quarantine(args.data, args.quarantine)
    if args.relabel_csv:
        from imgcls.data.load import dataset_files
        if dataset_files(args.data, flat_ok=True, missing_ok=True) is None:
            raise ImgclsError(f"--relabel-csv writes a manifest of files; {args.data} is not a dataset of image files")
    report = diagnose(args.data, data_options(args), options)
    paths = write_report(report, _doctor_out(args.out, args.data, report.name))
    print_report(report)
    print(f"report: {paths['html']}  {paths['json']}")
    if args.relabel_csv and report.label_errors is not None:
        csv_path = write_relabel_csv(report.files, report.label_errors, args.relabel_csv)
        print(f"relabel manifest: {csv_path} ({len(report.label_errors):,} suggested label(s); review it, then "
              f"train on it)")
    if args.quarantine:
        moves = quarantine(report, args.quarantine)
        for move in moves:
            print(f"moved {move.source} -> {move.target} ({move.reason})")
        print(f"quarantine: {len(moves)} file(s) moved" + (f", listed in {Path(args.quarantine) / 'quarantine.json'}"
                                                         if moves else ""))
    failed = report.failed()
    if failed:
        print(f"imgcls doctor: failing checks: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _doctor_out(out: str | None, data: str, name: str) -> Path:
    """--out, or ./<name>-doctor unless that lies inside the dataset folder (where it would become a class)."""
    if out:
        return Path(out)
    default = Path(f"{name.replace('/', '_')}-doctor")
    source = Path(data).expanduser()
    if source.is_dir() and default.resolve().is_relative_to(source.resolve()):
        raise ImgclsError(f"the default report folder {default} lies inside the dataset; choose one with --out")
    return default
