"""The model contract: what a model needs and can do, stated once, in the model's own file.

A model class carries ``contract = ModelContract(...)``:

* ``settings``: every key of its own it reads (name, type, range or choices, one-line doc);
* ``features``: the config key naming the dataset features it reads and how many it needs;
* ``capabilities``: what the rest of the pipeline may ask of it (serve profiles, score new items);
* ``checks``: rules across settings (``feat_embed_dim == embedding_size``), each one function;
* ``memory_estimate``: what the model holds at its peak for a dataset of a given size, so a run
  that would not fit is refused before anything loads (run/memory.py adds the data layer's share).

Why a class attribute, and values in the yaml: the types, ranges and cross-setting rules are code
that tools run (accounting, ``vlm4rec models``, the contract suite), and an attribute travels with
the class, so a model from another package (registered through the ``recbole_vlm4rec.models``
entry point group, see models/__init__.py) is checked like ours. The *values* (defaults, the tuning
grid ``search_space``) stay in ``configs/model/<Name>.yaml``: that file is a protocol layer whose
sha256 every results JSON records, so what a run used can be traced to one file. The contract
reads the yaml for display and the contract suite checks the two agree (every setting has a value
there, every key there is a setting or a general key).

Whether a model trains is RecBole's ``type`` attribute (``ModelType.TRADITIONAL``: one pass, nothing
trained); :func:`model_info` derives it rather than stating it twice. RecBole's own models have no
contract: :func:`model_info` derives one from RecBole's model yaml (types from the values).

Everything here runs before any data loads: :func:`ModelContract.problems` returns one line per
mistake, naming the setting and what would be valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from recbole_vlm4rec.models._sizes import DataSize, MemoryEstimate

ITEM_FEATURE_KEY = "item_feature"
# Multi-feature models read one list-valued key, so a single command line switches every one of
# them between representations.
CONTENT_FEATURES_KEY = "content_features"

TYPE_WORDS = {int: "an integer", float: "a number", bool: "True or False", str: "a string",
              list: "a list", dict: "a mapping"}


@dataclass(frozen=True)
class Setting:
    """One key a model reads. ``kind`` is int, float, bool, str, list or dict.

    ``per_feature``: one value for every feature, or a list with one value per feature in the
    model's feature key (``knn_k: 10`` or ``knn_k: [10, 20]``). ``many``: one value or a list of
    any length (``topk: [10, 20]``). ``optional``: ``~`` is allowed
    (its meaning goes in ``doc``). Bounds: ``minimum`` / ``maximum`` inclusive, ``above``
    exclusive (``learning_rate`` > 0).
    """

    name: str
    kind: type
    doc: str
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    optional: bool = False
    per_feature: bool = False
    many: bool = False

    def describe(self) -> str:
        """``int >= 1``, ``one of mean, max``, ``number in [0, 1]``...: what the setting takes."""
        if self.choices:
            text = "one of " + ", ".join(str(c) for c in self.choices)
        else:
            text = {int: "int", float: "float", bool: "bool", str: "str", list: "list",
                    dict: "mapping"}.get(self.kind, self.kind.__name__)
            if self.minimum is not None and self.maximum is not None:
                text += f" in [{self.minimum:g}, {self.maximum:g}]"
            elif self.minimum is not None:
                text += f" >= {self.minimum:g}"
            elif self.maximum is not None:
                text += f" <= {self.maximum:g}"
            if self.above is not None:
                text += f" > {self.above:g}"
        if self.per_feature:
            text += " (or one per feature)"
        if self.many:
            text += " (or a list of them)"
        if self.optional:
            text += " or ~"
        return text

    def problem(self, value: Any, n_features: int | None = None) -> str | None:
        """Why ``value`` is not valid for this setting (None: it is)."""
        if value is None:
            return None if self.optional else f"takes {self.describe()}; got ~ (None)"
        if (self.per_feature or self.many) and isinstance(value, (list, tuple)):
            if not value:
                return f"takes {self.describe()}; got an empty list"
            if self.per_feature and n_features is not None and len(value) != n_features:
                return (f"has {len(value)} values but there are {n_features} features: give one "
                        "value, or one per feature")
            for item in value:
                found = self._single_problem(item)
                if found:
                    return found
            return None
        return self._single_problem(value)

    def _single_problem(self, value: Any) -> str | None:
        if self.choices:
            if value in self.choices and not (isinstance(value, bool) and
                                              not any(isinstance(c, bool) for c in self.choices)):
                return None
            return f"takes one of {', '.join(str(c) for c in self.choices)}; got {value!r}"
        if not _has_kind(value, self.kind):
            return f"takes {TYPE_WORDS.get(self.kind, self.kind.__name__)}; got {value!r}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value != value:  # NaN
                return f"takes {self.describe()}; got {value!r}"
            if ((self.minimum is not None and value < self.minimum)
                    or (self.maximum is not None and value > self.maximum)
                    or (self.above is not None and value <= self.above)):
                return f"takes {self.describe()}; got {value!r}"
        return None


def _has_kind(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is list:
        return isinstance(value, (list, tuple))
    return isinstance(value, kind)


@dataclass(frozen=True)
class Features:
    """The dataset features a model reads: named by config ``key``, at least ``minimum`` of them.

    ``key`` is ``item_feature`` (one name) or ``content_features`` (a list); ``~`` means the
    dataset's ``default_item_feature``.
    """

    key: str
    minimum: int = 1
    maximum: int | None = None
    doc: str = ""

    def describe(self) -> str:
        if self.key == ITEM_FEATURE_KEY:
            return f"{self.key} (one feature)"
        upper = f"..{self.maximum}" if self.maximum else "+"
        return f"{self.key} ({self.minimum}{upper} features)"


@dataclass(frozen=True)
class Capabilities:
    """What the pipeline may ask of a model beyond RecBole's interface.

    ``profile_servable``: its scores are cosine matches between a profile built from any list of
    items and item vectors it exposes (``blocks``), so serving rebuilds a new user's profile
    (a ``profile`` bundle); every model can be served as a ``topn`` bundle.
    ``scores_new_items``: it ranks items with no training interaction from their content (the
    cold-start protocol's cold items); ID-based models cannot.
    """

    profile_servable: bool = False
    scores_new_items: bool = False


# A model's estimate: (dataset size, every setting's value) -> MemoryEstimate.
MemoryEstimator = Callable[[DataSize, Mapping[str, Any]], MemoryEstimate]


# A rule across settings: gets every setting's value (and the feature key's resolved list of
# names), returns a one-line problem or None.
Check = Callable[[Mapping[str, Any]], "str | None"]


@dataclass(frozen=True)
class ModelContract:
    """Everything a model states about itself (see the module docstring)."""

    settings: tuple[Setting, ...] = ()
    features: Features | None = None
    capabilities: Capabilities = field(default_factory=Capabilities)
    checks: tuple[Check, ...] = ()
    memory_estimate: MemoryEstimator | None = None  # None: the run layer's generic estimate

    def setting(self, name: str) -> Setting | None:
        return next((s for s in self.settings if s.name == name), None)

    def keys(self) -> list[str]:
        """Every config key the model reads: its settings and its feature key."""
        keys = [s.name for s in self.settings]
        if self.features is not None:
            keys.append(self.features.key)
        return keys

    def problems(self, values: Mapping[str, Any], feature_names: Sequence[str] | None = None,
                 given: Mapping[str, str] | None = None) -> list[str]:
        """One line per mistake in ``values`` (every setting, usually the merged config).

        ``feature_names``: the resolved names of the feature key (counted against
        ``features.minimum``); ``given``: key -> where the user gave it, for the message.
        """
        given = given or {}
        n_features = len(feature_names) if feature_names is not None else None
        found = []
        for setting in self.settings:
            if setting.name not in values:
                continue
            problem = setting.problem(values[setting.name], n_features)
            if problem:
                found.append(f"config key '{setting.name}'{_where(setting.name, given)} {problem}")
        if self.features is not None and feature_names is not None:
            count, key = len(feature_names), self.features.key
            if count < self.features.minimum or (self.features.maximum and
                                                 count > self.features.maximum):
                wanted = (f"at least {self.features.minimum}" if not self.features.maximum else
                          f"{self.features.minimum} to {self.features.maximum}")
                default = (" (~: the dataset's default_item_feature)"
                           if values.get(key) is None else "")
                found.append(
                    f"config key '{key}'{_where(key, given)}{default} names {count} feature(s) "
                    f"({', '.join(feature_names) or 'none'}); this model needs {wanted}, "
                    f"e.g. --{key}=[visual,text]")
        # rules across settings may count features: run them once the names are known
        if not found and (feature_names is not None or self.features is None):
            resolved = dict(values)
            if self.features is not None and feature_names is not None:
                resolved[self.features.key] = list(feature_names)
            for check in self.checks:
                problem = check(resolved)
                if problem:
                    found.append(problem)
        return found


def _where(key: str, given: Mapping[str, str]) -> str:
    return f" ({given[key]})" if key in given else ""


@dataclass(frozen=True)
class ModelInfo:
    """A model as the pipeline sees it: its contract, whether it trains, where its yaml is."""

    name: str
    model_class: type
    contract: ModelContract
    trained: bool
    declared: bool  # False: a RecBole model whose contract is derived from its yaml
    yaml_path: Path | None

    def defaults(self) -> dict[str, Any]:
        """The model yaml's values (defaults of its settings, ``search_space``...); for RecBole's
        models, RecBole's own yaml under ours."""
        from recbole_vlm4rec.formats.yamlfiles import read_yaml_mapping

        values = {} if self.declared else _recbole_yaml_values(self.model_class)
        if self.yaml_path is not None and self.yaml_path.is_file():
            values.update(read_yaml_mapping(self.yaml_path))
        return values

    def summary(self) -> str:
        doc = (self.model_class.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


def model_info(model_class: type, yaml_path: Path | None = None) -> ModelInfo:
    """The contract of ``model_class``: declared, or derived from RecBole's model yaml."""
    from recbole.utils import ModelType

    trained = getattr(model_class, "type", None) != ModelType.TRADITIONAL
    declared = model_class.__dict__.get("contract") or getattr(model_class, "contract", None)
    if isinstance(declared, ModelContract):
        return ModelInfo(model_class.__name__, model_class, declared, trained, True, yaml_path)
    return ModelInfo(model_class.__name__, model_class, _derived_contract(model_class), trained,
                     False, yaml_path)


def _recbole_yaml_values(model_class: type) -> dict[str, Any]:
    import recbole

    from recbole_vlm4rec.formats.yamlfiles import read_yaml_mapping

    path = (Path(recbole.__file__).resolve().parent / "properties" / "model"
            / f"{model_class.__name__}.yaml")
    return read_yaml_mapping(path) if path.is_file() else {}


def _derived_contract(model_class: type) -> ModelContract:
    """RecBole's models: one setting per key of RecBole's own model yaml, typed by its value."""
    settings = []
    for key, value in _recbole_yaml_values(model_class).items():
        kind = next((k for k in (bool, int, float, str, list, dict) if isinstance(value, k)), None)
        if kind is not None:
            settings.append(Setting(str(key), kind, "RecBole's setting (its model yaml)"))
    from recbole_vlm4rec.models._memory import RECBOLE_ESTIMATES

    return ModelContract(settings=tuple(settings),
                         memory_estimate=RECBOLE_ESTIMATES.get(model_class.__name__))


def positive_weights(key: str) -> Check:
    """A check: the weights in ``key`` (one number or one per feature; ``~`` = equal) have a
    positive sum (each is already >= 0 by its Setting)."""

    def check(values: Mapping[str, Any]) -> str | None:
        weights = values.get(key)
        if weights is None or weights == []:
            return None
        weights = weights if isinstance(weights, (list, tuple)) else [weights]
        if sum(float(w) for w in weights) <= 0:
            return f"config key '{key}' needs a positive sum; got {list(weights)}"
        return None

    return check


def equal_settings(key: str, other: str, why: str) -> Check:
    """A check: ``values[key] == values[other]`` (``why`` says what needs it)."""

    def check(values: Mapping[str, Any]) -> str | None:
        if key in values and other in values and values[key] != values[other]:
            return (f"config key '{key}' ({values[key]!r}) must equal '{other}' "
                    f"({values[other]!r}): {why}")
        return None

    return check
