"""JPEG draft decoding (libjpeg's DCT scaling through PIL's draft()) and random resized crops taken
while decoding: checked against PIL's full decode and resampling, done by hand."""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin

from imgcls.data.images import Preprocessing, UnreadableImage, crop_frames, decode_image, input_box


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, bytes]:
    """scikit-image's photographs as JPEG bytes (quality 90): 512 x 512, 451 x 300, 400 x 600."""
    found = {}
    for name in ("astronaut", "chelsea", "coffee"):
        buffer = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).save(buffer, "JPEG", quality=90)
        found[name] = buffer.getvalue()
    return found


def pil_reference(data: bytes, size: int, method=Image.Resampling.BILINEAR) -> np.ndarray:
    """The centre crop at size x size, resampled from every decoded pixel by PIL."""
    image = ImageOps.fit(Image.open(io.BytesIO(data)).convert("RGB"), (size, size), method)
    return np.asarray(image).transpose(2, 0, 1).astype(int)


@pytest.fixture
def draft_scales(monkeypatch):
    """The DCT reductions the JPEG decoder was asked for."""
    asked, real = [], JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        width = self.width
        chosen = real(self, mode, size)
        asked.append(round(width / chosen[1][2]) if chosen else 1)
        return chosen
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return asked


@pytest.mark.parametrize("size", [64, 128])
def test_draft_decodes_large_jpegs_reduced_and_within_the_spread_of_resampling_filters(photos, size, draft_scales):
    for name, data in photos.items():
        full = decode_image(data, Preprocessing(3, (size, size), decode="full")).astype(int)
        draft = decode_image(data, Preprocessing(3, (size, size), decode="draft")).astype(int)
        assert np.array_equal(full, pil_reference(data, size))          # full: every pixel, then PIL's resize
        lanczos = pil_reference(data, size, Image.Resampling.LANCZOS)
        # The draft decode differs from the full one by less than two good filters differ from each other.
        assert np.abs(draft - full).mean() < np.abs(full - lanczos).mean(), name
        assert np.abs(draft - full).mean() < 4
    # the largest reduction that keeps the short sides (512, 300, 400) at least the target's
    assert draft_scales == ([8, 4, 4] if size == 64 else [4, 2, 2])


def test_draft_changes_nothing_where_the_photo_is_not_twice_the_target(photos, tmp_path):
    prep = dict(channels=3, size=(240, 240), crop_pct=0.875, interpolation="bicubic")
    for data in photos.values():           # 512 * 0.875 = 448 < 2 x 240 for the largest
        assert np.array_equal(decode_image(data, Preprocessing(**prep, decode="draft")),
                              decode_image(data, Preprocessing(**prep, decode="full")))
    png = tmp_path / "a.png"
    Image.fromarray(skimage.data.astronaut()).save(png)
    assert np.array_equal(decode_image(png, Preprocessing(3, (32, 32))), decode_image(png, Preprocessing(3, (32, 32), decode="full")))


def test_grayscale_drafts_read_the_jpegs_luma(photos):
    for data in photos.values():
        full = decode_image(data, Preprocessing(1, (96, 96), decode="full")).astype(int)
        draft = decode_image(data, Preprocessing(1, (96, 96))).astype(int)
        assert draft.shape == full.shape == (1, 96, 96) and np.abs(draft - full).mean() < 4


def test_a_preprocessing_saved_without_decode_reads_as_the_full_decode():
    old = {"channels": 3, "size": [32, 32], "resize": "crop", "crop_pct": 1.0, "interpolation": "bilinear"}
    assert Preprocessing.from_dict(old).decode == "full"
    assert Preprocessing(3, (32, 32)).decode == "draft"
    assert Preprocessing.from_dict(Preprocessing(3, (32, 32)).to_dict()) == Preprocessing(3, (32, 32))
    with pytest.raises(Exception, match="unknown decode 'fast'; valid: draft, full"):
        Preprocessing(3, (32, 32), decode="fast")


@pytest.mark.parametrize("crop_pct", [1.0, 0.875])
def test_a_crop_is_resampled_once_from_the_files_pixels(photos, crop_pct):
    data = photos["coffee"]                                        # 600 x 400
    prep = Preprocessing(3, (96, 96), crop_pct=crop_pct, decode="full")
    top, left, height, width = 10, 30, 50, 40                      # in the 96 x 96 input's pixels
    l, t, r, b = input_box(600, 400, prep)
    scale_x, scale_y = (r - l) / 96, (b - t) / 96
    box = (l + left * scale_x, t + top * scale_y, l + (left + width) * scale_x, t + (top + height) * scale_y)
    expected = Image.open(io.BytesIO(data)).convert("RGB").resize((96, 96), Image.Resampling.BILINEAR, box=box,
                                                                  reducing_gap=3.0)
    cropped = decode_image(data, prep, crop=(top, left, height, width))
    assert np.array_equal(cropped, np.asarray(expected).transpose(2, 0, 1))
    drafted = decode_image(data, Preprocessing(3, (48, 48), crop_pct=crop_pct), crop=(5, 15, 25, 20)).astype(int)
    whole = decode_image(data, Preprocessing(3, (48, 48), crop_pct=crop_pct, decode="full"), crop=(5, 15, 25, 20))
    assert np.abs(drafted - whole.astype(int)).mean() < 4


def test_a_crop_of_a_padded_image_is_cut_from_the_decoded_frame(photos):
    prep = Preprocessing(3, (64, 64), resize="pad")
    frame = torch.from_numpy(decode_image(photos["coffee"], prep).copy())
    cropped = decode_image(photos["coffee"], prep, crop=(0, 8, 40, 48))
    assert np.array_equal(cropped, crop_frames(frame[None], [(0, 8, 40, 48)])[0].numpy())


def test_exif_rotated_jpegs_draft_and_crop_upright(photos):
    upright = Image.open(io.BytesIO(photos["coffee"]))
    stored = upright.transpose(Image.Transpose.ROTATE_90)          # what a camera held sideways writes...
    exif = Image.Exif()
    exif[0x0112] = 6                                                # ...with "rotate 90 clockwise to view"
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=95, exif=exif)
    prep = Preprocessing(3, (48, 48))
    for crop in (None, (4, 6, 30, 20)):
        a = decode_image(buffer.getvalue(), prep, crop=crop).astype(int)
        b = decode_image(photos["coffee"], prep, crop=crop).astype(int)
        assert np.abs(a - b).mean() < 4                             # the same view, re-encoded once more


def test_a_jpeg_that_fails_in_draft_mode_is_decoded_whole(photos, monkeypatch):
    real = ImageFile.ImageFile.load

    def fails_when_reduced(self):
        if getattr(self, "decoderconfig", None) and self.decoderconfig[0] > 1:
            raise OSError("broken data stream when reading image file")
        return real(self)
    monkeypatch.setattr(ImageFile.ImageFile, "load", fails_when_reduced)
    for crop in (None, (10, 10, 40, 40)):
        assert np.array_equal(decode_image(photos["astronaut"], Preprocessing(3, (64, 64)), crop=crop),
                              decode_image(photos["astronaut"], Preprocessing(3, (64, 64), decode="full"), crop=crop))
    for decode in ("draft", "full"):     # a file cut short fails both ways, and says why
        with pytest.raises(UnreadableImage, match="truncated or corrupt image"):
            decode_image(photos["astronaut"][:5000], Preprocessing(3, (64, 64), decode=decode))
