"""The `imgcls` command line: train, eval, predict, export, tune, compare, serve, index, search, data info, models.

Flags are read here and only here, turned into typed config, and handed to the library.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from imgcls import __version__
from imgcls.errors import ImgclsError

EXAMPLES = {
    "train": """examples:
  imgcls train fashion-mnist --model knn --k 5 --metric l1 --out runs/knn
  imgcls train fashion-mnist --model resnet20 --epochs 15 --opt sgd --lr 0.1 --schedule onecycle \\
      --augment crop,flip --seed 0 --out runs/r20
  imgcls train fashion-mnist --model resnet20 ... --out runs/r20 --resume   # continue a killed run
  imgcls train fashion-mnist --config recipe.yaml --out runs/recipe
  imgcls train fashion-mnist --model cnn --nproc 2 --out runs/ddp           # 2 processes (torchrun)
  imgcls train fashion-mnist --model linear --loss svm --epochs 20 --out runs/svm
  imgcls train photos/ --model knn --image-size 32 --strict --out runs/photos
  imgcls train labels.csv --model linear --out runs/csv""",
    "eval": """examples:
  imgcls eval runs/knn fashion-mnist
  imgcls eval runs/knn/model.safetensors photos/ --out runs/knn/eval-photos""",
    "predict": """examples:
  imgcls predict photo.jpg                      # the pretrained ImageNet model (EfficientNet-Lite0)
  imgcls predict --model efficientnet_lite2 photo.jpg
  imgcls predict runs/knn shoe.png              # a saved model (run folder or .safetensors file)
  imgcls predict runs/knn photos/ --top-k 3 --json
  imgcls predict --model runs/cnn/model.int8.onnx photos/ --csv predictions.csv   # an exported model""",
    "export": """examples:
  imgcls export runs/cnn                                    # runs/cnn/model.onnx
  imgcls export runs/cnn --int8 --calibrate fashion-mnist   # runs/cnn/model.int8.onnx, on 200 training images
  imgcls export efficientnet_lite0 --int8 --calibrate photos/ --out lite0.int8.onnx   # photos/<class>/...
  imgcls export runs/cnn/model.safetensors --format torchscript   # runs/cnn/model.torchscript
  imgcls predict --model runs/cnn/model.onnx photo.jpg      # an exported ONNX model predicts like the original""",
    "data": """examples:
  imgcls data info fashion-mnist
  imgcls data info photos/ --out photos-info""",
    "models": """examples:
  imgcls models""",
    "compare": """examples:
  imgcls compare fashion-mnist --models knn,linear,mlp,cnn,transfer:efficientnet_lite0 --out runs/ladder
  imgcls compare digits --models knn,linear,mlp --epochs 5 --out runs/digits-ladder
  imgcls compare fashion-mnist --models knn,linear,mlp,cnn,transfer:efficientnet_lite0 \
      --settings recipes/ladder.yaml --out runs/ladder     # per-model settings""",
    "serve": """examples:
  imgcls serve                                  # the pretrained ImageNet model on http://127.0.0.1:8000
  imgcls serve runs/cnn --port 8080             # a saved model
  imgcls serve lite0.int8.onnx --max-batch 64   # an exported model
  curl -F file=@photo.jpg http://127.0.0.1:8000/v1/classify""",
    "tune": """examples:
  imgcls tune fashion-mnist --model knn --grid k=1,3,5,7,9,11,15 --grid metric=l1,l2 --cv 5 --out runs/knn-tuned
  imgcls tune digits --grid k=1,3,5 --grid weights=uniform,distance --cv 10 --seed 1 --out runs/digits-tuned""",
    "index": """examples:
  imgcls index fashion-mnist --split train --out runs/fashion-index            # raw pixels, exact search
  imgcls index photos/ --features efficientnet_lite0 --kind hnsw --out runs/photo-index
  imgcls index more-photos/ --add --out runs/photo-index    # add images to an existing index, no rebuild""",
    "search": """examples:
  imgcls search runs/photo-index query.jpg -k 10 --out runs/similar     # gallery.png, gallery.html
  imgcls search runs/fashion-index --from fashion-mnist --split test --n 8 --out runs/fashion-neighbours
  imgcls search runs/photo-index photos/cat/1.jpg --json   # an indexed image: its neighbours, not itself""",
    "doctor": """examples:
  imgcls doctor photos/                                  # photos-doctor/doctor.html, doctor.json
  imgcls doctor photos/ --fail-on leakage,corrupt        # exit status 1 when either has findings (CI)
  imgcls doctor photos/ --quarantine ../photos-quarantine   # move unreadable files and redundant byte copies
  imgcls doctor fashion-mnist --near 0.04 --out runs/fashion-doctor
  imgcls doctor photos/ --features efficientnet_lite0 --near 0.02   # near-duplicates by embedding""",
    "lr-find": """examples:
  imgcls lr-find fashion-mnist --model resnet20 --augment crop,flip --out runs/lr""",
}

