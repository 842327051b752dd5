"""Make the documentation's pictures (docs/images/*.png) from real runs of imgcls.

    python docs/pictures.py                # every picture
    python docs/pictures.py web report     # some of them (names: see PICTURES)
    python docs/pictures.py --keep DIR     # keep the runs in DIR (default: a temporary folder)

Each picture comes from commands run here, in a scratch folder with its own imgcls cache: models
trained on scikit-learn's digits, scikit-image's cat (imgcls's sample photo chelsea.jpg), the
pretrained EfficientNet-Lite0 (offline). Web pages (report.html, doctor.html, the page `imgcls
serve` serves on a free port) are photographed by a headless Chromium through Playwright:
Debian's /usr/bin/chromium, or Playwright's own browser where that is missing. The PNGs that
`imgcls show`, `explain` and `search` write are copied. Every picture is written as an optimised
palette PNG under MAX_BYTES (200 KB), downscaled where it must be.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
SAMPLES = ROOT / "imgcls" / "data" / "samples"
MAX_BYTES = 200_000
MAX_WIDTH = 1200
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


class Scratch:
    """A folder to run imgcls in, with its own cache; runs each command once."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():          # a kept folder starts afresh, but for its cache
            if old.name != "cache":
                shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        shutil.copy(SAMPLES / "chelsea.jpg", folder / "photo.jpg")
        (folder / "recipes").unlink(missing_ok=True)
        (folder / "recipes").symlink_to(ROOT / "recipes")
        self.env = {**os.environ, "IMGCLS_CACHE": str(folder / "cache"), "IMGCLS_PROGRESS": "0",
                    "IMGCLS_RUNTIME": "torch", "MPLBACKEND": "Agg",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.done: set[str] = set()

    def imgcls(self, *args: str) -> None:
        """Run `imgcls ARGS` here (once per distinct command line)."""
        key = " ".join(args)
        if key in self.done:
            return
        print(f"$ imgcls {key}", flush=True)
        subprocess.run([sys.executable, "-m", "imgcls.cli", *args], cwd=self.folder, env=self.env, check=True,
                       stdout=subprocess.DEVNULL)
        self.done.add(key)

    def path(self, *parts: str) -> Path:
        return self.folder.joinpath(*parts)


def save_picture(source: Image.Image | Path, name: str) -> Path:
    """docs/images/<name>.png: an optimised palette PNG of source, downscaled until under MAX_BYTES."""
    image = Image.open(source) if isinstance(source, Path) else source
    image = image.convert("RGB")
    if image.width > MAX_WIDTH:
        image = image.resize((MAX_WIDTH, round(image.height * MAX_WIDTH / image.width)), Image.LANCZOS)
    target = IMAGES / f"{name}.png"
    IMAGES.mkdir(parents=True, exist_ok=True)
    while True:
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            target, optimize=True)
        if target.stat().st_size <= MAX_BYTES:
            print(f"  {target.relative_to(ROOT)}: {image.width}x{image.height}, {target.stat().st_size:,} bytes")
            return target
        image = image.resize((round(image.width * 0.85), round(image.height * 0.85)), Image.LANCZOS)


@contextlib.contextmanager
def browser_page(width: int = 1100, height: int = 900):
    """A headless Chromium page (Playwright)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        options = {"executable_path": str(CHROMIUM)} if CHROMIUM.is_file() else {}
        browser = p.chromium.launch(args=CHROMIUM_ARGS, **options)
        try:
            page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def screenshot_file(html: Path, name: str, height: int | None = None) -> Path:
    """A self-contained HTML page as the browser shows it: its top height pixels, or all of it."""
    shot = html.with_suffix(".png")
    with browser_page(width=1000, height=height or 1000) as page:
        page.goto(html.resolve().as_uri())
        page.wait_for_load_state("load")
        page.screenshot(path=str(shot), full_page=height is None)
    return save_picture(shot, name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the pictures -----------------------------------------------------------------------------
def report(scratch: Scratch) -> None:
    """A network's report.html: a course CNN trained 3 epochs on the digits."""
    scratch.imgcls("train", "digits", "--model", "cnn", "--epochs", "3", "--out", "runs/cnn")
    screenshot_file(scratch.path("runs", "cnn", "report.html"), "report", height=2600)


