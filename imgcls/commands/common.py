"""What several commands share: the sub-parser set-up, the data flags, the per-model flags.

Nothing heavy is imported at module level: `imgcls --help` imports no torch (tests/test_cli_startup.py).
"""

from __future__ import annotations

import argparse
import dataclasses

from imgcls.commands import model_table
from imgcls.commands.completers import DATA, completes
from imgcls.errors import ImgclsError

# Model hyperparameters that are not per-model flags: they come from run-wide flags.
RUN_WIDE = {"seed"}
DATA_HELP = "dataset name, folder or CSV manifest"


def add_command(subparsers, name: str, help_text: str, examples: str) -> argparse.ArgumentParser:
    """A sub-parser whose description is its help line and whose epilog is its examples."""
    return subparsers.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                                 epilog=examples, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_data_argument(parser: argparse.ArgumentParser, help: str = DATA_HELP) -> argparse.Action:
    """The DATA positional, completed on Tab as a named dataset or a path."""
    return completes(parser.add_argument("data", metavar="DATA", help=help), DATA)


def add_data_flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """How a dataset is split and decoded; returns the flags added."""
    group = parser.add_argument_group("data")
    return [
        group.add_argument("--seed", type=int, default=0, help="seed for splits and training (default: 0)"),
        group.add_argument("--val-fraction", type=float, default=0.1, help="validation share carved from train"),
        group.add_argument("--test-fraction", type=float, default=0.2,
                           help="test share, where the data has no test split"),
        group.add_argument("--image-size", type=int, default=None, help="side in pixels for image files"),
        group.add_argument("--channels", type=int, choices=[1, 3], default=None, help="1 (grayscale) or 3 (RGB)"),
        group.add_argument("--resize", choices=["crop", "pad", "stretch"], default="crop",
                           help="how differently sized images reach --image-size (default: crop)"),
        group.add_argument("--decode", choices=["draft", "full"], default=None,
                           help="JPEGs: draft decodes a large photo at 1/2, 1/4 or 1/8 scale (libjpeg's DCT "
                                "scaling, never below the pixels the target needs) before resizing it, faster; "
                                "full decodes every pixel first (default: draft; a saved model decodes as it "
                                "was trained)"),
        group.add_argument("--strict", action="store_true", help="stop on unreadable files instead of skipping them"),
        group.add_argument("--coarse", action="store_true", help="CIFAR-100: the 20 coarse superclasses"),
        *add_stream_flags(parser, group),
    ]


def add_abstention_flags(parser: argparse.ArgumentParser, accept_default: float | None = None
                         ) -> list[argparse.Action]:
    """--accept and --reject-score: "I don't know" (imgcls.models.abstention); returns the flags added."""
    group = parser.add_argument_group("abstention (answer 'unknown' for images unlike the training data)")
    default = f"default: {accept_default}" if accept_default else "default: off"
    return [
        group.add_argument("--accept", type=float, default=accept_default, metavar="FRACTION",
                           help="share of validation images to answer as before, in (0, 1), e.g. 0.95: the "
                                f"rest of the score range answers 'unknown' ({default})"),
        group.add_argument("--reject-score", choices=["auto", "msp", "energy", "knn"], default="auto",
                           help="msp: 1 - top probability; energy: -logsumexp(logits); knn: distance to the "
                                "10th nearest training image's unit logits; auto: knn, or msp for kNN models, "
                                "whose logits are votes (measured best by bench/ood.py; default: auto)"),
    ]


def abstention_request(args) -> dict | None:
    """{"accept", "score"} from add_abstention_flags' flags (checked), or None without --accept."""
    from imgcls.models.abstention import check_accept
    if args.accept is None:
        return None
    check_accept(args.accept)
    return {"accept": args.accept, "score": args.reject_score}


def add_stream_flags(parser: argparse.ArgumentParser, group=None) -> list[argparse.Action]:
    """Whether image files are decoded into memory or streamed from disk; returns the flags added."""
    group = group or parser.add_argument_group("data")
    return [
        group.add_argument("--data-mode", choices=["auto", "memory", "stream"], default="auto",
                           help="image files: decode all into memory, or stream them from disk a few batches "
                                "at a time; auto: memory when the decoded images fit --memory-budget "
                                "(default: auto)"),
        group.add_argument("--memory-budget", type=_gigabytes, default=None, metavar="GB",
                           help="decoded size up to which --data-mode auto keeps images in memory "
                                "(default: a quarter of this machine's RAM)"),
        group.add_argument("--cache", default=None, metavar="DIR",
                           help="streamed images: keep the decoded images in DIR, so later epochs and runs "
                                "skip decoding (a changed file is decoded again)"),
    ]


