"""Text queries embedded without torch: a BERT sentence encoder's forward pass in numpy.

Why: a service that answers text searches must load its encoder before the first answer.
Through sentence-transformers that is ~5-7 s of imports alone (torch, transformers,
sentence-transformers) on the development machine, for a model whose query-time work is a few
small matrix products over a dozen tokens. The default encoder (all-MiniLM-L6-v2, 6 layers,
384-d) and any sentence-transformers folder of the same shape (BERT, mean pooling, normalised)
run here in numpy with the ``tokenizers`` library's own tokenizer (the encoder's
``tokenizer.json``) and the folder's ``model.safetensors``: loading takes well under a second,
and the vectors equal sentence-transformers' to float32 precision (tests/test_serve.py checks
them against sentence-transformers on short, long and non-ASCII texts). Any other encoder
loads through ``encoding/text.TextEncoder`` as before.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recbole_vlm4rec.encoding import text

_MODULES = ["sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
            "sentence_transformers.models.Normalize"]


def numpy_unsupported(folder: Path) -> str | None:
    """Why the folder cannot run here (None when it can)."""
    try:
        modules = [m["type"] for m in json.loads((folder / "modules.json").read_text())]
        pooling = json.loads((folder / modules_path(folder, 1) / "config.json").read_text())
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        return f"not a sentence-transformers folder ({error})"
    if modules != _MODULES:
        return f"modules {modules}, numpy runs {_MODULES}"
    modes = {k for k, v in pooling.items() if k.startswith("pooling_mode") and v}
    if modes != {"pooling_mode_mean_tokens"}:
        return f"pooling {sorted(modes)}, numpy runs mean pooling"
    if (config.get("model_type"), config.get("hidden_act"),
            config.get("position_embedding_type", "absolute")) != ("bert", "gelu", "absolute"):
        return "not a BERT encoder with gelu and absolute positions"
    if not (folder / "model.safetensors").is_file() or not (folder / "tokenizer.json").is_file():
        return "no model.safetensors / tokenizer.json"
    return None


def modules_path(folder: Path, index: int) -> str:
    return json.loads((folder / "modules.json").read_text())[index]["path"]


def erf(x: np.ndarray) -> np.ndarray:
    """The error function to 1.5e-7 (Abramowitz & Stegun 7.1.26), below float32's precision at
    GELU's scale; scipy.special would add ~0.4 s of imports to a service's start."""
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                           + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-x * x))


def _is_dense(name: str) -> bool:
    """A linear layer's weight (stored (out, in) by torch)."""
    return name.endswith("dense.weight") or name.split(".")[-2:] in (
        ["query", "weight"], ["key", "weight"], ["value", "weight"])


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


class NumpyBertEncoder:
    """BERT + mean pooling + L2 normalisation, in numpy, from a sentence-transformers folder."""

    def __init__(self, folder: str | Path, spec: str | None = None) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        folder = Path(folder)
        self.spec = spec or str(folder)
        config = json.loads((folder / "config.json").read_text())
        max_length = int(json.loads((folder / "sentence_bert_config.json").read_text())
                         .get("max_seq_length") or config["max_position_embeddings"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.n_layers = int(config["num_hidden_layers"])
        weights = load_file(str(folder / "model.safetensors"))
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""
        # dense weights stored (in, out), contiguous: x @ w runs ~2x faster than x @ W.T
        self.w = {k[len(prefix):]: np.ascontiguousarray(v.T if _is_dense(k) else v, np.float32)
                  for k, v in weights.items() if k.startswith(prefix)}
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(min(max_length, int(config["max_position_embeddings"])))
        self._lock = threading.Lock()  # one tokenizer object shared by the server's threads

    @property
    def dim(self) -> int:
        return int(self.w["embeddings.word_embeddings.weight"].shape[1])

    def _dense(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[f"{name}.weight"] + self.w[f"{name}.bias"]

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        return _layer_norm(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps)

    def _embed_one(self, sentence: str) -> np.ndarray:
        with self._lock:
            ids = np.asarray(self.tokenizer.encode(sentence).ids, np.int64)
        w = self.w
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:len(ids)]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._norm(x, "embeddings.LayerNorm")
        n, width = x.shape
        head = width // self.heads
        for i in range(self.n_layers):
            name = f"encoder.layer.{i}"
            q, k, v = (self._dense(x, f"{name}.attention.self.{p}").reshape(n, self.heads, head)
                       .transpose(1, 0, 2) for p in ("query", "key", "value"))
            scores = q @ k.transpose(0, 2, 1) / np.sqrt(head)
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            context = (scores / scores.sum(axis=-1, keepdims=True)) @ v
            context = context.transpose(1, 0, 2).reshape(n, width)
            x = self._norm(x + self._dense(context, f"{name}.attention.output.dense"),
                           f"{name}.attention.output.LayerNorm")
            hidden = self._dense(x, f"{name}.intermediate.dense")
            hidden = 0.5 * hidden * (1.0 + erf(hidden / np.float32(np.sqrt(2.0))))  # BERT's gelu
            x = self._norm(x + self._dense(hidden, f"{name}.output.dense"),
                           f"{name}.output.LayerNorm")
        pooled = x.mean(axis=0)
        return (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """``(len(texts), dim)`` float32 unit rows (``show_progress`` kept for TextEncoder's
        signature: a few query texts need no bar)."""
        empty = [i for i, given in enumerate(texts) if not str(given).strip()]
        if empty:
            raise ValueError(f"{len(empty)} empty texts cannot be encoded (first at position "
                             f"{empty[0]})")
        return np.stack([self._embed_one(str(given)) for given in texts])


def load_query_encoder(spec: str) -> Any:
    """The fastest loader that gives the encoder's own vectors: numpy for BERT sentence encoders
    (the default MiniLM), sentence-transformers for anything else."""
    resolved = Path(text.resolve_encoder(spec))
    if resolved.is_dir() and numpy_unsupported(resolved) is None:
        return NumpyBertEncoder(resolved, spec)
    encoder = text.TextEncoder(spec)  # looked up now: tests stand in an encoder there
    encoder.dim  # loads the weights now, not at the first query
    return encoder
