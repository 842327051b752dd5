"""`imgcls show kernel`: an image, a kernel with its numbers, and the image filtered by it.

The filtering is scipy.ndimage's, per channel, in float64, with the output the size of the input
(the border padded with zeros by default). A CNN layer computes a *correlation*: the kernel slides
over the image as written. A *convolution* flips the kernel in both axes first; the two agree for
symmetric kernels (blur, sharpen, edge) and differ in sign for Sobel. The figure and the JSON say
which one was computed.
"""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy import ndimage

from imgcls.errors import ImgclsError
from imgcls.visuals.common import display, finish_figure, pyplot, read_image, write_numbers

KERNELS = {
    "identity": [[0, 0, 0], [0, 1, 0], [0, 0, 0]],
    "sobel-x": [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],     # responds to brightness rising left to right
    "sobel-y": [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],     # ... rising top to bottom
    "sharpen": [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
    "edge": [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]],   # a Laplacian: zero on flat areas
}
BLUR_SIDE = 21          # the course's box blur; blur:N for another odd side
OPERATIONS = ("correlation", "convolution")
PADDINGS = {"zeros": "constant", "reflect": "reflect", "nearest": "nearest"}   # ours -> scipy's mode
_EXAMPLE = '"-1 0 1; -2 0 2; -1 0 1"'


def kernel_names() -> list[str]:
    return [*KERNELS, "blur", "blur:N"]


def parse_kernel(spec: str) -> tuple[str, np.ndarray]:
    """(name, float64 square kernel of odd side) from a name (see kernel_names) or a matrix written
    as rows separated by ';', numbers by spaces or commas ("1/9" allowed)."""
    text = spec.strip().lower()
    if text in KERNELS:
        return text, np.array(KERNELS[text], dtype=np.float64)
    blur = re.fullmatch(r"blur(?::(\d+))?", text)
    if blur:
        side = int(blur.group(1) or BLUR_SIDE)
        _check_side(spec, side)
        return f"blur {side}x{side}", np.full((side, side), 1 / side**2)
    return "custom", _parse_matrix(spec)


def _parse_matrix(spec: str) -> np.ndarray:
    rows = [row.replace(",", " ").split() for row in spec.strip().strip(";").split(";")]
    if not any(rows):
        _bad(spec, "it is empty")
    if spec.count(";") == 0 and not _is_number(rows[0][0]):
        _bad(spec, "not a kernel's name")
    numbers = []
    for i, row in enumerate(rows, 1):
        for entry in row:
            if not _is_number(entry):
                _bad(spec, f"{entry!r} (row {i}) is not a number")
        numbers.append([float(Fraction(entry)) for entry in row])
    widths = sorted({len(row) for row in numbers})
    if len(widths) > 1:
        _bad(spec, f"its rows hold different counts of numbers ({', '.join(map(str, widths))})")
    if widths[0] != len(numbers):
        _bad(spec, f"{len(numbers)} row(s) of {widths[0]} number(s) is not square")
    _check_side(spec, len(numbers))
    return np.array(numbers, dtype=np.float64)


def _is_number(text: str) -> bool:
    try:
        Fraction(text)
        return True
    except (ValueError, ZeroDivisionError):
        return False


def _check_side(spec: str, side: int) -> None:
    if side < 1 or side % 2 == 0:
        _bad(spec, f"its side {side} is not odd, so it has no centre pixel")


def _bad(spec: str, reason: str):
    raise ImgclsError(f"kernel {spec!r}: {reason}; a kernel is a name ({', '.join(kernel_names())}) or a square "
                      f"matrix of numbers with an odd side, rows separated by ';', e.g. {_EXAMPLE}")


def apply_kernel(image: np.ndarray, kernel: np.ndarray, operation: str = "correlation",
                 padding: str = "zeros") -> np.ndarray:
    """image (C, H, W) filtered channel by channel with kernel: float64 (C, H, W), the output pixel
    at the kernel's centre. correlation slides the kernel as given (what conv2d layers compute);
    convolution slides it flipped in both axes."""
    if operation not in OPERATIONS:
        raise ImgclsError(f"unknown operation {operation!r}; valid: {', '.join(OPERATIONS)}")
    if padding not in PADDINGS:
        raise ImgclsError(f"unknown padding {padding!r}; valid: {', '.join(PADDINGS)}")
    filtered = ndimage.correlate if operation == "correlation" else ndimage.convolve
    pixels = np.asarray(image, dtype=np.float64)
    return np.stack([filtered(channel, kernel, mode=PADDINGS[padding], cval=0.0) for channel in pixels])


