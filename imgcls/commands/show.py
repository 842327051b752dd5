"""imgcls show ...: the course's visual aids, each a PNG with its numbers in JSON."""

from __future__ import annotations

import argparse
import dataclasses

from imgcls.commands.common import (add_command, add_data_argument, add_data_flags, add_model_flags, data_options,
                                    model_params)
from imgcls.commands.completers import MODEL_NAME, SAVED_MODEL, completes
from imgcls.errors import ImgclsError

NAME = "show"
HELP = "the course's visuals: kernels, filters, activations, templates, kNN regions, batches, distances"
EXAMPLES = """examples:
  imgcls show kernel photo.jpg --kernel sobel-x
  imgcls show kernel photo.jpg --kernel "0 -1 0; -1 5 -1; 0 -1 0" --operation convolution
  imgcls show filters efficientnet_lite0
  imgcls show activations runs/cnn shoe.png
  imgcls show top-images runs/cnn fashion-mnist --layer body.features.13
  imgcls show templates runs/linear
  imgcls show boundaries digits --model knn --k 1,5,15
  imgcls show batch fashion-mnist --config recipes/fashion-5min.yaml
  imgcls show distances photo.jpg"""
MODEL_HELP = "saved model (run folder or .safetensors file) or pretrained name (efficientnet_lite0, ...)"
SUBCOMMANDS = {
    "kernel": ("an image filtered by a kernel: input, kernel with its numbers, output", """examples:
  imgcls show kernel photo.jpg --kernel sobel-x
  imgcls show kernel photo.jpg --kernel blur           # the 21x21 box; blur:5 for a 5x5 one
  imgcls show kernel photo.jpg --kernel "1/9 1/9 1/9; 1/9 1/9 1/9; 1/9 1/9 1/9" --padding reflect"""),
    "filters": ("a network's first-layer filters as a grid", """examples:
  imgcls show filters runs/cnn
  imgcls show filters efficientnet_lite0"""),
    "activations": ("a network's feature maps at each stage for one image", """examples:
  imgcls show activations runs/cnn shoe.png
  imgcls show activations efficientnet_lite0 photo.jpg --per-stage 12"""),
    "top-images": ("the dataset images that most activate a stage's strongest units", """examples:
  imgcls show top-images runs/cnn fashion-mnist                        # the last stage
  imgcls show top-images runs/cnn fashion-mnist --layer body.features.5 --split test"""),
    "templates": ("a linear model's class templates: one row of W per class as an image", """examples:
  imgcls show templates runs/linear"""),
    "boundaries": ("kNN decision regions in a 2-D PCA projection, one panel per k", """examples:
  imgcls show boundaries digits --model knn --k 1,5,15
  imgcls show boundaries fashion-mnist --k 1,15 --metric l1"""),
    "batch": ("a training batch exactly as the trainer sees it after augmentation", """examples:
  imgcls show batch fashion-mnist --augment crop,flip,erase
  imgcls show batch fashion-mnist --config recipes/fashion-5min.yaml
  imgcls show batch photos/ --model resnet18 --augment rrc,randaugment --batch-size 32"""),
    "distances": ("boxed, shifted and tinted copies at one pixel L2 distance, in a network's embedding",
                  """examples:
  imgcls show distances photo.jpg
  imgcls show distances photo.jpg --model efficientnet_lite2 --shift 4"""),
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, HELP, EXAMPLES)
    visuals = parser.add_subparsers(dest="show_command", metavar="VISUAL", required=True)
    for name, (help_text, examples) in SUBCOMMANDS.items():
        add_flags, handler = _FLAGS_AND_HANDLERS[name]
        sub = add_command(visuals, name, help_text, examples)
        add_flags(sub)
        sub.add_argument("--out", default=f"show-{name}", help=f"folder for the PNG and JSON (default: show-{name})")
        sub.set_defaults(handler=handler)
    return parser


