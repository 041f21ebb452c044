"""formats/images.py: every kind of bad or unusual image gives an RGB image or a named reason."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, features

from recbole_vlm4rec.formats.images import (
    ImageError,
    load_image,
    resolve_image_reference,
)


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_rgb_image_loads_unchanged_with_hash_of_bytes(tmp_path: Path) -> None:
    data = encoded(Image.new("RGB", (12, 8), (10, 20, 30)))
    path = tmp_path / "a.png"
    path.write_bytes(data)
    loaded = load_image(path)
    assert loaded.image.mode == "RGB" and loaded.image.size == (12, 8)
    assert loaded.image.getpixel((0, 0)) == (10, 20, 30)
    assert loaded.notes == []
    assert loaded.sha256 == load_image(data).sha256
    assert loaded.sha256 != load_image(encoded(Image.new("RGB", (12, 8)))).sha256


@pytest.mark.parametrize(
    "image, fmt, expected_pixel, note",
    [
        (Image.new("CMYK", (6, 6), (0, 255, 255, 0)), "JPEG", None, "converted CMYK"),
        (Image.new("RGBA", (6, 6), (0, 0, 0, 0)), "PNG", (255, 255, 255), "composited RGBA"),
        (Image.new("LA", (6, 6), (0, 0)), "PNG", (255, 255, 255), "composited LA"),
        (Image.new("L", (6, 6), 77), "PNG", (77, 77, 77), "converted L"),
        (Image.new("P", (6, 6), 3), "GIF", None, "converted P"),
    ],
)
def test_unusual_modes_become_rgb_and_say_so(image, fmt, expected_pixel, note) -> None:
    loaded = load_image(encoded(image, fmt))
    assert loaded.image.mode == "RGB"
    assert loaded.original_mode == image.mode
    assert any(n.startswith(note) for n in loaded.notes), loaded.notes
    if expected_pixel is not None:
        assert loaded.image.getpixel((0, 0)) == expected_pixel


def test_cmyk_red_stays_red() -> None:
    loaded = load_image(encoded(Image.new("CMYK", (6, 6), (0, 255, 255, 0)), "JPEG"))
    red, green, blue = loaded.image.getpixel((3, 3))
    assert red > 200 and green < 60 and blue < 60


def test_sixteen_bit_greyscale_is_scaled_not_saturated() -> None:
    image = Image.new("I;16", (4, 1))
    image.putdata([0, 1000, 2000, 4000])
    pixels = [load_image(encoded(image)).image.getpixel((x, 0))[0] for x in range(4)]
    assert pixels[0] == 0 and pixels[-1] == 255 and 0 < pixels[1] < pixels[2] < 255


def test_huge_image_is_downscaled_and_too_many_pixels_refused() -> None:
    wide = encoded(Image.new("RGB", (3000, 60)))
    loaded = load_image(wide, max_side=500)
    assert loaded.image.size == (500, 10) and loaded.original_size == (3000, 60)
    assert any("downscaled" in n for n in loaded.notes)
    with pytest.raises(ImageError) as error:
        load_image(wide, max_pixels=100_000)
    assert error.value.reason == "too_large"


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty_file"),
        (b"this is not an image at all", "not_an_image"),
        (encoded(Image.new("RGB", (300, 300), "red"), "JPEG")[:400], "truncated"),
        (encoded(Image.new("RGB", (300, 300), "red"), "PNG")[:60], "truncated"),
    ],
)
def test_bad_bytes_have_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError) as error:
        load_image(data, name="item-7")
    assert error.value.reason == reason
    assert "item-7" in str(error.value)


def test_bad_references_have_a_reason(tmp_path: Path) -> None:
    cases = {
        str(tmp_path / "nope.jpg"): "missing",
        "": "no_image",
        "https://example.com/a.jpg": "remote",
        str(tmp_path): "unreadable",  # a folder
    }
    for source, reason in cases.items():
        with pytest.raises(ImageError) as error:
            load_image(source)
        assert error.value.reason == reason, source


def test_references_resolve_relative_to_the_dataset_folder(tmp_path: Path) -> None:
    assert resolve_image_reference("images/1.jpg", tmp_path) == str(tmp_path / "images/1.jpg")
    assert resolve_image_reference("/abs/1.jpg", tmp_path) == "/abs/1.jpg"
    assert resolve_image_reference(" http://x/1.jpg ", tmp_path) == "http://x/1.jpg"
    assert resolve_image_reference("", tmp_path) == ""


def test_exif_orientation_turns_the_photo_upright() -> None:
    """A camera stores a portrait photo landscape with EXIF orientation 6 (turn 90 degrees
    clockwise to view): it is described and encoded upright, and the fix is noted."""
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 20))  # red strip on the stored left = the top, upright
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", exif=exif, quality=95)
    loaded = load_image(buffer.getvalue())
    assert loaded.image.size == (20, 40) and loaded.original_size == (40, 20)
    red, _, blue = loaded.image.getpixel((10, 2))
    assert red > 200 and blue < 60  # the red strip is now on top
    assert any("EXIF orientation 6" in note for note in loaded.notes)
    assert load_image(encoded(stored, "JPEG")).notes == []  # no EXIF: nothing turned


@pytest.mark.parametrize("fmt", ["JPEG", "JPEG2000"])
def test_an_image_over_the_pixel_limit_is_decoded_downscaled_where_the_format_allows(fmt) -> None:
    if fmt == "JPEG2000" and not features.check("jpg_2000"):
        pytest.skip("Pillow built without OpenJPEG")
    big = encoded(Image.new("RGB", (800, 600), (200, 30, 30)), fmt)
    loaded = load_image(big, max_pixels=100_000, max_side=None)  # 480,000 pixels: 1/4 scale fits
    assert loaded.image.size == (200, 150) and loaded.original_size == (800, 600)
    assert any("1/4 scale" in note for note in loaded.notes), loaded.notes
    assert loaded.image.getpixel((100, 75))[0] > 180
    with pytest.raises(ImageError, match="even at 1/8 scale") as error:
        load_image(big, max_pixels=1_000)
    assert error.value.reason == "too_large"
    with pytest.raises(ImageError, match="PNG cannot be decoded downscaled"):
        load_image(encoded(Image.new("RGB", (800, 600)), "PNG"), max_pixels=100_000)


def test_a_jpeg_over_pillows_bomb_limit_is_decoded_small_not_refused(monkeypatch) -> None:
    """Pillow refuses to open images over its decompression-bomb limit (~179 million pixels by
    default; lowered here so the test stays small): a JPEG that large still loads downscaled,
    under our own max_pixels guard; a PNG that large is refused as too_large."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
    jpeg = encoded(Image.new("RGB", (800, 600), (0, 128, 0)), "JPEG")
    loaded = load_image(jpeg, max_pixels=100_000, max_side=None)
    assert loaded.image.size == (200, 150)
    with pytest.raises(ImageError) as error:
        load_image(encoded(Image.new("RGB", (800, 600)), "PNG"), max_pixels=10_000_000)
    assert error.value.reason == "too_large" and " at 0x" not in str(error.value)


def test_failure_details_are_the_same_on_every_run() -> None:
    details = set()
    for _ in range(2):
        with pytest.raises(ImageError) as error:
            load_image(b"GIF89a not really", name="x.gif")
        details.add(str(error.value))
    assert len(details) == 1 and " at 0x" not in details.pop()
    with pytest.raises(ImageError) as error:
        load_image(b"plain text, not an image", name="t.jpg")
    assert "BytesIO" not in str(error.value) and "b'plain text, '" in str(error.value)