# Model hyperparameters that are not per-model flags: they come from run-wide flags.
_RUN_WIDE = {"seed"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        try:
            args = _apply_config_file(parser, args, argv)
        except ImgclsError as exc:
            print(f"imgcls: error: {exc}", file=sys.stderr)
            return 2
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except ImgclsError as exc:
        print(f"imgcls: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "; rerun the same command with --resume to continue" if args.command == "train" else ""
        print(f"imgcls: interrupted{hint}", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgcls", description="Image classification: train, evaluate, predict.")
    parser.add_argument("--version", action="version", version=f"imgcls {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = _command(commands, "train", "train a classifier, evaluate it on the test split, save model and reports")
    train.add_argument("data", metavar="DATA", help="dataset name, folder or CSV manifest")
    train.add_argument("--model", default="knn", help="model name from `imgcls models` (default: knn)")
    train.add_argument("--out", default=None, help="run folder for model and reports (default: runs/<model>)")
    train.add_argument("--config", default=None, metavar="FILE",
                       help="YAML file of settings (keys as the flags, e.g. lr: 0.1); flags override it")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--nproc", type=int, default=1, help="train with N processes on this machine (torchrun)")
    _add_data_flags(train)
    _add_model_flags(train)
    train.set_defaults(handler=_train)

    tune = _command(commands, "tune", "choose hyperparameters on validation data (kNN: cross-validation; "
                    "networks: random or grid search), then evaluate the best once on the test split")
    tune.add_argument("data", metavar="DATA", help="dataset name, folder or CSV manifest")
    tune.add_argument("--model", default="knn", help="model to tune (default: knn)")
    tune.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                      help="values to try, repeatable; kNN keys k, metric, weights "
                           "(default: k=1,3,5,7,9,11,15 metric=l1,l2 weights=uniform); for networks any of "
                           "their options, e.g. lr=0.01,0.1 weight_decay=0,5e-4 dropout=0,0.3 epochs=5")
    tune.add_argument("--cv", type=int, default=5, metavar="FOLDS", help="kNN: stratified folds (default: 5)")
    tune.add_argument("--search", choices=["random", "grid"], default="random",
                      help="networks: random sample of the grid or all of it (default: random)")
    tune.add_argument("--trials", type=int, default=20, help="networks, random search: trials (default: 20)")
    tune.add_argument("--out", default=None, help="folder for cv results, model and report (default: runs/tune-<model>)")
    _add_data_flags(tune)
    tune.set_defaults(handler=_tune)

    lr_find = _command(commands, "lr-find", "learning-rate range test: plot loss against learning rate, suggest one")
    lr_find.add_argument("data", metavar="DATA", help="dataset name, folder or CSV manifest")
    lr_find.add_argument("--model", default="cnn", help="network from `imgcls models` (default: cnn)")
    lr_find.add_argument("--out", default=None, help="folder for lr_find.png/json (default: runs/lr-find-<model>)")
    lr_find.add_argument("--steps", type=int, default=100, help="number of learning rates tried (default: 100)")
    lr_find.add_argument("--min-lr", type=float, default=1e-6)
    lr_find.add_argument("--max-lr", type=float, default=10.0)
    _add_data_flags(lr_find)
    _add_model_flags(lr_find)
    lr_find.set_defaults(handler=_lr_find)

    evaluate = _command(commands, "eval", "evaluate a saved model on a dataset's test split")
    evaluate.add_argument("model", metavar="MODEL", help="run folder or .safetensors model file")
    evaluate.add_argument("data", metavar="DATA", help="dataset name, folder or CSV manifest")
    evaluate.add_argument("--split", default="test", choices=["test", "val", "train"])
    evaluate.add_argument("--out", default=None, help="folder for report.json/html (default: print only)")
    _add_data_flags(evaluate)
    evaluate.set_defaults(handler=_eval)

    predict = _command(commands, "predict", "class probabilities for image files and folders")
    predict.add_argument("inputs", metavar="[MODEL] IMAGE_OR_FOLDER", nargs="+",
                         help="an optional saved model (run folder, .safetensors or exported .onnx file) first, "
                              "then images; folders are searched recursively")
    predict.add_argument("--model", default=None,
                         help="saved model, exported .onnx file or pretrained name (default: efficientnet_lite0)")
    predict.add_argument("--top-k", type=int, default=5, help="labels shown per image (default: 5)")
    predict.add_argument("--json", action="store_true", help="print JSON instead of text")
    predict.add_argument("--csv", default=None, metavar="FILE",
                         help="also write rows path,label1,score1,label2,score2,... to FILE")
    predict.set_defaults(handler=_predict)

    export = _command(commands, "export", "export a neural network to ONNX or TorchScript for fast inference")
    export.add_argument("model", metavar="MODEL", help="run folder, .safetensors model file or pretrained name")
    export.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="(default: onnx)")
    export.add_argument("--int8", action="store_true",
                        help="ONNX only: static int8 quantisation (ONNX Runtime), calibrated on --calibrate")
    export.add_argument("--calibrate", default=None, metavar="DATA",
                        help="dataset whose training images calibrate the int8 ranges (decoded at the model's size)")
    export.add_argument("--calibration-images", type=int, default=200, metavar="N",
                        help="calibration images drawn from DATA's training split (default: 200)")
    export.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18)")
    export.add_argument("--out", default=None, metavar="PATH",
                        help="output file (default: beside the model, e.g. <run>/model.onnx, model.int8.onnx, "
                             "model.torchscript; ./<name>.onnx for a pretrained name)")
    export.set_defaults(handler=_export)

    data = _command(commands, "data", "inspect datasets")
    data_commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    info = _command(data_commands, "info", "counts per class, image size and mode, skipped files, sample grid",
                    epilog_key="data")
    info.add_argument("data", metavar="DATA", help="dataset name, folder or CSV manifest")
    info.add_argument("--out", default=None, help="folder for info.json and samples.png (default: ./<name>-info)")
    info.add_argument("--json", action="store_true", help="print JSON instead of tables")
    _add_data_flags(info)
    info.set_defaults(handler=_data_info)

    serve = _command(commands, "serve", "serve a model over HTTP: JSON API and a drag-and-drop web page")
    serve.add_argument("model", metavar="MODEL", nargs="?", default=None,
                       help="saved model, exported .onnx file or pretrained name (default: efficientnet_lite0)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-batch", type=int, default=32, help="images per forward pass (1: no micro-batching)")
    serve.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill up")
    serve.add_argument("--queue-size", type=int, default=256, help="requests waiting before 503 (default: 256)")
    serve.add_argument("--max-upload-mb", type=float, default=20.0, help="request size limit (default: 20)")
    serve.add_argument("--top-k", type=int, default=5)
    serve.set_defaults(handler=_serve)

    comparison = _command(commands, "compare", "train several models on identical splits; one leaderboard")
    comparison.add_argument("data", metavar="DATA", help="dataset name, folder or CSV manifest")
    comparison.add_argument("--models", required=True, help="comma-separated model names, e.g. knn,linear,mlp,cnn")
    comparison.add_argument("--out", default="runs/compare", help="folder for the runs and compare.html")
    comparison.add_argument("--epochs", type=int, default=None, help="epochs for every model trained by gradient descent")
    comparison.add_argument("--settings", default=None, metavar="FILE",
                            help="YAML mapping each model name to its settings, e.g. "
                                 "'transfer:efficientnet_lite0: {input_size: 96}' (see recipes/ladder.yaml)")
    _add_data_flags(comparison)
    comparison.set_defaults(handler=_compare)

    index = _command(commands, "index", "embed a dataset's images and build a similarity-search index")
    index.add_argument("data", metavar="DATA", help="dataset name, folder or CSV manifest")
    index.add_argument("--out", required=True, metavar="INDEX", help="index folder (or .safetensors file)")
    index.add_argument("--features", default=None,
                       help="pixels, a saved network (run folder or .safetensors) or a pretrained model name "
                            "(default: pixels)")
    index.add_argument("--kind", choices=["exact", "hnsw"], default=None,
                       help="exact search (default), or an approximate HNSW graph (faiss) for large collections")
    index.add_argument("--split", default=None, help="comma-separated splits to index (default: all)")
    index.add_argument("--add", action="store_true",
                       help="add DATA's images to the existing index at --out (those it holds are skipped)")
    index.add_argument("--m", type=int, default=None, help="HNSW: links per node (default: 32)")
    index.add_argument("--ef-construction", type=int, default=None, help="HNSW: build-time candidates (default: 200)")
    index.add_argument("--ef-search", type=int, default=None, help="HNSW: query-time candidates (default: 64)")
    _add_data_flags(index)
    index.set_defaults(handler=_index)

    search = _command(commands, "search", "the nearest indexed images to query images, as text, JSON and a gallery")
    search.add_argument("index", metavar="INDEX", help="index folder or file from `imgcls index`")
    search.add_argument("queries", metavar="IMAGE", nargs="*",
                        help="image files, folders (searched recursively) or names of indexed items")
    search.add_argument("-k", type=int, default=10, help="neighbours per query (default: 10)")
    search.add_argument("--from", dest="from_data", default=None, metavar="DATA",
                        help="draw queries from a dataset instead (see --split, --n)")
    search.add_argument("--split", default="test", help="--from: the split to draw from (default: test)")
    search.add_argument("--n", type=int, default=8, help="--from: how many queries (default: 8)")
    search.add_argument("--seed", type=int, default=0, help="--from: seed of the draw (default: 0)")
    search.add_argument("--ef-search", type=int, default=None, help="HNSW: query-time candidates (more: better recall)")
    search.add_argument("--json", action="store_true", help="print JSON instead of text")
    search.add_argument("--out", default=None, help="folder for gallery.png, gallery.html, neighbours.json")
    search.set_defaults(handler=_search)

    doctor = _command(commands, "doctor", "check a dataset: unreadable files, wrong extensions, duplicates, "
                      "near-duplicates, leakage between splits, class balance")
    doctor.add_argument("data", metavar="DATA", help="dataset name, folder or CSV manifest")
    doctor.add_argument("--out", default=None, help="folder for doctor.json and doctor.html (default: ./<name>-doctor)")
    doctor.add_argument("--features", default="pixels",
                        help="what near-duplicates are compared on: pixels, a saved network or a pretrained model "
                             "name (default: pixels)")
    doctor.add_argument("--near", type=float, default=None, metavar="THRESHOLD",
                        help="near-duplicate limit: RMS pixel difference on a 0..1 scale for pixels (default: 0.03), "
                             "cosine distance for a network's embeddings (default: 0.02)")
    doctor.add_argument("--neighbours", type=int, default=10, help="nearest images searched per image (default: 10)")
    doctor.add_argument("--imbalance", type=float, default=3.0, metavar="RATIO",
                        help="warn when train's largest class is over RATIO times its smallest (default: 3)")
    doctor.add_argument("--tiny", type=int, default=10, metavar="N",
                        help="warn about classes with fewer than N training images (default: 10)")
    doctor.add_argument("--fail-on", default=None, metavar="CHECKS",
                        help="exit with status 1 when any of these checks has findings: comma list of corrupt, "
                             "mismatch, duplicates, near-duplicates, leakage, imbalance, tiny, or any")
    doctor.add_argument("--quarantine", default=None, metavar="DIR",
                        help="move unreadable files and the redundant byte-identical copies (a train copy stays) "
                             "into DIR, keeping their relative paths, logged in DIR/quarantine.json; "
                             "near-duplicates are reported, never moved")
    _add_data_flags(doctor)
    doctor.set_defaults(handler=_doctor)

    models = _command(commands, "models", "list the models in the registry")
    models.set_defaults(handler=_models)
    return parser


def _apply_config_file(parser: argparse.ArgumentParser, args, argv) -> argparse.Namespace:
    """Settings from a YAML file become the train command's defaults; unknown keys are errors."""
    import yaml
    path = Path(args.config)
    try:
        settings = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ImgclsError(f"{path}: cannot read config ({str(exc).splitlines()[0]})") from exc
    if not isinstance(settings, dict):
        raise ImgclsError(f"{path}: a config file must be a mapping of setting: value")
    train = parser._subparsers._group_actions[0].choices["train"]
    known = {a.dest: a for a in train._actions}
    defaults = {}
    for key, value in settings.items():
        dest = key.replace("-", "_")
        dest = dest if dest in known and not dest.startswith("param_") else f"param_{dest}"
        if dest not in known or dest in ("config", "help", "data"):
            raise ImgclsError(f"{path}: unknown setting {key!r}")
        action = known[dest]
        defaults[dest] = action.type(str(value).lower() if isinstance(value, bool) else str(value)) \
            if action.type and value is not None else value
    train.set_defaults(**defaults)
    return parser.parse_args(argv)


def _command(commands, name: str, help_text: str, epilog_key: str | None = None) -> argparse.ArgumentParser:
    return commands.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                               epilog=EXAMPLES.get(epilog_key or name),
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--seed", type=int, default=0, help="seed for splits and training (default: 0)")
    group.add_argument("--val-fraction", type=float, default=0.1, help="validation share carved from train")
    group.add_argument("--test-fraction", type=float, default=0.2, help="test share, where the data has no test split")
    group.add_argument("--image-size", type=int, default=None, help="side in pixels for image files")
    group.add_argument("--channels", type=int, choices=[1, 3], default=None, help="1 (grayscale) or 3 (RGB)")
    group.add_argument("--resize", choices=["crop", "pad", "stretch"], default="crop",
                       help="how differently sized images reach --image-size (default: crop)")
    group.add_argument("--strict", action="store_true", help="stop on unreadable files instead of skipping them")
    group.add_argument("--coarse", action="store_true", help="CIFAR-100: the 20 coarse superclasses")


def _data_options(args) -> "DataOptions":
    from imgcls.data.load import DataOptions
    return DataOptions(val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed,
                       size=args.image_size, channels=args.channels, resize=args.resize, strict=args.strict,
                       coarse=args.coarse)


def _model_fields() -> dict[str, tuple[type, list[str]]]:
    """Every hyperparameter of every registered model: name -> (type, models having it)."""
    from imgcls.models import list_models
    from imgcls.models.registry import model_class
    from imgcls.models.transfer import TransferClassifier
    fields: dict[str, tuple[type, list[str]]] = {}
    prefixed = {"timm:NAME": model_class("timm:NAME"), "transfer:NAME": TransferClassifier}
    for name, cls in {**list_models(), **prefixed}.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init and f.name not in _RUN_WIDE:
                kind = hints[f.name] if hints[f.name] in (int, float, str, bool) else str
                kind = _yes_no if kind is bool else kind
                fields.setdefault(f.name, (kind, []))[1].append(name)
    return fields


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model hyperparameters (each applies to the models named)")
    for name, (kind, owners) in sorted(_model_fields().items()):
        group.add_argument(f"--{name.replace('_', '-')}", dest=f"param_{name}", type=kind, default=None,
                           metavar="yes|no" if kind is _yes_no else kind.__name__.upper(),
                           help=f"({_owners_text(owners)})")


def _owners_text(owners: list[str]) -> str:
    return "all neural networks" if len(owners) > 4 else ", ".join(owners)


def _yes_no(text: str) -> bool:
    value = text.lower()
    if value not in ("yes", "no", "true", "false", "on", "off", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected yes or no, not {text!r}")
    return value in ("yes", "true", "on", "1")


def _model_params(args) -> dict:
    from imgcls.models.registry import model_class
    cls = model_class(args.model)
    own = {f.name for f in dataclasses.fields(cls) if f.init}
    given = {k[len("param_"):]: v for k, v in vars(args).items() if k.startswith("param_") and v is not None}
    foreign = sorted(set(given) - own)
    if foreign:
        raise ImgclsError(f"--{foreign[0].replace('_', '-')} does not apply to model {args.model!r} "
                          f"(its parameters: {', '.join(sorted(own - _RUN_WIDE))})")
    return {**given, **({"seed": args.seed} if "seed" in own else {})}


def _train(args) -> int:
    from imgcls.runs import TrainConfig, train
    if args.nproc > 1:
        return _relaunch_with_torchrun(args.nproc, args.argv)
    config = TrainConfig(data=args.data, model=args.model, params=_model_params(args),
                         out=args.out or f"runs/{args.model}", data_options=_data_options(args))
    result = train(config, resume=args.resume)
    if result is not None:
        print(f"model:  {result.model_path}\nreport: {result.report_paths['html']}")
    return 0


def _relaunch_with_torchrun(nproc: int, argv_of_this_command: list[str]) -> int:
    """Run this same command under torchrun with nproc processes (and without --nproc)."""
    import subprocess
    argv, skip = [], False
    for arg in argv_of_this_command:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            argv.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "imgcls.cli", *argv]
    return subprocess.call(command)


def _tune(args) -> int:
    from imgcls.data.load import load_dataset
    from imgcls.tuning import parse_grid, tune_knn
    if args.model != "knn":
        return _tune_network(args)
    grid = parse_grid(args.grid)   # bad keys fail before data loads
    splits = load_dataset(args.data, _data_options(args))
    out = Path(args.out or f"runs/tune-{args.model}")
    result = tune_knn(splits, grid, folds=args.cv, seed=args.seed, out=out,
                      command=" ".join(["imgcls", *args.argv]))
    print(f"chosen: {result['best']}\nmodel:  {result['model_path']}\nreport: {result['report_paths']['html']}")
    return 0


def _tune_network(args) -> int:
    from imgcls.data.load import load_dataset
    from imgcls.models.registry import create_model
    from imgcls.tuning.search import parse_model_grid, search
    if not hasattr(create_model(args.model), "training_config"):
        raise ImgclsError(f"tune supports knn and neural networks; {args.model!r} is neither")
    grid = parse_model_grid(args.grid, args.model)
    splits = load_dataset(args.data, _data_options(args))
    out = Path(args.out or f"runs/tune-{args.model.replace(':', '-')}")
    result = search(splits, args.model, grid, method=args.search, trials=args.trials, seed=args.seed, out=out,
                    command=" ".join(["imgcls", *args.argv]))
    print(f"chosen: {result['best']}\nmodel:  {result['model_path']}\nreport: {result['report_paths']['html']}")
    return 0


def _lr_find(args) -> int:
    from imgcls.data.load import load_dataset
    from imgcls.models.registry import create_model
    from imgcls.training.lr_find import lr_find
    model = create_model(args.model, **_model_params(args))
    if not hasattr(model, "training_config"):
        raise ImgclsError(f"lr-find needs a neural network; {args.model!r} is not trained by gradient descent")
    splits = load_dataset(args.data, _data_options(args))
    out = Path(args.out or f"runs/lr-find-{args.model.replace(':', '-')}")
    result = lr_find(model, splits.train, out, steps=args.steps, min_lr=args.min_lr, max_lr=args.max_lr)
    print(f"suggested learning rate: {result['suggested_lr']:.3g}  (plot: {out / 'lr_find.png'})")
    return 0


def _eval(args) -> int:
    from imgcls.runs import evaluate_saved
    result = evaluate_saved(args.model, args.data, _data_options(args), args.out, split=args.split)
    if result.report_paths:
        print(f"report: {result.report_paths['html']}")
    return 0


def _predict(args) -> int:
    from imgcls.inference import find_images, predict_files
    from imgcls.inference import resolve_model
    from imgcls.models.artifact import is_saved_model
    if args.top_k < 1:
        raise ImgclsError("--top-k must be at least 1")
    inputs, spec = args.inputs, args.model
    if spec is None and len(inputs) > 1 and (is_saved_model(inputs[0]) or inputs[0].lower().endswith(".onnx")):
        spec, inputs = inputs[0], inputs[1:]
    model = resolve_model(spec)
    predictions, failures = predict_files(model, find_images(inputs), k=args.top_k)
    if args.csv:
        _write_predictions_csv(predictions, Path(args.csv))
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=2))
    else:
        for p in predictions:
            ranked = ", ".join(f"{label} {score:.0%}" for label, score in zip(p.labels, p.scores))
            print(f"{p.path}: {ranked}")
    for path, reason in failures:
        print(f"imgcls: skipped {path}: {reason}", file=sys.stderr)
    return 1 if failures and not predictions else 0