def _gigabytes(text: str) -> int:
    try:
        value = float(text.lower().removesuffix("gb"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size in GB: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the memory budget must be positive")
    return int(value * 1e9)


def data_options(args) -> "DataOptions":
    from imgcls.data.load import DataOptions
    return DataOptions(val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed,
                       size=args.image_size, channels=args.channels, resize=args.resize,
                       decode=getattr(args, "decode", None), strict=args.strict,
                       coarse=args.coarse, **stream_options(args))


def stream_options(args) -> dict:
    """The DataOptions fields of add_stream_flags' flags (their defaults where a command lacks them)."""
    return dict(data_mode=getattr(args, "data_mode", "auto"), memory_budget=getattr(args, "memory_budget", None),
                cache=getattr(args, "cache", None))


def add_model_flags(parser: argparse.ArgumentParser, plannable: tuple[str, ...] = ()) -> list[argparse.Action]:
    """One --flag per model hyperparameter (dest param_<name>, default None); returns the flags added.
    Those named in plannable also take "auto" (planned from the data and the time budget).

    The flags come from imgcls.commands.model_table, so that building the parser imports no model."""
    group = parser.add_argument_group("model hyperparameters (each applies to the models named)")
    actions = []
    for name, (kind, owners) in model_table.FLAGS.items():
        parse, metavar = FLAG_TYPES[kind], "yes|no" if kind == "yes_no" else kind.upper()
        help_text = f"({_owners_text(owners)})"
        if name in plannable:
            parse, metavar = auto_or(parse), f"{metavar}|auto"
            help_text = f"({_owners_text(owners)}; networks: default auto, planned from the data and the budget)"
        actions.append(group.add_argument(f"--{name.replace('_', '-')}", dest=f"param_{name}", type=parse,
                                          default=None, metavar=metavar, help=help_text))
    return actions


def auto_or(kind):
    """An argparse type: "auto", or a value of kind."""
    def parse(text: str):
        return "auto" if str(text).strip().lower() == "auto" else kind(text)
    parse.__name__ = kind.__name__
    return parse


def _owners_text(owners: list[str]) -> str:
    if len(owners) <= 4:
        return ", ".join(owners)
    return "all models" if {"knn", "linear"} <= set(owners) else "all neural networks"


def yes_no(text: str) -> bool:
    value = text.lower()
    if value not in ("yes", "no", "true", "false", "on", "off", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected yes or no, not {text!r}")
    return value in ("yes", "true", "on", "1")


# The flag types model_table.FLAGS names.
FLAG_TYPES = {"int": int, "float": float, "str": str, "yes_no": yes_no}


def model_params(args) -> dict:
    """The per-model flags given for args.model (others are errors), plus the run-wide seed if it takes one."""
    from imgcls.models.registry import model_class
    cls = model_class(args.model)
    own = {f.name for f in dataclasses.fields(cls) if f.init}
    given = {k[len("param_"):]: v for k, v in vars(args).items() if k.startswith("param_") and v is not None}
    foreign = sorted(set(given) - own)
    if foreign:
        raise ImgclsError(f"--{foreign[0].replace('_', '-')} does not apply to model {args.model!r} "
                          f"(its parameters: {', '.join(sorted(own - RUN_WIDE))})")
    return {**given, **({"seed": args.seed} if "seed" in own else {})}


def add_log_flag(parser: argparse.ArgumentParser) -> argparse.Action:
    """--log tensorboard|mlflow: an experiment tracker besides the run folder (optional extras)."""
    return parser.add_argument(
        "--log", choices=["tensorboard", "mlflow"], default=None,
        help="also log the config, every epoch and the final report to TensorBoard (<out>/tensorboard) or "
             "MLflow (MLFLOW_TRACKING_URI, else sqlite:///<out>/mlflow.db); "
             "pip install 'imgcls[tensorboard]' or 'imgcls[mlflow]'")


def add_runtime_flag(parser: argparse.ArgumentParser) -> argparse.Action:
    """--runtime auto|torch|onnx: which runtime runs a pretrained model or saved network."""
    return parser.add_argument(
        "--runtime", choices=["auto", "torch", "onnx"], default=None,
        help="auto: a pretrained model or saved network runs through its ONNX export (made once, cached) where "
             "that predicts alike and is measured faster here; torch or onnx choose (default: $IMGCLS_RUNTIME, "
             "else auto)")


def runtime_choice(args, spec: str | None) -> str | None:
    """--runtime if given; else $IMGCLS_RUNTIME, else auto, except for an exported .onnx or .xml
    file (spec), which runs in its own runtime (None) whatever the environment's default."""
    from pathlib import Path

    from imgcls.inference.fast import default_runtime
    if args.runtime:
        return args.runtime
    return None if spec and Path(spec).suffix.lower() in (".onnx", ".xml") else default_runtime()
