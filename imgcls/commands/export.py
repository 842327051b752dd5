"""imgcls export: a neural network as ONNX (optionally int8) or TorchScript."""

from __future__ import annotations

import argparse
from pathlib import Path

from imgcls.commands.common import add_command, add_stream_flags, stream_options
from imgcls.errors import ImgclsError

NAME = "export"
HELP = "export a neural network to ONNX or TorchScript for fast inference"
EXAMPLES = """examples:
  imgcls export runs/cnn                                    # runs/cnn/model.onnx
  imgcls export runs/cnn --int8 --calibrate fashion-mnist   # runs/cnn/model.int8.onnx, on 200 training images
  imgcls export efficientnet_lite0 --int8 --calibrate photos/ --out lite0.int8.onnx   # photos/<class>/...
  imgcls export runs/cnn/model.safetensors --format torchscript   # runs/cnn/model.torchscript
  imgcls predict --model runs/cnn/model.onnx photo.jpg      # an exported ONNX model predicts like the original"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, HELP, EXAMPLES)
    parser.add_argument("model", metavar="MODEL", help="run folder, .safetensors model file or pretrained name")
    parser.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="(default: onnx)")
    parser.add_argument("--int8", action="store_true",
                        help="ONNX only: static int8 quantisation (ONNX Runtime), calibrated on --calibrate")
    parser.add_argument("--calibrate", default=None, metavar="DATA",
                        help="dataset whose training images calibrate the int8 ranges (decoded at the model's size)")
    parser.add_argument("--calibration-images", type=int, default=200, metavar="N",
                        help="calibration images drawn from DATA's training split (default: 200)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18)")
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="output file (default: beside the model, e.g. <run>/model.onnx, model.int8.onnx, "
                             "model.torchscript; ./<name>.onnx for a pretrained name)")
    add_stream_flags(parser)      # how --calibrate's images are read; only the drawn ones are decoded when streamed
    parser.set_defaults(handler=handle)
    return parser


def handle(args) -> int:
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
        splits = load_dataset(args.calibrate, DataOptions(preprocessing=prep, val_fraction=0,   # as the model decodes
                                                          **stream_options(args)))
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