def show_kernel(image_path: str | Path, spec: str, out: str | Path, *, operation: str = "correlation",
                padding: str = "zeros", channels: int | None = None, max_side: int = 512) -> dict:
    """Write kernel.png (input, kernel, output), kernel.json (the numbers) and kernel.npz (input,
    kernel and the float64 output) into out; returns the JSON's content."""
    name, kernel = parse_kernel(spec)
    image = read_image(image_path, channels=channels, max_side=max_side)
    output = apply_kernel(image, kernel, operation, padding)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "kernel.npz", input=image, kernel=kernel, output=output)
    flipped = operation == "convolution"
    numbers = {
        "image": str(image_path), "kernel": name, "matrix": kernel.tolist(), "side": len(kernel),
        "sum": float(kernel.sum()), "operation": operation, "kernel_flipped": flipped,
        "meaning": ("convolution: the kernel is flipped in both axes before it slides over the image" if flipped else
                    "correlation: the kernel slides over the image as written, as a CNN's conv2d layer computes"),
        "padding": padding, "per_channel": True, "input_shape": list(image.shape),
        "output_shape": list(output.shape), "output_min": float(output.min()), "output_max": float(output.max()),
        "output_mean": float(output.mean()), "arrays": "kernel.npz"}
    numbers["figure"] = str(_plot(image, kernel, output, numbers, out))
    write_numbers(out, "kernel", numbers)
    return numbers


def _plot(image: np.ndarray, kernel: np.ndarray, output: np.ndarray, numbers: dict, out: Path) -> Path:
    plt = pyplot()
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(11, 4.2), dpi=100,
                                              gridspec_kw={"width_ratios": [1, 0.8, 1]})
    left.imshow(display(image), cmap="gray", vmin=0, vmax=255)
    left.set_title(f"input, {image.shape[1]} x {image.shape[2]} px (height x width)", fontsize=9)
    _draw_kernel(middle, kernel, numbers["kernel"])
    signed = output.min() < -1e-9 or output.max() > 255 + 1e-9
    if signed and output.shape[0] == 1:
        limit = float(np.abs(output).max()) or 1.0
        shown = right.imshow(output[0], cmap="RdBu_r", vmin=-limit, vmax=limit)
        fig.colorbar(shown, ax=right, fraction=0.046, pad=0.03)
        note = "signed (red +, blue -)"
    else:
        right.imshow(display(np.clip(output, 0, 255) / 255), cmap="gray", vmin=0, vmax=1)
        note = "clipped to 0..255 for display" if signed else "0..255"
    right.set_title(f"output: {numbers['operation']}, {numbers['padding']} padding\n{note}", fontsize=9)
    for ax in (left, right):
        ax.axis("off")
    fig.suptitle(numbers["meaning"], fontsize=9)
    fig.tight_layout()
    return finish_figure(fig, out, "kernel")


def _draw_kernel(ax, kernel: np.ndarray, name: str) -> None:
    """The kernel as a heat map, with its numbers written in the cells when they fit."""
    limit = float(np.abs(kernel).max()) or 1.0
    ax.imshow(kernel, cmap="RdBu_r", vmin=-limit, vmax=limit)
    side = len(kernel)
    if side <= 7:
        for (i, j), value in np.ndenumerate(kernel):
            ax.text(j, i, f"{value:g}" if value == round(value) else f"{value:.3g}", ha="center", va="center",
                    fontsize=12 if side <= 3 else 8, color="white" if abs(value) > 0.6 * limit else "black")
        title = f"kernel: {name}"
    else:
        values = np.unique(kernel)
        every = f", every weight {values[0]:.4g}" + (f" (1/{round(1 / values[0])})" if values[0] > 0 else "") \
            if len(values) == 1 else ""
        title = f"kernel: {name}{every}"
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
