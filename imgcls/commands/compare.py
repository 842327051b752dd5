"""imgcls compare: several models trained on identical splits, one leaderboard."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from imgcls.commands.common import add_command, add_data_argument, add_data_flags, add_log_flag, data_options
from imgcls.commands.completers import MODEL_NAME, completes
from imgcls.errors import ImgclsError

NAME = "compare"
HELP = "train several models on identical splits; one leaderboard"
EXAMPLES = """examples:
  imgcls compare fashion-mnist --models knn,linear,mlp,cnn,transfer:efficientnet_lite0 --out runs/ladder
  imgcls compare digits --models knn,linear,mlp --epochs 5 --out runs/digits-ladder
  imgcls compare fashion-mnist --models knn,linear,mlp,cnn,transfer:efficientnet_lite0 \
      --settings recipes/ladder.yaml --out runs/ladder     # per-model settings
  imgcls compare digits --models linear,mlp --log mlflow --out runs/digits   # one MLflow run per model"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, HELP, EXAMPLES)
    add_data_argument(parser)
    completes(parser.add_argument("--models", required=True,
                                  help="comma-separated model names, e.g. knn,linear,mlp,cnn"), MODEL_NAME)
    parser.add_argument("--out", default=None, help="folder for the runs and compare.html (default: runs/compare)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs for every model trained by gradient descent")
    parser.add_argument("--settings", default=None, metavar="FILE",
                        help="YAML mapping each model name to its settings, e.g. "
                             "'transfer:efficientnet_lite0: {input_size: 96}' (see recipes/ladder.yaml)")
    add_log_flag(parser)
    add_data_flags(parser)
    parser.set_defaults(handler=handle)
    return parser


def handle(args) -> int:
    from imgcls.compare import compare
    from imgcls.models.registry import model_class
    from imgcls.run_folder import RunFolder, default_folder
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if not names:
        raise ImgclsError("--models needs at least one model name")
    settings = _model_settings(Path(args.settings), names) if args.settings else {}
    params = {}
    for name in names:
        own = {f.name for f in dataclasses.fields(model_class(name)) if f.init}
        shared = {k: v for k, v in (("epochs", args.epochs), ("seed", args.seed)) if k in own and v is not None}
        params[name] = {**shared, **settings.get(name, {})}
    out = RunFolder(args.out or default_folder("compare"))
    compare(args.data, names, out.path, data_options(args), params, log=args.log)
    print(f"leaderboard: {out.compare_html}")
    return 0


def _model_settings(path: Path, names: list[str]) -> dict[str, dict]:
    """Per-model settings from YAML ({model name: {setting: value}}); models not compared are errors."""
    import yaml
    try:
        settings = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ImgclsError(f"{path}: cannot read settings ({str(exc).splitlines()[0]})") from exc
    if not isinstance(settings, dict) or not all(isinstance(v, dict) for v in settings.values()):
        raise ImgclsError(f"{path}: settings must map each model name to a mapping of setting: value")
    unknown = sorted(set(settings) - set(names))
    if unknown:
        raise ImgclsError(f"{path}: settings for {', '.join(unknown)}, which --models does not list")
    return {name: {key.replace("-", "_"): value for key, value in values.items()} for name, values in settings.items()}