def _write_predictions_csv(predictions, path: Path) -> None:
    import csv
    k = max((len(p.labels) for p in predictions), default=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *(f"{kind}{i}" for i in range(1, k + 1) for kind in ("label", "score"))])
        for p in predictions:
            writer.writerow([p.path, *(v for pair in zip(p.labels, (f"{s:.6g}" for s in p.scores)) for v in pair)])


def _export(args) -> int:
    from imgcls.data.load import DataOptions, load_dataset
    from imgcls.inference.export import check_exportable, export_model
    from imgcls.inference import resolve_model
    if args.int8 and args.format != "onnx":
        raise ImgclsError("--int8 applies to --format onnx only")
    if args.int8 and not args.calibrate:
        raise ImgclsError("--int8 needs --calibrate DATA: images to measure the activation ranges on")
    if args.calibrate and not args.int8:
        raise ImgclsError("--calibrate applies only with --int8")
    if args.calibration_images < 1:
        raise ImgclsError("--calibration-images must be at least 1")
    model = resolve_model(args.model)
    check_exportable(model)
    calibration = None
    if args.calibrate:
        prep = model.preprocessing_
        splits = load_dataset(args.calibrate, DataOptions(size=prep.size, channels=prep.channels, resize=prep.resize))
        calibration = splits.train
    out = Path(args.out) if args.out else _export_path(args.model, args.format, args.int8)
    path = export_model(model, out, args.format, int8=args.int8, calibration=calibration,
                        calibration_images=args.calibration_images, opset=args.opset)
    kind = "int8 onnx" if args.int8 else args.format
    print(f"{kind}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _export_path(spec: str, format: str, int8: bool) -> Path:
    """Beside the model: <run>/model.onnx, <dir>/<stem>.int8.onnx; ./<name>.onnx for a pretrained name."""
    suffix = ".int8.onnx" if int8 else {"onnx": ".onnx", "torchscript": ".torchscript"}[format]
    path = Path(spec).expanduser()
    if path.is_dir():
        return path / f"model{suffix}"
    if path.suffix == ".safetensors":
        return path.with_name(path.stem + suffix)
    return Path(spec + suffix)


def _data_info(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from imgcls.data.inspect import describe, sample_grid
    from imgcls.data.load import load_dataset
    splits = load_dataset(args.data, _data_options(args))
    info = describe(splits)
    out = Path(args.out or f"{splits.name.replace('/', '_')}-info")
    out.mkdir(parents=True, exist_ok=True)
    (out / "info.json").write_text(json.dumps(info, indent=2))
    grid = sample_grid(splits.train, out / "samples.png", seed=args.seed)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    console = Console()
    split_names = list(info["sizes"])
    console.print(f"[bold]{info['name']}[/]: {info['classes']} classes, {info['mode']} "
                  f"{info['image_size'][0]}x{info['image_size'][1]}", highlight=False)
    table = Table()
    table.add_column("class")
    for split in split_names:
        table.add_column(split, justify="right")
    for name, counts in info["counts"].items():
        table.add_row(name, *(f"{counts.get(s, 0):,}" for s in split_names))
    table.add_section()
    table.add_row("total", *(f"{info['sizes'][s]:,}" for s in split_names))
    console.print(table)
    console.print(f"pixel mean {info['pixels']['mean']}, std {info['pixels']['std']} (0..1 scale)")
    for s in info["skipped_files"]:
        console.print(f"[yellow]skipped[/] {s['path']}: {s['reason']}")
    console.print(f"samples: {grid}\ninfo:    {out / 'info.json'}")
    return 0


def _compare(args) -> int:
    from imgcls.compare import compare
    from imgcls.models.registry import model_class
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if not names:
        raise ImgclsError("--models needs at least one model name")
    settings = _model_settings(Path(args.settings), names) if args.settings else {}
    params = {}
    for name in names:
        own = {f.name for f in dataclasses.fields(model_class(name)) if f.init}
        shared = {k: v for k, v in (("epochs", args.epochs), ("seed", args.seed)) if k in own and v is not None}
        params[name] = {**shared, **settings.get(name, {})}
    compare(args.data, names, args.out, _data_options(args), params)
    print(f"leaderboard: {Path(args.out) / 'compare.html'}")
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


def _serve(args) -> int:
    import uvicorn

    from imgcls.inference import resolve_model
    from imgcls.serving.app import create_app
    model = resolve_model(args.model)
    app = create_app(model, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue_size=args.queue_size,
                     max_upload_bytes=int(args.max_upload_mb * 2**20), top_k=args.top_k)
    print(f"serving {getattr(model, 'model_name', args.model)} on http://{args.host}:{args.port}/  (API docs: /docs)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


_INDEX_SETTINGS = {"features": "pixels", "kind": "exact", "m": 32, "ef_construction": 200, "ef_search": 64}


def _index(args) -> int:
    from imgcls.similarity import ImageIndex, index_dataset, index_path
    path = index_path(args.out, must_exist=args.add)
    given = {key: getattr(args, key) for key in _INDEX_SETTINGS if getattr(args, key) is not None}
    if args.add:
        index = ImageIndex.load(path)
        differing = [f"--{k.replace('_', '-')} {v} (the index has {getattr(index, k)})" for k, v in given.items()
                     if k != "features" and v != getattr(index, k)]
        if "features" in given and given["features"] != index.features and \
                ImageIndex(given["features"]).featurizer.spec != index.features:
            differing.append(f"--features {given['features']} (the index has {index.features})")
        if differing:
            raise ImgclsError(f"--add keeps the index's settings; drop {', '.join(differing)}")
    elif path.exists():
        raise ImgclsError(f"{path} exists; add to it with --add, or choose another --out")
    else:
        index = ImageIndex(**{**_INDEX_SETTINGS, **given})
    splits = [s.strip() for s in args.split.split(",")] if args.split else None
    result = index_dataset(index, args.data, splits, _data_options(args))
    index.save(path)
    already = f" ({result.skipped:,} already there, skipped)" if result.skipped else ""
    print(f"{'added' if args.add else 'indexed'} {result.added:,} images of {result.name}{already} "
          f"({index.features}, {index.kind}); the index holds {len(index):,}: {path}")
    return 0


def _search(args) -> int:
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


def _doctor(args) -> int:
    from imgcls.doctor import (DoctorOptions, check_quarantine, diagnose, parse_fail_on, print_report, quarantine,
                               write_report)
    if args.strict:
        raise ImgclsError("--strict does not apply to doctor: it reports unreadable files instead of stopping")
    if args.neighbours < 1 or args.tiny < 0 or args.imbalance < 1 or (args.near is not None and args.near < 0):
        raise ImgclsError("--neighbours must be at least 1, --imbalance at least 1, --tiny and --near at least 0")
    options = DoctorOptions(features=args.features, near=args.near, neighbours=args.neighbours,
                            imbalance=args.imbalance, tiny=args.tiny, fail_on=parse_fail_on(args.fail_on))
    if args.quarantine:
        check_quarantine(args.data, args.quarantine)
    report = diagnose(args.data, _data_options(args), options)
    paths = write_report(report, _doctor_out(args.out, args.data, report.name))
    print_report(report)
    print(f"report: {paths['html']}  {paths['json']}")
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


def _models(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from imgcls.models import list_models, parameter_count
    from imgcls.training.config import TrainingConfig
    shared = {f.name for f in dataclasses.fields(TrainingConfig)} | {"tta"}
    table = Table(title="imgcls models (parameters counted for 1x28x28 input, 10 classes)", title_justify="left")
    for column, justify in (("name", "left"), ("description", "left"), ("parameters", "right"), ("options", "left")):
        table.add_column(column, justify=justify)
    for name, cls in list_models().items():
        options = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(cls)
                            if f.init and (f.name not in shared or not hasattr(cls, "training_config")))
        table.add_row(name, cls.description, f"{parameter_count(name, (1, 28, 28), 10):,}", options)
    console = Console()
    console.print(table)
    console.print("Neural networks also take the training options: "
                  + ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(TrainingConfig))
                  + ", and tta=none|flip (test-time augmentation)", highlight=False)
    console.print("Any timm architecture: --model timm:NAME (e.g. timm:resnet18).", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
