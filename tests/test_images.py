"""formats/images.py: every kind of bad or unusual image gives an RGB image or a named reason."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

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
