"""The web page in a real headless Chromium, against the real server: the pretrained model, and a
multi-label model whose labels above threshold the page must mark."""

from __future__ import annotations

import base64
import re
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import skimage.data
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
CATS = {"tabby", "tiger cat", "Egyptian cat"}

sync_api = pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed")
uvicorn = pytest.importorskip("uvicorn")
pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _serving(model, **options):
    """The real app serving model (create_app(model, **options)) on uvicorn in a thread; yields its base URL."""
    from imgcls.serving.app import create_app

    port = _free_port()
    config = uvicorn.Config(create_app(model, **options), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the server did not answer /healthz within 30 s")
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def _browser(url):
    """A headless Chromium page opened on url."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.set_default_timeout(15_000)
            page.goto(url)
            yield page
        finally:
            browser.close()


@pytest.fixture
def server():
    """The pretrained ImageNet model served; yields its base URL."""
    from imgcls.models import pretrained_model
    with _serving(pretrained_model("efficientnet_lite0")) as url:
        yield url


@pytest.fixture
def page(server):
    with _browser(server) as page:
        yield page


def _photo(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.jpg"
    Image.fromarray(getattr(skimage.data, name)()).save(path, quality=92)
    return path


def _newest(page):
    """The newest card (cards are listed newest first)."""
    return page.locator(".result").first


def test_upload_errors_and_drop_in_a_real_browser(page, tmp_path):
    sync_api.expect(page.locator("#model")).to_contain_text("efficientnet_lite0")
    sync_api.expect(page.locator("#model")).to_contain_text("1,000 classes")

    # A real photo through the file chooser: the label comes from the model, the score is a percentage.
    page.set_input_files("input[type=file]", _photo(tmp_path, "coffee"))
    top = _newest(page).locator(".top-label")
    sync_api.expect(top).to_have_text("espresso")
    score = _newest(page).locator(".top-score").inner_text()
    assert score.endswith("%") and 50 < float(score[:-1]) <= 100
    assert _newest(page).locator(".predictions li").count() == 5
    assert _newest(page).locator(".chosen, li.above, .cut").count() == 0      # nothing multi-label about it

    # Text under an image name: the browser calls it image/png, so only the server can refuse it,
    # and its JSON error must reach the card.
    notes = tmp_path / "notes.png"
    notes.write_text("shopping list: milk, coffee beans\n")
    page.set_input_files("input[type=file]", notes)
    sync_api.expect(page.locator(".result")).to_have_count(2)
    error = _newest(page).locator(".error")
    sync_api.expect(error).to_contain_text("not an image file")
    assert _newest(page).locator(".top-label").count() == 0

    # The page still works after the error.
    page.set_input_files("input[type=file]", _photo(tmp_path, "chelsea"))
    sync_api.expect(page.locator(".result")).to_have_count(3)
    sync_api.expect(_newest(page).locator(".top-label")).to_have_text(re.compile(f"^({'|'.join(CATS)})$"))

    # Drag and drop of three files at once, as a synthetic drop event carrying Files built in the page:
    # the photo's bytes, a text file, and 25 MB of zeros under an image name. The page must refuse the
    # last two itself, without uploading them.
    answers = []
    page.on("response", lambda r: answers.append(r) if r.url.endswith("/v1/classify") else None)
    jpeg = base64.b64encode((tmp_path / "coffee.jpg").read_bytes()).decode()
    page.evaluate("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.jpg", {type: "image/jpeg"}));
        transfer.items.add(new File(["just words"], "readme.txt", {type: "text/plain"}));
        transfer.items.add(new File([new Uint8Array(25 * 2 ** 20)], "huge.jpg", {type: "image/jpeg"}));
        const zone = document.querySelector(".drop");
        for (const type of ["dragenter", "dragover", "drop"]) {
            zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }
    }""", jpeg)
    sync_api.expect(page.locator(".result")).to_have_count(6)
    card = page.locator(".result", has_text="dropped.jpg")
    sync_api.expect(card.locator(".top-label")).to_have_text("espresso")
    sync_api.expect(page.locator(".result", has_text="readme.txt").locator(".error")).to_contain_text(
        "not an image file")
    sync_api.expect(page.locator(".result", has_text="huge.jpg").locator(".error")).to_contain_text(
        "too large: 25.0 MB, limit 20 MB")
    assert len(answers) == 1 and answers[0].json()["results"][0]["filename"] == "dropped.jpg"

    shot = page.screenshot(path=tmp_path / "page.png", full_page=True)
    assert shot.startswith(b"\x89PNG\r\n\x1a\n") and (tmp_path / "page.png").stat().st_size > 10_000
    with Image.open(tmp_path / "page.png") as image:
        assert image.width == 1100 and image.height >= 900


