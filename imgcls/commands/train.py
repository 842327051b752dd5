"""imgcls train: train a classifier, evaluate it once on the test split, save model and reports."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from imgcls.commands.common import (abstention_request, add_abstention_flags, add_command, add_data_argument,
                                    add_data_flags, add_log_flag, add_model_flags, data_options, model_params)
from imgcls.commands.completers import MODEL_NAME, completes
from imgcls.errors import ImgclsError

NAME = "train"
HELP = "train a classifier, evaluate it on the test split, save model and reports"
EXAMPLES = """examples:
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
        completes(parser.add_argument("--model", default="knn", help="model name from `imgcls models` (default: knn)"),
                  MODEL_NAME),
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
    settable += add_model_flags(parser)
    parser.set_defaults(handler=handle, config_file=ConfigFile(parser, {action.dest: action for action in settable}))
    return parser


@dataclass
class ConfigFile:
    """What a --config file may set: the train sub-parser's flags by dest (all but DATA, --config and --help)."""
    parser: argparse.ArgumentParser
    flags: dict[str, argparse.Action]

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
            # Model hyperparameters are written bare (lr: 0.1); their flags' dests are param_<name>.
            dest = dest if dest in self.flags and not dest.startswith("param_") else f"param_{dest}"
            if dest not in self.flags:
                raise ImgclsError(f"{path}: unknown setting {key!r}")
            action = self.flags[dest]
            defaults[dest] = action.type(str(value).lower() if isinstance(value, bool) else str(value)) \
                if action.type and value is not None else value
        self.parser.set_defaults(**defaults)


def handle(args) -> int:
    from imgcls.run_folder import default_folder
    from imgcls.training_run import TrainConfig, train
    if args.nproc > 1:
        return _relaunch_with_torchrun(args.nproc, args.argv)
    config = TrainConfig(data=args.data, model=args.model, params=model_params(args),
                         out=args.out or str(default_folder("train", args.model)), data_options=data_options(args),
                         log=args.log,
                         abstain=abstention_request(args), calibration=args.calibration)
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