# -- the sub-commands' flags --------------------------------------------------------------------
def _add_kernel(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("image", metavar="IMAGE", help="an image file")
    sub.add_argument("--kernel", required=True, metavar="KERNEL",
                     help='sobel-x, sobel-y, blur (21x21 box), blur:N, sharpen, edge, identity, or a matrix '
                          'such as "-1 0 1; -2 0 2; -1 0 1" (rows separated by ;)')
    # The library checks these two (imgcls --help need not import it for their choices).
    sub.add_argument("--operation", default="correlation", metavar="correlation|convolution",
                     help="correlation (what a CNN layer computes) or convolution (the kernel flipped); "
                          "default: correlation")
    sub.add_argument("--padding", default="zeros", metavar="zeros|reflect|nearest",
                     help="what lies beyond the border (default: zeros, as a padded conv layer)")
    sub.add_argument("--channels", type=int, choices=[1, 3], default=None,
                     help="1 (grayscale) or 3 (each channel filtered); default: as the file is")
    sub.add_argument("--max-side", type=int, default=512, help="shrink larger images to this long side (default: 512)")


def _add_filters(sub: argparse.ArgumentParser) -> None:
    completes(sub.add_argument("model", metavar="MODEL", help=MODEL_HELP), SAVED_MODEL)
    sub.add_argument("--max", type=int, default=64, dest="max_filters", help="filters drawn (default: 64)")


def _add_activations(sub: argparse.ArgumentParser) -> None:
    completes(sub.add_argument("model", metavar="MODEL", help=MODEL_HELP), SAVED_MODEL)
    sub.add_argument("image", metavar="IMAGE", help="an image file (decoded as the model decodes its inputs)")
    sub.add_argument("--per-stage", type=int, default=8, help="channels drawn per stage, most active first (default: 8)")


def _add_top_images(sub: argparse.ArgumentParser) -> None:
    completes(sub.add_argument("model", metavar="MODEL", help=MODEL_HELP), SAVED_MODEL)
    add_data_argument(sub)
    sub.add_argument("--layer", default=None, help="the stage to look at (default: the last; a wrong name lists them)")
    sub.add_argument("--units", type=int, default=8, help="strongest units shown (default: 8)")
    sub.add_argument("--top", type=int, default=8, help="images per unit (default: 8)")
    sub.add_argument("--split", choices=["train", "val", "test", "all"], default="all",
                     help="which images to look through (default: all)")
    sub.add_argument("--batch-size", type=int, default=128, help="images per forward pass (default: 128)")
    add_data_flags(sub)


def _add_templates(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("model", metavar="MODEL", help="a saved linear model (run folder or .safetensors file)")


def _add_boundaries(sub: argparse.ArgumentParser) -> None:
    add_data_argument(sub)
    sub.add_argument("--model", choices=["knn"], default="knn", help="the classifier whose regions are drawn: knn")
    sub.add_argument("--k", default="1,5,15", help="values of k, one panel each (default: 1,5,15)")
    sub.add_argument("--metric", choices=["l2", "l1"], default="l2", help="distance in the plane (default: l2)")
    sub.add_argument("--weights", choices=["uniform", "distance"], default="uniform", help="the vote (default: uniform)")
    sub.add_argument("--grid", type=int, default=200, help="grid points per axis (default: 200)")
    add_data_flags(sub)


def _add_batch(sub: argparse.ArgumentParser) -> None:
    from imgcls.commands.train import ConfigFile
    add_data_argument(sub)
    settable = [completes(sub.add_argument("--model", default="cnn",
                                           help="network from `imgcls models` (default: cnn)"), MODEL_NAME)]
    sub.add_argument("--config", default=None, metavar="FILE",
                     help="a training recipe (YAML, as `imgcls train --config` takes); flags override it")
    sub.add_argument("--epoch", type=int, default=0, help="which epoch's batch (default: 0)")
    sub.add_argument("--batch", type=int, default=0, dest="batch_index", help="which batch of it (default: 0)")
    sub.add_argument("--max-images", type=int, default=64, help="images drawn (default: 64)")
    settable += add_data_flags(sub)
    settable += add_model_flags(sub)
    sub.set_defaults(config_file=ConfigFile(sub, {action.dest: action for action in settable},
                                            ignored=("time_budget",)))     # a batch is the same whatever the budget


def _add_distances(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("image", metavar="IMAGE", help="an image file")
    completes(sub.add_argument("--model", default=None,
                               help="the network whose embedding is compared (default: efficientnet_lite0)"),
              SAVED_MODEL)
    sub.add_argument("--shift", type=int, default=None, help="pixels the shifted copy moves (default: 1/32 of the side)")


# -- the handlers ---------------------------------------------------------------------------------
def _positive(args, *names: str) -> None:
    for name in names:
        if getattr(args, name) < 1:
            raise ImgclsError(f"--{name.replace('_', '-')} must be at least 1")


def _done(numbers: dict) -> int:
    print(f"figure:  {numbers['figure']}\nnumbers: {numbers['figure'][:-len('.png')]}.json")
    return 0


def handle_kernel(args) -> int:
    from imgcls.visuals.kernel import show_kernel
    _positive(args, "max_side")
    numbers = show_kernel(args.image, args.kernel, args.out, operation=args.operation, padding=args.padding,
                          channels=args.channels, max_side=args.max_side)
    print(f"{numbers['kernel']} ({numbers['side']}x{numbers['side']}), {numbers['operation']}: output "
          f"{numbers['output_min']:.4g}..{numbers['output_max']:.4g}")
    return _done(numbers)


def handle_filters(args) -> int:
    from imgcls.inference.resolve import resolve_model
    from imgcls.visuals.filters_and_templates import show_filters
    _positive(args, "max_filters")
    numbers = show_filters(resolve_model(args.model), args.out, args.max_filters)
    print(f"{numbers['model']}: first layer {' x '.join(map(str, numbers['shape']))}")
    return _done(numbers)


def handle_activations(args) -> int:
    from imgcls.inference.resolve import resolve_model
    from imgcls.visuals.stages import show_activations
    _positive(args, "per_stage")
    numbers = show_activations(resolve_model(args.model), args.image, args.out, per_stage=args.per_stage)
    for stage in numbers["stages"]:
        print(f"{stage['stage']}: {' x '.join(map(str, stage['shape']))}")
    return _done(numbers)


def handle_top_images(args) -> int:
    from imgcls.data.load import load_dataset
    from imgcls.inference.resolve import resolve_model
    from imgcls.visuals.stages import check_layer, show_top_images
    _positive(args, "units", "top", "batch_size")
    model = resolve_model(args.model)
    layer = check_layer(model, args.layer)          # a wrong name fails before the data loads
    splits = load_dataset(args.data, dataclasses.replace(data_options(args), preprocessing=model.preprocessing_))
    data = _split_of(splits, args.split)
    numbers = show_top_images(model, data, args.out, layer=layer, units=args.units, k=args.top,
                              batch_size=args.batch_size, data_name=f"{splits.name} ({args.split})")
    print(f"{numbers['layer']}: {numbers['units_in_layer']} units, {numbers['images_seen']:,} images looked through")
    return _done(numbers)


def _split_of(splits, split: str):
    if split != "all":
        part = getattr(splits, split)
        if part is None or not len(part):
            raise ImgclsError(f"{splits.name} has no {split} images")
        return part
    data = splits.train
    for part in (splits.val, splits.test):
        if part is not None and len(part):
            data = data.concat(part)
    return data


def handle_templates(args) -> int:
    from imgcls.inference.resolve import resolve_model
    from imgcls.visuals.filters_and_templates import show_templates
    numbers = show_templates(resolve_model(args.model), args.out)
    print(f"{numbers['model']}: {numbers['shape'][0]} templates of {' x '.join(map(str, numbers['shape'][1:]))}")
    return _done(numbers)


def handle_boundaries(args) -> int:
    from imgcls.data.load import load_dataset
    from imgcls.visuals.boundaries import parse_ks, show_boundaries
    ks = parse_ks(args.k)
    if args.grid < 2:
        raise ImgclsError("--grid must be at least 2")
    splits = load_dataset(args.data, data_options(args))
    numbers = show_boundaries(splits, args.out, ks, metric=args.metric, weights=args.weights, grid=args.grid,
                              seed=args.seed)
    for panel in numbers["panels"]:
        accuracy = panel["test_accuracy_2d"]
        print(f"k={panel['k']}: test accuracy in 2-D " + (f"{accuracy:.2%}" if accuracy is not None else "(no test split)"))
    return _done(numbers)


def handle_batch(args) -> int:
    from imgcls.data.load import load_dataset
    from imgcls.models.registry import create_model
    from imgcls.visuals.batch import show_batch
    _positive(args, "max_images")
    model = create_model(args.model, **model_params(args))
    splits = load_dataset(args.data, data_options(args).decoding_as(model.input_preprocessing()))
    numbers = show_batch(model, splits, args.out, epoch=args.epoch, index=args.batch_index, max_images=args.max_images)
    print(f"batch {numbers['batch']} of epoch {numbers['epoch']}: {numbers['images']} images, "
          f"augment {numbers['augment']}")
    return _done(numbers)


def handle_distances(args) -> int:
    from imgcls.inference.resolve import resolve_model
    from imgcls.visuals.distances import COPIES, show_distances
    numbers = show_distances(resolve_model(args.model), args.image, args.out, shift=args.shift)
    for name in COPIES:
        row = numbers["copies"][name]
        print(f"{name:8} pixels L2 {row['l2']:12,.1f}  L1 {row['l1']:14,.0f}   embedding L2 {row['embedding_l2']:.3f}")
    return _done(numbers)


_FLAGS_AND_HANDLERS = {
    "kernel": (_add_kernel, handle_kernel), "filters": (_add_filters, handle_filters),
    "activations": (_add_activations, handle_activations), "top-images": (_add_top_images, handle_top_images),
    "templates": (_add_templates, handle_templates), "boundaries": (_add_boundaries, handle_boundaries),
    "batch": (_add_batch, handle_batch), "distances": (_add_distances, handle_distances),
}
