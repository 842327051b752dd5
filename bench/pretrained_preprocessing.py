"""Which preprocessing do the EfficientNet-Lite weights expect? Evidence on real photographs.

The TensorFlow source these weights were converted from says edge models use
MEAN_RGB = 127, STDDEV_RGB = 128 ("inception-style ... for better post-quantization") and an
evaluation crop of image_size / (image_size + 32). This script checks it on scikit-image's and
scikit-learn's photos: for each candidate preprocessing, the top-1 label of the photos whose
class is known (cat, coffee) and the mean top-1 probability over all photos; the preprocessing
the weights were trained with should give the right labels with the most confidence.

Then the same photos as JPEGs (quality 95), decoded whole ("full") and at libjpeg's reduced DCT
scale ("draft", imgcls's default: 1/2 of the pixels for these 427-640 px photos): the labels,
the confidence, and how far the probabilities and the pixels move.

    python bench/pretrained_preprocessing.py
"""

from __future__ import annotations

import os

import numpy as np
import skimage.data
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from imgcls.data.images import Preprocessing, decode_image
from imgcls.models.pretrained import PRETRAINED, pretrained_model
from machine import banner  # noqa: E402  (bench/machine.py: the CPU and its flags)

KNOWN = {"chelsea": {"tabby", "tiger cat", "Egyptian cat"}, "coffee": {"espresso", "cup"}}
CANDIDATES = {
    "edge (x-127)/128, crop": (127 / 255, 128 / 255, True),
    "ImageNet mean/std, crop": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), True),
    "edge (x-127)/128, no crop": (127 / 255, 128 / 255, False),
}


def photos(folder: str, suffix: str = "png") -> dict[str, str]:
    os.makedirs(folder, exist_ok=True)
    arrays = {n: getattr(skimage.data, n)() for n in ("chelsea", "coffee", "astronaut", "rocket")}
    arrays |= dict(zip(("china", "flower"), load_sample_images().images))
    paths = {}
    for name, array in arrays.items():
        paths[name] = os.path.join(folder, f"{name}.{suffix}")
        Image.fromarray(array).convert("RGB").save(paths[name], **({"quality": 95} if suffix == "jpg" else {}))
    return paths


def main() -> None:
    print(banner())
    os.environ.setdefault("IMGCLS_PROGRESS", "0")
    files = photos("/tmp/imgcls-photos")
    print(f"{'model':<20}{'preprocessing':<28}{'cat':<16}{'coffee':<16}mean top-1 p")
    for name, spec in PRETRAINED.items():
        model = pretrained_model(name)
        for label, (mean, std, crop) in CANDIDATES.items():
            prep = Preprocessing(3, (spec.size, spec.size), "crop" if crop else "stretch",
                                 crop_pct=spec.crop_pct if crop else 1.0, interpolation="bicubic")
            model.net_.normalize.mean.copy_(torch.tensor(mean).expand(3).view(1, 3, 1, 1))
            model.net_.normalize.std.copy_(torch.tensor(std).expand(3).view(1, 3, 1, 1))
            images = np.stack([decode_image(path, prep) for path in files.values()])
            proba = model.predict_proba(images)
            top = [model.class_names_[i] for i in proba.argmax(1)]
            by_name = dict(zip(files, top))
            marks = {k: f"{by_name[k]}{'' if by_name[k] in KNOWN[k] else ' (wrong)'}" for k in KNOWN}
            print(f"{name:<20}{label:<28}{marks['chelsea']:<16}{marks['coffee']:<16}{proba.max(1).mean():.3f}")
    jpegs = photos("/tmp/imgcls-photos", "jpg")
    print(f"\nJPEG (quality 95), the official preprocessing, decoded whole or at a reduced DCT scale:")
    print(f"{'model':<20}{'decode':<28}{'cat':<16}{'coffee':<16}mean top-1 p   max |dp|   pixels: mean |d|")
    for name, spec in PRETRAINED.items():
        model = pretrained_model(name)      # its own (x - 127) / 128 normalisation
        decoded, probas = {}, {}
        for decode in ("full", "draft"):
            prep = Preprocessing(3, (spec.size, spec.size), "crop", crop_pct=spec.crop_pct, interpolation="bicubic",
                                 decode=decode)
            decoded[decode] = np.stack([decode_image(path, prep) for path in jpegs.values()]).astype(np.int16)
            probas[decode] = model.predict_proba(decoded[decode].astype(np.uint8))
            top = dict(zip(jpegs, (model.class_names_[i] for i in probas[decode].argmax(1))))
            marks = {k: f"{top[k]}{'' if top[k] in KNOWN[k] else ' (wrong)'}" for k in KNOWN}
            moved = "" if decode == "full" else (f"{np.abs(probas['draft'] - probas['full']).max():<11.4f}"
                                                 f"{np.abs(decoded['draft'] - decoded['full']).mean():.2f} of 255")
            print(f"{name:<20}{decode:<28}{marks['chelsea']:<16}{marks['coffee']:<16}"
                  f"{probas[decode].max(1).mean():<15.3f}{moved}")


if __name__ == "__main__":
    main()
