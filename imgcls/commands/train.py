"""imgcls train: train a classifier, evaluate it once on the test split, save model and reports."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from imgcls.commands.common import (abstention_request, add_abstention_flags, add_command, add_data_argument,
                                    add_data_flags, add_log_flag, add_model_flags, data_options, model_params)
from imgcls.commands.completers import TRAIN_MODEL, completes
from imgcls.errors import ImgclsError

NAME = "train"
HELP = "train a classifier, evaluate it on the test split, save model and reports"
EXAMPLES = """examples:
  imgcls train photos/                                   # --model auto: the best model that fits 5 minutes
  imgcls train photos/ --time-budget 90s --out runs/quick   # ... that fits 90 seconds (5m, 1h, 1h30m)
  imgcls train fashion-mnist --model vgg --time-budget 10m  # its lr, batch size and epochs planned for 10 min
  imgcls train fashion-mnist --model knn --k 5 --metric l1 --out runs/knn
  imgcls train fashion-mnist --model resnet20 --epochs 15 --opt sgd --lr 0.1 --schedule onecycle \\
      --augment crop,flip --seed 0 --out runs/r20
  imgcls train fashion-mnist --model resnet20 ... --out runs/r20 --resume   # continue a killed run
  imgcls train fashion-mnist --config recipe.yaml --out runs/recipe
  imgcls train fashion-mnist --model cnn --nproc 2 --out runs/ddp           # 2 processes (torchrun)
  imgcls train fashion-mnist --model linear --loss svm --epochs 20 --out runs/svm
  imgcls train fashion-mnist --model knn --calibration isotonic --out runs/knn-iso   # calibrated on val
  imgcls train fashion-mnist --model cnn --log tensorboard --out runs/cnn   # then: tensorboard --logdir runs
  imgcls train photos/ --model knn --image-size 32 --strict --out runs/photos
  imgcls train labels.csv --model linear --out runs/csv
  imgcls train fashion-mnist --model cnn --accept 0.95 --reject-score energy --out runs/cnn   # may answer unknown"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, HELP, EXAMPLES)
    add_data_argument(parser)
    settable = [
        completes(parser.add_argument("--model", default="auto",
                                      help="model name from `imgcls models`, or auto: race the models that suit "
                                           "the data within --time-budget on the validation split, keep the best "
                                           "(default: auto)"), TRAIN_MODEL),
        parser.add_argument("--time-budget", default=None, metavar="DURATION",
                            help="time for the whole command, e.g. 90s, 5m, 1h30m: --model auto plans its race, a "
                                 "named network its epochs from this machine's measured speed (default: 5m for "
                                 "--model auto and for a network's planned epochs)"),
        parser.add_argument("--out", default=None,
                            help="run folder for model and reports (default: runs/<model>, e.g. runs/timm-resnet18)"),
    ]
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="YAML file of settings (keys as the flags, e.g. lr: 0.1); flags override it")
    settable += [
        parser.add_argument("--resume", action="store_true",
                            help="continue the run in --out from its last checkpoint"),
        parser.add_argument("--nproc", type=int, default=1, help="train with N processes on this machine (torchrun)"),
        parser.add_argument("--calibration", choices=["auto", "none", "temperature", "sigmoid", "isotonic"],
                            default="auto",
                            help="calibrate the probabilities on the validation split after training; auto: "
                                 "temperature scaling for networks, none for knn, linear and multi-label models "
                                 "(default: auto)"),
        add_log_flag(parser),
    ]
    settable += add_data_flags(parser)
    settable += add_abstention_flags(parser)
    settable += add_model_flags(parser, plannable=("lr", "epochs", "batch_size"))
    parser.set_defaults(handler=handle, config_file=ConfigFile(parser, {action.dest: action for action in settable}))
    return parser


@dataclass
class ConfigFile:
    """What a --config file may set: the train sub-parser's flags by dest (all but DATA, --config and --help).
    ignored: settings of a training run that another command reading the same recipe has no use for
    (show batch and a recipe's time_budget)."""
    parser: argparse.ArgumentParser
    flags: dict[str, argparse.Action]
    ignored: tuple[str, ...] = ()

    def apply(self, path: Path) -> None:
        """Settings from a YAML file become the train command's defaults; unknown keys are errors.

        Parse again afterwards: flags on the command line then override the file."""
        import yaml
        try:
            settings = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ImgclsError(f"{path}: cannot read config ({str(exc).splitlines()[0]})") from exc
        if not isinstance(settings, dict):
            raise ImgclsError(f"{path}: a config file must be a mapping of setting: value")
        defaults = {}
        for key, value in settings.items():
            dest = key.replace("-", "_")
            if dest in self.ignored:
                continue
            # Model hyperparameters are written bare (lr: 0.1); their flags' dests are param_<name>.
            dest = dest if dest in self.flags and not dest.startswith("param_") else f"param_{dest}"
            if dest not in self.flags:
                raise ImgclsError(f"{path}: unknown setting {key!r}")
            action = self.flags[dest]
            defaults[dest] = action.type(str(value).lower() if isinstance(value, bool) else str(value)) \
                if action.type and value is not None else value
        self.parser.set_defaults(**defaults)


def handle(args) -> int:
    from imgcls.planning import AUTO, parse_duration, unset_to_auto
    from imgcls.run_folder import default_folder
    from imgcls.training_run import TrainConfig, train
    budget = parse_duration(args.time_budget) if args.time_budget is not None else None
    if args.model == AUTO:
        given = sorted(k[len("param_"):] for k, v in vars(args).items() if k.startswith("param_") and v is not None)
        if given:
            raise ImgclsError(f"--{given[0].replace('_', '-')} sets a named model's hyperparameter; --model auto "
                              "plans each candidate's own (name a model with --model to set them)")
        if args.nproc > 1:
            raise ImgclsError("--model auto runs in one process; name a model to train with --nproc")
        params = {}
    else:
        params = model_params(args)
        # What neither a flag nor the recipe gives is planned, except under a recipe without a budget,
        # which trains exactly as it says, and with several processes, where planning cannot run.
        several = args.nproc > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1
        if (not args.config or budget is not None) and not several:
            params = unset_to_auto(args.model, params)
    if args.nproc > 1:
        return _relaunch_with_torchrun(args.nproc, args.argv)
    config = TrainConfig(data=args.data, model=args.model, params=params,
                         out=args.out or str(default_folder("train", args.model)), data_options=data_options(args),
                         log=args.log, abstain=abstention_request(args), calibration=args.calibration,
                         time_budget=budget)
    result = train(config, resume=args.resume, started=getattr(args, "started", None))
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
