"""Small numeric helpers every stage shares: row normalisation and the default torch device."""

from __future__ import annotations

from typing import Any

import numpy as np


def l2_normalise(matrix: Any) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero (non-finite values are kept, so the
    caller can count and report them)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def default_device(device: str | None) -> str:
    """``device`` as given, else ``cuda`` when a GPU is visible, else ``cpu``."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
