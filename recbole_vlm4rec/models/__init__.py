"""The model registry: this package's models plus RecBole's own, resolved by name.

Adding a model takes one module here (a ``GeneralRecommender`` subclass, any name) and one
``configs/model/<ClassName>.yaml``: modules are discovered, nothing else needs editing.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from functools import lru_cache

# Helper modules in this package that hold no model.
_NOT_MODEL_MODULES = {"features", "cli"}
_RECBOLE_MODEL_PACKAGES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
)


class UnknownModelError(ValueError):
    pass


@lru_cache(maxsize=None)
def project_models() -> dict[str, type]:
    """Class name -> class for every model defined in this package."""
    from recbole.model.abstract_recommender import AbstractRecommender

    found: dict[str, type] = {}
    for module_info in pkgutil.iter_modules(__path__):
        if module_info.name.startswith("_") or module_info.name in _NOT_MODEL_MODULES:
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, AbstractRecommender)
                and value.__module__ == module.__name__
            ):
                found[value.__name__] = value
    return found


@lru_cache(maxsize=None)
def recbole_models() -> dict[str, type]:
    """Class name -> class for RecBole's built-in models (imported only to list them)."""
    from recbole.model.abstract_recommender import AbstractRecommender

    found: dict[str, type] = {}
    for package in _RECBOLE_MODEL_PACKAGES:
        module = importlib.import_module(f"recbole.model.{package}")
        for name, value in vars(module).items():
            if isinstance(value, type) and issubclass(value, AbstractRecommender):
                found[name] = value
    return found


def get_model_class(name: str) -> type:
    """Our model ``name`` if we have one, else RecBole's; UnknownModelError lists what exists."""
    ours = project_models()
    if name in ours:
        return ours[name]
    theirs = recbole_models()
    if name in theirs:
        return theirs[name]
    everything = sorted(ours) + sorted(theirs)
    close = difflib.get_close_matches(name, everything, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"unknown model '{name}'.{hint}\n  this project: {', '.join(sorted(ours))}\n"
        f"  RecBole: {', '.join(sorted(theirs))}"
    )
