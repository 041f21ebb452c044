"""The model registry: this package's models (registered explicitly) plus RecBole's general models.

A model is one module here whose class is decorated with :func:`register_model`, plus one
``configs/model/<ClassName>.yaml``. Only decorated classes are models: helpers and shared base
classes in the same modules are not. A registered name that RecBole also uses is an error naming
both classes (ours would silently shadow RecBole's otherwise).

Only RecBole's *general* recommenders are offered: the run layer builds general-model datasets,
splits and full-ranking evaluation; sequential, context-aware and knowledge-aware models need
other data and would fail inside RecBole.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from functools import lru_cache
from typing import TypeVar

ModelClass = TypeVar("ModelClass", bound=type)

_REGISTERED: dict[str, type] = {}


class UnknownModelError(ValueError):
    pass


class ModelRegistryError(RuntimeError):
    """Two models claim one name."""


def register_model(cls: ModelClass) -> ModelClass:
    """Class decorator: make ``cls`` runnable under its class name."""
    existing = _REGISTERED.get(cls.__name__)
    if existing is not None and existing is not cls:
        raise ModelRegistryError(
            f"model name {cls.__name__!r} is registered twice: {existing.__module__}."
            f"{existing.__qualname__} and {cls.__module__}.{cls.__qualname__}")
    _REGISTERED[cls.__name__] = cls
    return cls


@lru_cache(maxsize=None)
def project_models() -> dict[str, type]:
    """Class name -> class for every model registered in this package."""
    for module_info in pkgutil.iter_modules(__path__):
        if not module_info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module_info.name}")
    clashes = sorted(set(_REGISTERED) & set(recbole_models()))
    if clashes:
        theirs = recbole_models()
        raise ModelRegistryError("; ".join(
            f"model {name!r} of {_REGISTERED[name].__module__} has the name of RecBole's "
            f"{theirs[name].__module__}.{name}: rename ours" for name in clashes))
    return dict(_REGISTERED)


@lru_cache(maxsize=None)
def recbole_models() -> dict[str, type]:
    """Class name -> class for RecBole's general recommenders."""
    from recbole.model import general_recommender
    from recbole.model.abstract_recommender import AbstractRecommender

    return {name: value for name, value in vars(general_recommender).items()
            if isinstance(value, type) and issubclass(value, AbstractRecommender)}


def get_model_class(name: str) -> type:
    """Our model ``name`` if we have one, else RecBole's; UnknownModelError lists what exists."""
    ours = project_models()
    if name in ours:
        return ours[name]
    theirs = recbole_models()
    if name in theirs:
        return theirs[name]
    everything = sorted(ours) + sorted(theirs)
    other_kind = _other_recbole_kind(name)
    if other_kind:
        what = (f"'{name}' is one of RecBole's {other_kind} recommenders: it needs data and an "
                "evaluation this project's run layer does not build (it runs general "
                "recommenders: user-item interactions, full ranking).")
    else:
        close = difflib.get_close_matches(name, everything, n=3, cutoff=0.6)
        what = f"unknown model '{name}'." + (f" Did you mean {', '.join(close)}?" if close else "")
    raise UnknownModelError(
        f"{what}\n  this project: {', '.join(sorted(ours))}\n"
        f"  RecBole (general recommenders): {', '.join(sorted(theirs))}"
    )


def _other_recbole_kind(name: str) -> str | None:
    """``sequential`` / ``context-aware`` / ``knowledge-aware`` when RecBole has a model ``name``
    of that kind (none of them runs here), else None."""
    for kind, module in (("sequential", "sequential_recommender"),
                         ("context-aware", "context_aware_recommender"),
                         ("knowledge-aware", "knowledge_aware_recommender")):
        try:
            found = importlib.import_module(f"recbole.model.{module}")
        except ImportError:
            continue
        if isinstance(getattr(found, name, None), type):
            return kind
    return None