ACCENT = "rgb(37, 99, 235)"       # --accent in index.html


def test_a_multi_label_model_marks_the_labels_above_threshold(quadrant_model, tmp_path):
    from imgcls.data.images import decode_image
    lit = np.full((8, 8), 20, np.uint8)
    lit[:4, :4] = lit[:4, 4:] = 200                     # quadrants a and c
    files = {"ac": lit, "none": np.full((8, 8), 20, np.uint8)}
    for name, image in files.items():
        Image.fromarray(image).save(tmp_path / f"{name}.png")

    def library(name):
        """Every label's probability and the labels model.predict gives, in score order."""
        image = decode_image(tmp_path / f"{name}.png", quadrant_model.preprocessing_)[None]
        proba, chosen = quadrant_model.predict_proba(image)[0], quadrant_model.predict(image)[0]
        order = np.argsort(-proba, kind="stable")
        return proba, [quadrant_model.class_names_[j] for j in order if chosen[j]]

    with _serving(quadrant_model) as url, _browser(url) as page:
        sync_api.expect(page.locator("#model")).to_contain_text("3 labels · multi-label")

        page.set_input_files("input[type=file]", tmp_path / "ac.png")
        card = _newest(page)
        proba, chosen = library("ac")
        assert sorted(chosen) == ["a", "c"]                                  # the model sees both quadrants
        sync_api.expect(card.locator(".chosen")).to_have_text("labels: " + ", ".join(chosen))
        sync_api.expect(card.locator(".predictions li")).to_have_count(3)    # every label's score
        assert card.locator("li.above .label").all_inner_texts() == chosen
        for item in card.locator(".predictions li").all():
            label = item.locator(".label").inner_text()
            above = label in chosen
            tick = item.locator(".label").evaluate("(n) => getComputedStyle(n, '::before').content")
            fill = item.locator(".fill").evaluate("(n) => getComputedStyle(n).backgroundColor")
            assert ("\u2713" in tick) == above and (fill == ACCENT) == above, (label, tick, fill)
            j = quadrant_model.class_names_.index(label)
            assert item.locator(".score").inner_text() == f"{proba[j] * 100:.1f}%"
            cut = item.locator(".cut").evaluate("(n) => n.style.left")
            assert float(cut.rstrip("%")) == pytest.approx(100 * quadrant_model.task_.thresholds[j])

        page.set_input_files("input[type=file]", tmp_path / "none.png")
        sync_api.expect(page.locator(".result")).to_have_count(2)
        card = _newest(page)
        assert library("none")[1] == []
        sync_api.expect(card.locator(".chosen")).to_have_text("no label above threshold")
        sync_api.expect(card.locator(".predictions li")).to_have_count(3)
        assert card.locator("li.above").count() == 0
        page.screenshot(path=tmp_path / "multi-label.png", full_page=True)


def test_the_heatmap_toggle_lays_the_heatmap_over_the_photo(page, tmp_path):
    toggle = page.locator("#explain")
    sync_api.expect(page.locator("#explain-toggle")).to_be_visible()       # a network can explain itself
    page.set_input_files("input[type=file]", _photo(tmp_path, "coffee"))
    card = _newest(page)
    sync_api.expect(card.locator(".top-label")).to_have_text("espresso")
    assert card.locator("img.heat").count() == 0                            # off: no heatmap asked for

    # Switched on, the card already shown asks for its heatmap, which covers the photo exactly.
    toggle.check()
    heat = card.locator("img.heat")
    sync_api.expect(heat).to_be_visible()
    sync_api.expect(card.locator(".why")).to_contain_text("gradcam on bn2 for espresso")
    photo = card.locator(".thumb img:not(.heat)")
    assert heat.bounding_box() == photo.bounding_box()
    natural = "(n) => [n.naturalWidth, n.naturalHeight]"
    (hw, hh), (pw, ph) = heat.evaluate(natural), photo.evaluate(natural)
    assert hw / hh == pytest.approx(pw / ph, rel=0.01)                     # the photo's own aspect ratio

    # A photo uploaded while it is on gets its heatmap with its classification, in one request.
    answers = []
    page.on("response", lambda r: answers.append(r) if r.url.endswith("/v1/classify") else None)
    page.set_input_files("input[type=file]", _photo(tmp_path, "chelsea"))
    sync_api.expect(page.locator(".result")).to_have_count(2)
    sync_api.expect(_newest(page).locator("img.heat")).to_be_visible()
    assert len(answers) == 1 and answers[0].json()["results"][0]["explanations"][0]["method"] == "gradcam"

    toggle.uncheck()
    sync_api.expect(page.locator("img.heat").first).to_be_hidden()
    assert page.locator("img.heat").count() == 2                          # kept, to show again at once


