"""Test doubles for grounding: a scripted backend and an item fixture with every kind of bad image.

Importable from test files and from subprocesses started by tests (``PYTHONPATH=tests``).
"""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Sequence

from PIL import Image

from recbole_vlm4rec.grounding.backends import BACKENDS
from recbole_vlm4rec.grounding.backends.base import GroundingBackend, GroundingOutput, GroundingRequest

GOOD_TEXT = "A {colour} item with a calm, minimal style, made of smooth material, for everyday use at home."


class ScriptedBackend(GroundingBackend):
    """Describes an image by its mean colour. ``script`` maps item id -> a raw answer or
    ``("error", code)``; ``interrupt_after`` raises KeyboardInterrupt once that many items were
    answered; ``delay`` sleeps per batch (seconds)."""

    name = "fake"

    def __init__(self, model: str = "fake-model", script: dict | None = None, batch_size: int = 2,
                 concurrency: int = 1, interrupt_after: int | None = None, delay: float = 0.0) -> None:
        self.model = model
        self.script = dict(script or {})
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.interrupt_after = interrupt_after
        self.delay = delay
        self.seen: list[str] = []
        self.prompts: dict[str, str] = {}
        self.original_bytes: dict[str, bool] = {}  # item -> the request carried the file's bytes
        self._lock = threading.Lock()

    def model_id(self) -> str:
        return self.model

    def describe(self, requests: Sequence[GroundingRequest]) -> list[GroundingOutput]:
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            if self.interrupt_after is not None and len(self.seen) >= self.interrupt_after:
                raise KeyboardInterrupt  # a real SIGINT: test_grounding_cli's Ctrl-C test
            self.seen.extend(r.item_id for r in requests)
            self.prompts.update((r.item_id, r.prompt) for r in requests)
            self.original_bytes.update((r.item_id, r.image_bytes is not None) for r in requests)
        outputs = []
        for request in requests:
            assert request.image.mode == "RGB"
            scripted = self.script.get(request.item_id)
            if isinstance(scripted, tuple):
                outputs.append(GroundingOutput(request.item_id, error=scripted[1], detail="scripted"))
            elif scripted is not None:
                outputs.append(GroundingOutput(request.item_id, text=scripted))
            elif request.structured_slots:
                fields = {slot: f"{slot} value" for slot in request.structured_slots}
                outputs.append(GroundingOutput(request.item_id, text=json.dumps(fields)))
            else:
                red, green, blue = request.image.resize((1, 1)).getpixel((0, 0))
                colour = "red" if red > max(green, blue) else "blue" if blue > green else "green"
                outputs.append(GroundingOutput(request.item_id, text=GOOD_TEXT.format(colour=colour)))
        return outputs


def register_fake() -> None:
    BACKENDS.setdefault("fake", "grounding_fakes:ScriptedBackend")


def _jpeg(colour, mode="RGB", size=(24, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


# item id -> (image file name or None, bytes or None, expected reason or None for ok)
def bad_and_good_images() -> dict[str, tuple[str | None, bytes | None, str | None]]:
    red = _jpeg((200, 10, 10))
    palette = Image.new("P", (10, 10))
    palette.putpalette([0, 0, 255] * 256)
    return {
        "i01": ("red.jpg", red, None),
        "i02": ("blue.png", _png(Image.new("RGB", (30, 20), (0, 0, 220))), None),
        "i03": ("cmyk.jpg", _jpeg((0, 255, 255, 0), "CMYK"), None),
        "i04": ("alpha.png", _png(Image.new("RGBA", (12, 12), (0, 200, 0, 0))), None),
        "i05": ("palette.png", _png(palette), None),
        "i06": ("wide.png", _png(Image.new("RGB", (3000, 40), (10, 10, 200))), None),
        "i07": ("truncated.jpg", red[: len(red) // 2], "truncated"),
        "i08": ("text.jpg", b"this is not an image at all", "not_an_image"),
        "i09": ("empty.jpg", b"", "empty_file"),
        "i10": ("gone.jpg", None, "missing"),
        "i11": (None, None, "no_image"),
        "i12": ("http://example.com/x.jpg", None, "remote"),
    }


def write_shop_dataset(root: Path, name: str = "shop") -> Path:
    """``root/<name>/<name>.item`` with title + image columns and the images above."""
    folder = root / name
    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = ["item_id:token\ttitle:token_seq\timage:token"]
    for item_id, (file_name, data, _) in bad_and_good_images().items():
        reference = ""
        if file_name and file_name.startswith("http"):
            reference = file_name
        elif file_name:
            reference = f"img/{file_name}"
            if data is not None:
                (folder / reference).write_bytes(data)
        lines.append(f"{item_id}\ttitle of {item_id}\t{reference}")
    (folder / f"{name}.item").write_text("\n".join(lines) + "\n")
    return folder


def make_project_home(tmp_path: Path, monkeypatch) -> Path:
    """Point VLM4REC_HOME at ``tmp_path`` with the 'shop' dataset (the protocol ships with the
    package, so the home holds data only)."""
    monkeypatch.setenv("VLM4REC_HOME", str(tmp_path))
    write_shop_dataset(tmp_path / "dataset")
    return tmp_path


def description_rows(path) -> list[dict]:
    """The rows of a descriptions file written by grounding; every line must parse."""
    from recbole_vlm4rec.formats.descriptions import read_descriptions

    parsed = read_descriptions(path)
    assert parsed.malformed == [] and parsed.superseded == 0, parsed.malformed_summary()
    return list(parsed)
