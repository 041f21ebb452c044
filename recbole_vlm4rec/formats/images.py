"""Item images: read, validate and normalise to RGB, with a named reason for every failure.

Every stage that looks at pixels (grounding backends, the image encoder, the tagger) goes through
:func:`load_image`, so a bad file is reported the same way everywhere. Failures raise
:class:`ImageError` whose ``reason`` is one of :data:`REASONS`; callers record it per item and go
on. Images that can be fixed are fixed and the fix is reported in ``LoadedImage.notes``: a photo
stored sideways is turned as its EXIF orientation says, CMYK / palette / greyscale / 16-bit are
converted to RGB, transparency is composited onto white, and images with a side over ``max_side``
are downscaled (aspect kept). An image over ``max_pixels`` is decoded downscaled where the format
allows it (JPEG at 1/2-1/8 scale, JPEG 2000 at a lower resolution level) and refused otherwise.
Failure details name the file and never carry object addresses, so two runs report the same.

Image references (the ``image`` column of ``<dataset>.item``) are a path relative to the dataset
folder, an absolute path, or an http(s) URL. URLs are not fetched here: download them first
(``vlm4rec prepare ... --download-images``).
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

REASONS = {
    "no_image": "the item has no image reference",
    "missing": "the image file does not exist",
    "unreadable": "the file exists but cannot be read (permissions, a folder...)",
    "empty_file": "the file is empty",
    "not_an_image": "the bytes are not an image format Pillow knows",
    "truncated": "the image data ends early",
    "corrupt": "the image data is damaged",
    "too_large": "the image has more pixels than max_pixels (decompression-bomb guard)",
    "remote": "the reference is a URL that was not downloaded",
}

DEFAULT_MAX_SIDE = 1024
DEFAULT_MAX_PIXELS = 100_000_000
ORIENTATION_TAG = 0x0112


class ImageError(Exception):
    """An item image that cannot be used; ``reason`` is a key of :data:`REASONS`."""

    def __init__(self, reason: str, source: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown image failure reason {reason!r}")
        self.reason = reason
        self.source = source
        self.detail = detail
        super().__init__(f"{source}: {reason} ({detail or REASONS[reason]})")


@dataclass
class LoadedImage:
    """An RGB image ready for a model, with the hash of the bytes it came from."""

    image: Image.Image
    sha256: str
    source: str
    original_mode: str
    original_size: tuple[int, int]
    notes: list[str] = field(default_factory=list)  # fixes applied, e.g. "converted CMYK to RGB"


def is_url(reference: str) -> bool:
    return reference.startswith(("http://", "https://"))


def resolve_image_reference(reference: str, dataset_dir: str | Path) -> str:
    """An ``image`` column value as a usable path (relative refs are under ``dataset_dir``) or URL."""
    reference = reference.strip()
    if not reference or is_url(reference):
        return reference
    path = Path(reference).expanduser()
    return str(path if path.is_absolute() else Path(dataset_dir) / path)


def read_image_bytes(source: str | Path) -> bytes:
    """The raw bytes of a local image file; ImageError for no reference, URLs, missing, empty."""
    source = str(source)
    if not source.strip():
        raise ImageError("no_image", "<none>")
    if is_url(source):
        raise ImageError("remote", source, "download images first: vlm4rec prepare --download-images")
    path = Path(source)
    if not path.exists():
        raise ImageError("missing", source)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageError("unreadable", source, str(error)) from error
    if not data:
        raise ImageError("empty_file", source)
    return data


def image_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_image(
    source: str | Path | bytes,
    max_side: int | None = DEFAULT_MAX_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> LoadedImage:
    """Read ``source`` (a path, or the bytes themselves) into a validated RGB image.

    Raises ImageError with a reason from :data:`REASONS`; never returns a half-decoded image.
    """
    if isinstance(source, (bytes, bytearray)):
        data, label = bytes(source), name or "<bytes>"
        if not data:
            raise ImageError("empty_file", label)
    else:
        data, label = read_image_bytes(source), name or str(source)
    notes: list[str] = []
    try:
        opened, original_size = _open_within(data, max_pixels, label, notes)
        opened.load()  # decode now: truncated or damaged data fails here, not in a model
    except ImageError:
        raise
    except UnidentifiedImageError as error:
        raise ImageError("not_an_image", label, f"no image format Pillow knows starts with {data[:12]!r}") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError("too_large", label, _reproducible(error)) from error
    except OSError as error:
        reason = "truncated" if "truncated" in str(error).lower() else "corrupt"
        raise ImageError(reason, label, _reproducible(error)) from error
    except (ValueError, SyntaxError, IndexError, struct.error) as error:  # Pillow's plugin errors
        raise ImageError("corrupt", label, f"{type(error).__name__}: {_reproducible(error)}") from error
    if min(opened.size) < 1:
        raise ImageError("corrupt", label, f"size {opened.size}")
    original_mode = opened.mode
    opened = _upright(opened, notes)
    image, converted = _to_rgb(opened)
    notes += converted
    if max_side and max(image.size) > max_side:
        before = image.size
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        notes.append(f"downscaled {before[0]}x{before[1]} to {image.size[0]}x{image.size[1]}")
    return LoadedImage(image, image_sha256(data), label, original_mode, original_size, notes)


def _open_within(data: bytes, max_pixels: int, label: str, notes: list[str]) -> tuple[Image.Image, tuple[int, int]]:
    """Open ``data`` (not decoded yet) so that decoding yields at most ``max_pixels``.

    Over the limit, a JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) and a
    JPEG 2000 at a reduced resolution level, without ever holding the full-size pixels; other
    formats are refused (``too_large``). JPEGs are opened without Pillow's decompression-bomb
    check, which would refuse them before they could be decoded small; ``max_pixels`` guards.
    """
    if data[:3] == b"\xff\xd8\xff":
        opened: Image.Image = JpegImagePlugin.JpegImageFile(io.BytesIO(data))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
    size = opened.size
    width, height = size
    if width * height <= max_pixels:
        return opened, size
    if opened.format not in ("JPEG", "JPEG2000"):
        raise ImageError("too_large", label, f"{width}x{height} > {max_pixels} pixels and "
                         f"{opened.format or 'this format'} cannot be decoded downscaled")
    scale = next((s for s in (2, 4, 8) if -(-width // s) * -(-height // s) <= max_pixels), 8)
    small = (-(-width // scale), -(-height // scale))
    if small[0] * small[1] > max_pixels:
        raise ImageError("too_large", label, f"{width}x{height}: even at 1/8 scale "
                         f"{small[0]}x{small[1]} > {max_pixels} pixels")
    if opened.format == "JPEG":
        opened.draft(None, small)
        how = "JPEG DCT scaling"
    else:
        opened.reduce = scale.bit_length() - 1  # resolution levels, each 2x smaller
        how = "JPEG 2000 resolution level"
    notes.append(f"decoded {width}x{height} at 1/{scale} scale ({how}): over {max_pixels} pixels")
    return opened, size


def _upright(image: Image.Image, notes: list[str]) -> Image.Image:
    """``image`` turned as its EXIF orientation says (a phone photo stored sideways)."""
    try:
        orientation = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001  (a damaged EXIF block is not a damaged image)
        return image
    if orientation not in range(2, 9):
        return image
    notes.append(f"turned upright (EXIF orientation {orientation})")
    return ImageOps.exif_transpose(image)


def _reproducible(error: BaseException) -> str:
    """The error text without object addresses (``<_io.BytesIO object at 0x7f...>``)."""
    return re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "<image bytes>", str(error))


def _to_rgb(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """RGB copy of ``image``: alpha composited on white (a transparent background is not black)."""
    mode = image.mode
    if mode == "RGB":
        return image, []
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background, [f"composited {mode} transparency onto white"]
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits before converting, or everything saturates to white
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        span = float(array.max() - array.min()) or 1.0
        scaled = ((array - array.min()) / span * 255.0).astype("uint8")
        return Image.fromarray(scaled, "L").convert("RGB"), [f"scaled {mode} to 8-bit RGB"]
    return image.convert("RGB"), [f"converted {mode} to RGB"]
