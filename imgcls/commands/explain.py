"""imgcls explain: why a model decided what it did, as heatmaps, neighbours or templates."""

from __future__ import annotations

import argparse
import sys

from imgcls.commands.common import add_command
from imgcls.commands.completers import SAVED_MODEL, completes

NAME = "explain"
HELP = "explain a model's decisions on images: heatmaps, nearest neighbours or templates"
EXAMPLES = """examples:
  imgcls explain efficientnet_lite0 photo.jpg --out runs/why              # Grad-CAM, last conv stage
  imgcls explain runs/cnn shoe.png --method integrated-gradients --out runs/why
  imgcls explain runs/cnn photos/ --method gradcam --layer features.5 --target Sneaker --out runs/why
  imgcls explain runs/knn shoe.png --out runs/why-knn     # its k nearest training images
  imgcls explain runs/linear shoe.png --out runs/why-lin  # its class template times the image

methods: gradcam (default for networks), gradcam++, saliency, integrated-gradients, occlusion;
kNN models explain themselves by their neighbours and linear models by their templates.
Writes per image an overlay PNG and the raw map <image stem>.npy (float32 at the model's input
size, higher = more evidence for the label), explanations.json and a self-contained explain.html."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, HELP, EXAMPLES)
    completes(parser.add_argument("model", metavar="MODEL",
                                  help="saved model (run folder or .safetensors) or pretrained name"), SAVED_MODEL)
    parser.add_argument("inputs", metavar="IMAGE", nargs="+", help="image files or folders (searched recursively)")
    parser.add_argument("--method", default=None,
                        help="gradcam, gradcam++, saliency, integrated-gradients or occlusion "
                             "(default: gradcam for networks; kNN and linear models have their own)")
    parser.add_argument("--target", default=None, metavar="LABEL",
                        help="the label to explain in every image (default: the predicted one; for a multi-label "
                             "model each label above its threshold)")
    parser.add_argument("--layer", default=None, help="Grad-CAM: the layer to read (default: the last convolutional "
                                                      "stage; a wrong name lists the valid ones)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the pictures, maps and explain.html")
    parser.set_defaults(handler=handle)
    return parser


def handle(args) -> int:
    from imgcls.data.images import decode_many
    from imgcls.explain import explain
    from imgcls.explain.render import write_explanations
    from imgcls.inference import find_images, resolve_model
    model = resolve_model(args.model)
    paths = find_images(args.inputs)
    images, ok, bad = decode_many(paths, model.preprocessing_)
    for path, reason in bad:
        print(f"imgcls: skipped {path}: {reason}", file=sys.stderr)
    if not ok:
        return 1
    names = [str(paths[i]) for i in ok]
    explanations = explain(model, images, method=args.method, target=args.target, layer=args.layer)
    written = write_explanations(model, explanations, images, names, args.out)
    for e in explanations:
        where = f" at {e.layer}" if e.layer else ""
        print(f"{names[e.image]}: {e.method}{where} for {e.target} ({e.score:.0%})")
    print(f"gallery: {written['html']}")
    return 0
