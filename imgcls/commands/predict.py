"""imgcls predict: class probabilities for image files and folders."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from imgcls.commands.common import add_command, add_runtime_flag, runtime_choice
from imgcls.commands.completers import SAVED_MODEL, completes
from imgcls.errors import ImgclsError

NAME = "predict"
HELP = "class probabilities for image files and folders"
EXAMPLES = """examples:
  imgcls predict photo.jpg                      # the pretrained ImageNet model (EfficientNet-Lite0)
  imgcls predict --model efficientnet_lite2 photo.jpg
  imgcls predict runs/knn shoe.png              # a saved model (run folder or .safetensors file)
  imgcls predict runs/knn photos/ --top-k 3 --json
  imgcls predict --model runs/cnn/model.int8.onnx photos/ --csv predictions.csv   # an exported model
  imgcls predict --runtime torch photo.jpg      # PyTorch, not the cached ONNX export

networks (pretrained or saved) run through ONNX Runtime where that is measured faster: the first
run exports the network once (it says so) into the cache ($IMGCLS_CACHE, else
$XDG_CACHE_HOME/imgcls, else ~/.cache/imgcls).

multi-label models: the text shows each image's labels at or above their thresholds (what the
model predicts), or "(none above threshold; best: ...)"; --json ranks every label (the top k with
an explicit --top-k) under "predictions" and lists the chosen labels under "labels"; --csv adds a
'labels' column (';'-separated, as in a multi-label manifest).

models that abstain (trained with --accept, or `imgcls abstain`): an image too unlike the training
data reads "unknown (not sure: dog 45%, cat 30%, ...)"; --json gives "label": "unknown" (else the
best class) and its "rejection_score" beside the ranked "predictions"; --csv adds a 'label' column."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_command(subparsers, NAME, HELP, EXAMPLES)
    completes(parser.add_argument("inputs", metavar="[MODEL] IMAGE_OR_FOLDER", nargs="+",
                                  help="an optional saved model (run folder, .safetensors or exported .onnx file) "
                                       "first, then images; folders are searched recursively"), SAVED_MODEL)
    completes(parser.add_argument("--model", default=None,
                                  help="saved model, exported .onnx file or pretrained name "
                                       "(default: efficientnet_lite0)"), SAVED_MODEL)
    parser.add_argument("--top-k", type=int, default=None,
                        help="labels ranked per image (default: 5; every label for a multi-label model)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--csv", default=None, metavar="FILE",
                        help="also write rows path,label1,score1,label2,score2,... to FILE "
                             "(path,labels,label1,score1,... for a multi-label model; path,label,label1,... "
                             "for a model that abstains)")
    add_runtime_flag(parser)
    parser.set_defaults(handler=handle)
    return parser


def handle(args) -> int:
    from imgcls.inference import find_images, predict_files
    from imgcls.inference import resolve_model
    from imgcls.models.artifact import is_saved_model
    if args.top_k is not None and args.top_k < 1:
        raise ImgclsError("--top-k must be at least 1")
    inputs, spec = args.inputs, args.model
    exported = inputs[0].lower().endswith((".onnx", ".xml")) if inputs else False
    if spec is None and len(inputs) > 1 and (is_saved_model(inputs[0]) or exported):
        spec, inputs = inputs[0], inputs[1:]
    model = resolve_model(spec, runtime_choice(args, spec))
    predictions, failures = predict_files(model, find_images(inputs), k=args.top_k)
    if args.csv:
        _write_predictions_csv(predictions, Path(args.csv), multi_label=model.task_.multi_label)
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=2))
    else:
        for p in predictions:
            print(f"{p.path}: {_text(p)}")
    for path, reason in failures:
        print(f"imgcls: skipped {path}: {reason}", file=sys.stderr)
    return 1 if failures and not predictions else 0


def _text(p) -> str:
    """The ranked labels with their scores; for a multi-label model the chosen ones only; "unknown
    (not sure: ...)" where the model abstains."""
    if p.chosen is None:
        ranked = ", ".join(f"{label} {score:.0%}" for label, score in zip(p.labels, p.scores))
        return f"unknown (not sure: {ranked})" if p.unknown else ranked
    if not p.chosen:
        return f"(none above threshold; best: {p.labels[0]} {p.scores[0]:.0%})"
    return ", ".join(f"{label} {score:.0%}" for label, score in zip(p.chosen, p.chosen_scores))


def _write_predictions_csv(predictions, path: Path, multi_label: bool = False) -> None:
    import csv
    k = max((len(p.labels) for p in predictions), default=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        abstains = any(p.unknown is not None for p in predictions)
        chosen = ["labels"] if multi_label else ["label"] if abstains else []
        writer.writerow(["path", *chosen, *(f"{kind}{i}" for i in range(1, k + 1) for kind in ("label", "score"))])
        for p in predictions:
            labels = [";".join(p.chosen)] if multi_label else [p.label] if abstains else []
            writer.writerow([p.path, *labels,
                             *(v for pair in zip(p.labels, (f"{s:.6g}" for s in p.scores)) for v in pair)])
