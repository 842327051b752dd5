"""imgcls export: a neural network as ONNX (optionally int8) or OpenVINO IR, then checked against
the original model on a few images."""

from __future__ import annotations

import argparse
from pathlib import Path

from imgcls.commands.common import add_command, add_stream_flags, stream_options
from imgcls.commands.completers import DATA, SAVED_MODEL, completes
from imgcls.errors import ImgclsError

NAME = "export"
HELP = "export a neural network to ONNX or OpenVINO IR for fast inference, checked against the original"
EXAMPLES = """examples:
  imgcls export runs/cnn                                    # runs/cnn/model.onnx, checked on sample photos
  imgcls export runs/cnn --check fashion-mnist              # ... checked on 200 validation images
  imgcls export runs/cnn --int8 --calibrate fashion-mnist   # runs/cnn/model.int8.onnx, on 200 training images
  imgcls export efficientnet_lite0 --int8 --calibrate photos/ --out lite0.int8.onnx   # photos/<class>/...
  imgcls export runs/cnn/model.safetensors --format openvino   # runs/cnn/model.xml + model.bin (OpenVINO IR)
  imgcls predict --model runs/cnn/model.onnx photo.jpg      # an exported model predicts like the original"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, HELP, EXAMPLES)
    completes(parser.add_argument("model", metavar="MODEL",
                                  help="run folder, .safetensors model file or pretrained name"), SAVED_MODEL)
    # torchscript stays a choice so that asking for it gets the reason and the alternatives, not "invalid choice".
    parser.add_argument("--format", choices=["onnx", "openvino", "torchscript"], default="onnx",
                        help="onnx (ONNX Runtime) or openvino (OpenVINO IR; pip install 'imgcls[openvino]'); "
                             "torchscript was removed (default: onnx)")
    parser.add_argument("--int8", action="store_true",
                        help="ONNX only: static int8 quantisation (ONNX Runtime), calibrated on --calibrate")
    completes(parser.add_argument("--calibrate", default=None, metavar="DATA",
                                  help="dataset whose training images calibrate the int8 ranges (decoded at the "
                                       "model's size)"), DATA)
    parser.add_argument("--calibration-images", type=int, default=200, metavar="N",
                        help="calibration images drawn from DATA's training split (default: 200)")
    completes(parser.add_argument("--check", default=None, metavar="DATA",
                                  help="compare the export with the original on DATA's validation images "
                                       "(default: on the sample photos that ship with imgcls)"), DATA)
    parser.add_argument("--check-images", type=int, default=200, metavar="N",
                        help="validation images drawn for --check (default: 200)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18)")
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="output file (default: beside the model, e.g. <run>/model.onnx, model.int8.onnx, "
                             "model.xml; ./<name>.onnx for a pretrained name)")
    add_stream_flags(parser)      # how --calibrate's images are read; only the drawn ones are decoded when streamed
    parser.set_defaults(handler=handle)
    return parser


def handle(args) -> int:
    from imgcls.data.load import DataOptions, load_dataset
    from imgcls.inference import resolve_model
    from imgcls.inference.export import TORCHSCRIPT_REMOVED, check_exportable, export_model
    from imgcls.inference.parity import check_images, parity
    if args.format == "torchscript":
        raise ImgclsError(TORCHSCRIPT_REMOVED)
    if args.int8 and args.format != "onnx":
        raise ImgclsError("--int8 applies to --format onnx only")
    if args.int8 and not args.calibrate:
        raise ImgclsError("--int8 needs --calibrate DATA: images to measure the activation ranges on")
    if args.calibrate and not args.int8:
        raise ImgclsError("--calibrate applies only with --int8")
    if args.calibration_images < 1 or args.check_images < 1:
        raise ImgclsError(f"--{'calibration' if args.calibration_images < 1 else 'check'}-images must be at least 1")
    if args.format == "openvino":
        from imgcls.inference.openvino_model import import_openvino
        import_openvino()                           # a missing extra fails before any work
    model = resolve_model(args.model)
    check_exportable(model)
    as_model_decodes = DataOptions(preprocessing=model.preprocessing_, val_fraction=0, **stream_options(args))
    calibration = load_dataset(args.calibrate, as_model_decodes).train if args.calibrate else None
    out = Path(args.out) if args.out else _export_path(args.model, args.format, args.int8)
    path = export_model(model, out, args.format, int8=args.int8, calibration=calibration,
                        calibration_images=args.calibration_images, opset=args.opset, source=args.model)
    kind = "int8 onnx" if args.int8 else args.format
    files = [path, path.with_suffix(".bin")] if args.format == "openvino" else [path]
    size = sum(f.stat().st_size for f in files)
    print(f"{kind}: {path} ({size / 1e6:.1f} MB)")
    splits = load_dataset(args.check, DataOptions(preprocessing=model.preprocessing_, **stream_options(args))) \
        if args.check else None
    images, source = check_images(model, splits, args.check_images)
    print(parity(model, resolve_model(str(path)), images, source).summary())
    return 0


def _export_path(spec: str, format: str, int8: bool) -> Path:
    """Beside the model: <run>/model.onnx, <dir>/<stem>.int8.onnx, <run>/model.xml; ./<name>.onnx for a
    pretrained name."""
    from imgcls.inference.export import SUFFIXES
    from imgcls.run_folder import RunFolder
    suffix = ".int8.onnx" if int8 else SUFFIXES[format]
    path = Path(spec).expanduser()
    if path.is_dir():
        return RunFolder(path).exported(suffix)
    if path.suffix == ".safetensors":
        return path.with_name(path.stem + suffix)
    return Path(spec + suffix)
