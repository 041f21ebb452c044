"""The registry of grounding backends: one name -> one class implementing ``GroundingBackend``.

Backends are imported only when chosen, so ``vlm4rec ground --help`` and the ``tagger`` backend
never import transformers model code, and the ``transformers`` backend never needs httpx.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from recbole_vlm4rec.grounding.backends.base import (
    BackendUnavailableError,
    GroundingBackend,
    GroundingOutput,
    GroundingRequest,
)

# name -> "module:Class"; add a backend by writing its module and one line here.
BACKENDS: dict[str, str] = {
    "transformers": "recbole_vlm4rec.grounding.backends.transformers_vlm:TransformersBackend",
    "openai": "recbole_vlm4rec.grounding.backends.openai_compatible:OpenAICompatibleBackend",
    "tagger": "recbole_vlm4rec.grounding.backends.tagger:TaggerBackend",
}


class UnknownBackendError(ValueError):
    pass


def get_backend_class(name: str) -> type[GroundingBackend]:
    if name not in BACKENDS:
        close = difflib.get_close_matches(name, BACKENDS, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise UnknownBackendError(
            f"unknown grounding backend {name!r}.{hint} Known: {', '.join(BACKENDS)}"
        )
    module_name, class_name = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def create_backend(name: str, **options: Any) -> GroundingBackend:
    """An instance of backend ``name`` built from its keyword options (see each class)."""
    return get_backend_class(name)(**options)


__all__ = [
    "BACKENDS", "BackendUnavailableError", "GroundingBackend", "GroundingOutput", "GroundingRequest",
    "UnknownBackendError", "create_backend", "get_backend_class",
]
