"""The model registry: this package's models (registered explicitly) plus RecBole's general models.

A model is one module here whose class is decorated with :func:`register_model` and carries a
``contract`` (models/contract.py), plus one ``configs/model/<ClassName>.yaml`` (its values).
Only decorated classes are models: helpers and shared base classes in the same modules are not. A
registered name that RecBole also uses is an error naming both classes (ours would silently shadow
RecBole's otherwise).

Models from another package: declare an entry point in the group ``recbole_vlm4rec.models`` whose
value is the module holding the decorated class (``toy = my_package.toy_model``), and put the
model's yaml beside that module (``my_package/Toy.yaml``). Installing that package is all it takes:
``vlm4rec run``, ``vlm4rec models``, the bench precheck and the contract suite see it like ours.

Only RecBole's *general* recommenders are offered: the run layer builds general-model datasets,
splits and full-ranking evaluation; sequential, context-aware and knowledge-aware models need
other data and would fail inside RecBole.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import pkgutil
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from recbole_vlm4rec.models.contract import ModelContract, ModelInfo, model_info

ModelClass = TypeVar("ModelClass", bound=type)

_REGISTERED: dict[str, type] = {}

ENTRY_POINT_GROUP = "recbole_vlm4rec.models"
# What `vlm4rec run` runs with no --model: the method this project is about.
DEFAULT_MODEL = "VLM4Rec"


class UnknownModelError(ValueError):
    pass


class ModelRegistryError(RuntimeError):
    """Two models claim one name."""


def register_model(cls: ModelClass) -> ModelClass:
    """Class decorator: make ``cls`` runnable under its class name (it must carry a contract)."""
    if not isinstance(cls.__dict__.get("contract"), ModelContract):
        raise ModelRegistryError(
            f"model {cls.__module__}.{cls.__qualname__} has no `contract = ModelContract(...)` "
            "class attribute (recbole_vlm4rec/models/contract.py): state its settings, features "
            "and capabilities there")
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
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            importlib.import_module(entry_point.value.split(":")[0])
        except Exception as error:  # a broken plug-in names itself, never hides our models
            raise ModelRegistryError(
                f"entry point {entry_point.name} = {entry_point.value} (group "
                f"{ENTRY_POINT_GROUP}) failed to import: {error}") from error
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


def model_yaml(model_class: type) -> Path | None:
    """The model's values file: ``configs/model/<Name>.yaml`` for this package's models and for
    RecBole's that we ship one for; beside its module for a model from another package."""
    from recbole_vlm4rec.formats import paths

    name = model_class.__name__
    shipped = paths.configs_dir() / "model" / f"{name}.yaml"
    if shipped.is_file() or model_class.__module__.startswith(__name__ + "."):
        return shipped
    try:
        beside = Path(inspect.getfile(model_class)).with_name(f"{name}.yaml")
    except (TypeError, OSError):
        return None
    if model_class.__module__.startswith("recbole."):
        return None
    return beside


def get_model_info(name: str) -> ModelInfo:
    """The contract and facts of model ``name`` (UnknownModelError when there is none)."""
    model_class = get_model_class(name)
    return model_info(model_class, model_yaml(model_class))


def all_model_info() -> dict[str, ModelInfo]:
    """Every runnable model: this package's (and plug-ins'), then RecBole's general ones."""
    return {name: get_model_info(name) for name in [*sorted(project_models()),
                                                    *sorted(recbole_models())]}


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
