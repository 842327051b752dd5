"""Explanations as pictures and files: overlays, heatmaps laid over a photo, and the gallery.

write_explanations writes, per explanation, an overlay PNG and the raw map as .npy (float32 at
the model's input resolution), then explanations.json and a self-contained explain.html (every
picture embedded, nothing fetched).
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from imgcls.data.images import Preprocessing, input_box
from imgcls.explain.results import Explanation

COLORMAP = "turbo"
MIN_SIDE = 224        # overlays of small images (28 px) are enlarged to at least this side
TILE = 112            # a kNN neighbour's tile


def display_scale(heatmap: np.ndarray) -> np.ndarray:
    """A map as 0..1 for showing: a signed map (integrated gradients, templates) shows its positive
    evidence over the largest; a one-signed map (Grad-CAM, saliency, kNN's) is scaled min to max."""
    m = np.asarray(heatmap, dtype=np.float64)
    if m.min() < 0 < m.max():
        return np.clip(m / m.max(), 0, 1)
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def colour(heatmap: np.ndarray) -> np.ndarray:
    """RGBA uint8 (H, W, 4) of the map in the colormap; the alpha grows with the evidence, so the
    photo shows through where there is none."""
    import matplotlib
    v = display_scale(heatmap)
    rgba = matplotlib.colormaps[COLORMAP](v)
    rgba[..., 3] = 0.65 * np.sqrt(v)
    return (rgba * 255).round().astype(np.uint8)


def overlay(image: np.ndarray, heatmap: np.ndarray, min_side: int = MIN_SIDE) -> Image.Image:
    """The heatmap over the image (uint8 (C, H, W) at the model's input), enlarged to min_side
    (the pixels of the image kept sharp, the map smooth)."""
    photo = _photo(image)
    scale = max(1, int(np.ceil(min_side / min(photo.size))))
    size = (photo.width * scale, photo.height * scale)
    photo = photo.resize(size, Image.Resampling.NEAREST).convert("RGBA")
    heat = Image.fromarray(colour(heatmap), "RGBA").resize(size, Image.Resampling.BILINEAR)
    return Image.alpha_composite(photo, heat).convert("RGB")


def heatmap_over_photo(heatmap: np.ndarray, photo_size: tuple[int, int], prep: Preprocessing,
                       max_side: int = 320) -> Image.Image:
    """An RGBA image with the photo's aspect ratio (long side max_side) holding the heatmap where
    the model's input lay in the photo (its centre crop, say) and transparent elsewhere, so a page
    can lay it over the photo, however the photo is scaled or cropped for showing."""
    width, height = photo_size
    scale = min(1.0, max_side / max(width, height))
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    left, top, right, bottom = (v * scale for v in input_box(width, height, prep))
    box_size = (max(1, round(right - left)), max(1, round(bottom - top)))
    heat = Image.fromarray(colour(heatmap), "RGBA").resize(box_size, Image.Resampling.BILINEAR)
    canvas = Image.new("RGBA", (out_w, out_h), (0, 0, 0, 0))
    canvas.paste(heat, (round(left), round(top)))       # a pad box's overhang is cut off by the canvas
    return canvas


def neighbours_figure(model, image: np.ndarray, explanation: Explanation) -> Image.Image:
    """The image, then its k nearest training images, each captioned with its label and distance."""
    prep = model.preprocessing_
    shape = (prep.channels, *prep.size)
    tiles = [(_photo(image), f"query: {explanation.target}")]
    for n in explanation.neighbours:
        tiles.append((_photo(model.reference_[n.index].reshape(shape).numpy()), f"{n.label}  d={n.distance:.4g}"))
    font = _font()
    caption = 18
    strip = Image.new("RGB", (len(tiles) * (TILE + 6) + 6, TILE + caption + 10), "white")
    draw = ImageDraw.Draw(strip)
    for k, (tile, text) in enumerate(tiles):
        x = 6 + k * (TILE + 6)
        strip.paste(tile.resize((TILE, TILE), Image.Resampling.NEAREST), (x, 6))
        draw.text((x, TILE + 9), text[:22], fill="black", font=font)
    return strip


def template_figure(image: np.ndarray, explanation: Explanation) -> Image.Image:
    """The overlay of template x image, beside the class template itself (blue below zero, red above)."""
    import matplotlib
    left = overlay(image, explanation.map)
    template = explanation.template.mean(0)
    limit = float(np.abs(template).max()) or 1.0
    rgb = (matplotlib.colormaps["RdBu_r"]((template / limit + 1) / 2)[..., :3] * 255).astype(np.uint8)
    right = Image.fromarray(rgb).resize(left.size, Image.Resampling.NEAREST)
    both = Image.new("RGB", (left.width * 2 + 6, left.height), "white")
    both.paste(left, (0, 0))
    both.paste(right, (left.width + 6, 0))
    return both


def picture(model, image: np.ndarray, explanation: Explanation) -> Image.Image:
    """The picture of one explanation, in the model's terms."""
    if explanation.method == "neighbours":
        return neighbours_figure(model, image, explanation)
    if explanation.method == "template":
        return template_figure(image, explanation)
    return overlay(image, explanation.map)


def png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def write_explanations(model, explanations: list[Explanation], images: np.ndarray, paths: list[str],
                       out: str | Path) -> dict[str, Path]:
    """Per explanation an overlay PNG and its map as .npy (named by the image's stem, and for a
    multi-label model by the label too), then explanations.json and explain.html, all in out."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stems = _unique_stems(paths)
    per_label = model.task_.multi_label
    records, cards = [], []
    for e in explanations:
        name = f"{stems[e.image]}.{_slug(e.target)}" if per_label else stems[e.image]
        png = png_bytes(picture(model, images[e.image], e))
        (out / f"{name}.png").write_bytes(png)
        np.save(out / f"{name}.npy", e.map.astype(np.float32))
        record = {"image": str(paths[e.image]), **e.to_dict(), "overlay": f"{name}.png", "map": f"{name}.npy"}
        records.append(record)
        cards.append({**record, "png": base64.b64encode(png).decode()})
    written = {"json": out / "explanations.json", "html": out / "explain.html"}
    written["json"].write_text(json.dumps(records, indent=2))
    written["html"].write_text(render_gallery(model, cards))
    return written


def render_gallery(model, cards: list[dict]) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    from imgcls import __version__
    env = Environment(loader=PackageLoader("imgcls", "explain/templates"), autoescape=select_autoescape())
    return env.get_template("explain.html").render(cards=cards, model=model.model_name, version=__version__,
                                                   multi_label=model.task_.multi_label)


def _photo(image: np.ndarray) -> Image.Image:
    array = np.asarray(image, dtype=np.uint8)
    return Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)).convert("RGB")


def _font():
    try:
        return ImageFont.load_default(size=12)
    except TypeError:            # Pillow without FreeType sizes
        return ImageFont.load_default()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "label"


def _unique_stems(paths: list[str]) -> list[str]:
    """Each image's file stem, with -2, -3, ... where two images share one (a/x.png, b/x.png)."""
    used: set[str] = set()
    stems = []
    for path in paths:
        stem = candidate = Path(path).stem or "image"
        n = 1
        while candidate in used:
            n += 1
            candidate = f"{stem}-{n}"
        used.add(candidate)
        stems.append(candidate)
    return stems