def test_a_key_protected_server_asks_once_per_tab(tmp_path):
    from sklearn.datasets import load_digits

    from imgcls.data import load_dataset
    from imgcls.data.images import decode_image
    from imgcls.models import create_model
    model = create_model("knn", k=3).fit(load_dataset("digits").train)
    digit = tmp_path / "digit.png"
    Image.fromarray(np.round(load_digits().images[7] * 255 / 16).astype(np.uint8)).save(digit)
    label = model.class_names_[int(model.predict(decode_image(digit, model.preprocessing_)[None])[0])]
    key = "the-page-key_0123"

    with _serving(model, api_key=key) as url, _browser(url) as page:
        statuses = []
        page.on("response", lambda r: statuses.append(r.status) if "/v1/" in r.url else None)
        form = page.locator("#key-form")
        sync_api.expect(form).to_be_visible()                     # the model description was refused
        sync_api.expect(page.locator("#model")).not_to_contain_text("knn")

        page.fill("#key", "not-the-key")
        page.click("#key-form button")
        sync_api.expect(page.locator("#key-note")).to_have_text("That key was refused. Try again.")
        # A photo chosen while the page waits for the key is classified once the key comes.
        page.set_input_files("input[type=file]", digit)
        page.fill("#key", key)
        page.click("#key-form button")
        sync_api.expect(form).to_be_hidden()
        sync_api.expect(page.locator("#model")).to_contain_text("knn")
        sync_api.expect(_newest(page).locator(".top-label")).to_have_text(label)
        # The first refusal (the page's own /v1/model on load) may come before the listener is on.
        assert statuses[-3:] == [401, 200, 200] and statuses[:-3] in ([], [401]), statuses
        assert page.evaluate("sessionStorage.getItem('imgcls.apiKey')") == key

        # A reload in the same tab keeps the key: nothing is asked, every call gets in.
        statuses.clear()
        page.reload()
        sync_api.expect(page.locator("#model")).to_contain_text("knn")
        page.set_input_files("input[type=file]", digit)
        sync_api.expect(_newest(page).locator(".top-label")).to_have_text(label)
        assert form.is_hidden() and statuses == [200, 200]

        # Kept for the tab alone: nothing in localStorage or cookies, which would outlive it.
        assert page.evaluate("localStorage.length + document.cookie.length") == 0


def test_a_model_that_abstains_shows_not_sure_with_its_guesses(tmp_path):
    """An image unlike the training data gets "not sure: ..." naming the top guesses, not an answer;
    a clear one gets its label as usual."""
    from sklearn.datasets import load_digits

    from imgcls.models import create_model
    from imgcls.models.abstention import Abstention
    digits = load_digits()
    images = np.round(digits.images * 255 / 16).astype(np.uint8)
    model = create_model("knn", k=7).fit(images[:, None], digits.target,
                                         class_names=[str(d) for d in range(10)])
    model.abstention_ = Abstention(score="msp", threshold=0.0)     # unanimous neighbours only, by hand
    clear = images[0]
    blend = np.round((images[0].astype(float) + images[1]) / 2).astype(np.uint8)
    for name, image in (("clear", clear), ("blend", blend)):
        Image.fromarray(np.kron(image, np.ones((4, 4), np.uint8))).save(tmp_path / f"{name}.png")
    proba = model.predict_proba(np.stack([clear, blend])[:, None])
    assert proba[0].max() == 1 and proba[1].max() < 1               # what the page must show

    with _serving(model) as url, _browser(url) as page:
        page.set_input_files("input[type=file]", tmp_path / "clear.png")
        sync_api.expect(_newest(page).locator(".top-label")).to_have_text("0")
        assert _newest(page).locator(".unknown").count() == 0
        page.set_input_files("input[type=file]", tmp_path / "blend.png")
        sync_api.expect(page.locator(".result")).to_have_count(2)
        unsure = _newest(page).locator(".chosen.unknown")
        sync_api.expect(unsure).to_contain_text("not sure: ")
        best = model.class_names_[int(proba[1].argmax())]
        assert best in unsure.inner_text()
        sync_api.expect(_newest(page).locator(".predictions li").first.locator(".label")).to_have_text(best)