def web(scratch: Scratch) -> None:
    """The page `imgcls serve` serves (the pretrained EfficientNet-Lite0), with two photos dropped on it."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "imgcls.cli", "serve", "--port", str(port)],
                              cwd=scratch.folder, env=scratch.env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("pictures: imgcls serve did not answer /healthz")
                time.sleep(0.3)
        shot = scratch.path("web.png")
        with browser_page(width=1000, height=1000) as page:
            page.goto(url)
            page.locator("#model").filter(has_text="efficientnet_lite0").wait_for()
            for photo in ("coffee.jpg", "chelsea.jpg"):      # newest first: the cat ends on top
                page.set_input_files("#file", str(SAMPLES / photo))
                page.locator(".result .top-label").nth(0).wait_for()
                time.sleep(0.5)
            page.wait_for_function("document.querySelectorAll('.result .top-label').length >= 2")
            page.screenshot(path=str(shot))
        save_picture(shot, "web")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def show(visual: str, *args: str, picture: str | None = None) -> Callable[[Scratch], None]:
    """`imgcls show VISUAL ARGS`'s PNG."""
    def make(scratch: Scratch) -> None:
        out = f"show-{visual}"
        scratch.imgcls("show", visual, *args, "--out", out)
        png = scratch.path(out, f"{visual.replace('-', '_')}.png")
        save_picture(png, picture or f"show-{visual}")
    make.__doc__ = f"imgcls show {visual} {' '.join(args)}"
    return make


def templates(scratch: Scratch) -> None:
    """A linear model's class templates on the digits."""
    scratch.imgcls("train", "digits", "--model", "linear", "--epochs", "20", "--out", "runs/linear")
    show("templates", "runs/linear", picture="templates")(scratch)


def explain(scratch: Scratch) -> None:
    """Grad-CAM of EfficientNet-Lite0's top class on the cat."""
    scratch.imgcls("explain", "efficientnet_lite0", "photo.jpg", "--out", "why")
    overlays = sorted(p for p in scratch.path("why").glob("*.png"))
    save_picture(overlays[0], "explain")


def search_gallery(scratch: Scratch) -> None:
    """Fashion-MNIST test images and their nearest training images (pixels, exact)."""
    scratch.imgcls("index", "fashion-mnist", "--split", "train", "--out", "runs/fashion-index")
    scratch.imgcls("search", "runs/fashion-index", "--from", "fashion-mnist", "--split", "test", "--n", "6", "-k", "8",
                   "--out", "runs/fashion-neighbours")
    save_picture(scratch.path("runs", "fashion-neighbours", "gallery.png"), "search-gallery")


def doctor(scratch: Scratch) -> None:
    """doctor.html of the digits, with likely label errors."""
    scratch.imgcls("doctor", "digits", "--label-errors", "--out", "digits-doctor")
    screenshot_file(scratch.path("digits-doctor", "doctor.html"), "doctor")


PICTURES: dict[str, Callable[[Scratch], None]] = {
    "report": report,
    "web": web,
    "show-kernel": show("kernel", "photo.jpg", "--kernel", "sobel-x"),
    "show-filters": show("filters", "efficientnet_lite0"),
    "show-activations": show("activations", "efficientnet_lite0", "photo.jpg"),
    "templates": templates,
    "show-boundaries": show("boundaries", "digits", "--model", "knn", "--k", "1,5,15"),
    "show-batch": show("batch", "fashion-mnist", "--config", "recipes/fashion-5min.yaml"),
    "show-distances": show("distances", "photo.jpg"),
    "explain": explain,
    "search-gallery": search_gallery,
    "doctor": doctor,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"pictures to make (default: all): {', '.join(PICTURES)}")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    names = args.names or list(PICTURES)
    unknown = [name for name in names if name not in PICTURES]
    if unknown:
        parser.error(f"no picture named {', '.join(unknown)}; valid: {', '.join(PICTURES)}")
    with contextlib.ExitStack() as stack:
        folder = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="imgcls-pictures-")))
        scratch = Scratch(folder)
        for name in names:
            started = time.monotonic()
            print(f"{name}: {PICTURES[name].__doc__}", flush=True)
            PICTURES[name](scratch)
            print(f"  ({time.monotonic() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
