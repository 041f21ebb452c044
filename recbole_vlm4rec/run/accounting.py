"""Config accounting: every key a run is given is read by RecBole, the dataset or this run's model.

Where the known keys come from (nothing here is a hand-kept list of names):

general (read whatever the model)
    RecBole's own yamls (``recbole/properties/overall.yaml``, ``dataset/*.yaml``,
    ``quick_start_config/*.yaml``), its argument lists (``recbole/utils/argument_list.py``), every
    ``config["key"]`` in RecBole's non-model code (config, data, trainer, evaluator, sampler,
    utils, the abstract recommender), this project's ``configs/overall.yaml`` and
    ``configs/dataset/*.yaml``, and every ``config["key"]`` in this project's code outside models/.
per model
    this package's models (and plug-ins): the settings and feature key of their contract
    (models/contract.py), nothing else. RecBole's models: RecBole's ``properties/model/<Model>.yaml``,
    this project's ``configs/model/<Model>.yaml`` for it, and every ``config["key"]`` in its module.

A key that is neither general nor this model's is either another model's (``reg_weight`` given to
RecBole's BPR, which has no regularisation) or unknown (a typo). Unknown keys are errors with a
did-you-mean wherever they are given. Another model's key is an error when the user gave it for
this run (command line, ``--config_files``, a benchmark cell): a setting the user asked for must
not be dropped silently, and the fix (remove it, or pick the model that reads it) is theirs. Given
by a layer shared by every model (a dataset yaml), it is reported by name in the log and the
results JSON (``config_accounting.not_read``) instead: such a layer may configure several models.

Values, checked before anything is loaded, a bad one being one line naming the key and what it
takes: a model's settings against its contract (models/contract.py: type, range, choices, feature
count, rules across settings), the general settings in ``GENERAL_SETTINGS`` against their range,
the run layer's choices, and any other key against the ``(int)`` / ``(float)`` / ``(bool)`` its
yaml comment (or its default) declares.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from recbole_vlm4rec.formats.yamlfiles import load_yaml, read_yaml_mapping
from recbole_vlm4rec.models.contract import Setting

# General settings whose range a run checks before anything loads (RecBole accepts epochs=0 or a
# negative learning rate and then trains nothing, or fails deep inside).
GENERAL_SETTINGS = (
    Setting("epochs", int, "training epochs (the cap; early stopping may end sooner)", minimum=1),
    Setting("learning_rate", float, "optimiser step size", above=0),
    Setting("train_batch_size", int, "training batch size", minimum=1),
    Setting("eval_batch_size", int, "evaluation batch size", minimum=1),
    Setting("stopping_step", int, "epochs without a better validation score before stopping",
            minimum=1),
    Setting("eval_step", int, "epochs between validations", minimum=1),
    Setting("topk", int, "ranking cut-offs of the metrics", minimum=1, many=True),
    Setting("weight_decay", float, "L2 penalty of the optimiser", minimum=0),
    Setting("seed", int, "random seed"),
    Setting("memory_budget", float, "GiB a run may use; ~ = this machine's memory",
            above=0, optional=True),
)

CONFIG_READ = re.compile(r"""config(?:_dict)?\[\s*["']([A-Za-z_]\w*)["']\s*\]""")
DECLARED_TYPE = re.compile(r"#\s*\(([A-Za-z]+)[^)]*\)\s*(.*)$")
LEARNER_BRANCH = re.compile(r"""learner\.lower\(\)\s*==\s*["'](\w+)["']""")


class ConfigError(ValueError):
    """A config key or value the run cannot honour; the message is one line."""


class ConfigKeyError(ConfigError):
    pass


class ConfigValueError(ConfigError):
    pass


@dataclass
class KeyInfo:
    source: str  # where the key is documented or read
    type: str | None = None  # int / float / bool / str / list / dict, from the yaml comment
    default: Any = None
    description: str = ""


@dataclass
class KnownKeys:
    general: dict[str, KeyInfo] = field(default_factory=dict)
    by_model: dict[str, dict[str, KeyInfo]] = field(default_factory=dict)

    def model_keys(self, model: str, model_class: type | None = None) -> dict[str, KeyInfo]:
        if model not in self.by_model and model_class is not None:
            self.by_model[model] = _model_keys(model_class)
        return self.by_model.get(model, {})

    def everything(self) -> set[str]:
        keys = set(self.general)
        for found in self.by_model.values():
            keys |= set(found)
        return keys


@dataclass
class Accounting:
    """What the check found that is not an error: keys given but not read by this model."""

    model: str
    not_read: dict[str, str] = field(default_factory=dict)  # key -> where it was given

    def lines(self) -> list[str]:
        return [f"config key '{key}' ({where}) is not read by {self.model}: it has no effect"
                for key, where in self.not_read.items()]

    def to_json(self) -> dict[str, Any]:
        return {"not_read": dict(self.not_read)}


# --- where the keys come from --------------------------------------------------------------------
# RecBole's trainer reads reg_weight only to warn about double regularisation: not a use.
READ_ONLY_TO_WARN = {("trainer.py", "reg_weight")}
# Not settings of a run: dataset download URLs, the ray-based tuner this project never imports.
NOT_CONFIG = ("url.yaml", "kg_url.yaml", "hyper_tuning.py", "quick_start")


def read_yaml(path: Path) -> dict[str, Any]:
    """A yaml file's top-level mapping (RecBole's number rules)."""
    return read_yaml_mapping(path)


def yaml_keys(path: Path, source: str) -> dict[str, KeyInfo]:
    """Top-level keys of a yaml file, with the ``# (type) description`` comment of their line."""
    text = path.read_text(encoding="utf-8")
    found = {}
    for key, value in read_yaml(path).items():
        info = KeyInfo(source, default=value)
        line = re.search(rf"^{re.escape(str(key))}\s*:.*$", text, flags=re.M)
        declared = DECLARED_TYPE.search(line.group(0)) if line else None
        if declared:
            info.type, info.description = declared.group(1).lower(), declared.group(2).strip()
        found[str(key)] = info
    return found


def source_keys(sources: Iterable[tuple[str, str]], source: str) -> dict[str, KeyInfo]:
    """Every ``config["key"]`` read in ``(file name, source text)`` pairs."""
    found: dict[str, KeyInfo] = {}
    for name, text in sources:
        for key in CONFIG_READ.findall(text):
            if (name, key) not in READ_ONLY_TO_WARN:
                found.setdefault(key, KeyInfo(f"{source} ({name})"))
    return found


def _files(paths: Iterable[Path]) -> list[tuple[str, str]]:
    return [(p.name, p.read_text(encoding="utf-8", errors="replace")) for p in paths]


def _merge(into: dict[str, KeyInfo], more: dict[str, KeyInfo]) -> None:
    """Add ``more``; a later source fills in a type or default an earlier one lacked."""
    for key, info in more.items():
        known = into.setdefault(key, info)
        if known.type is None and info.type is not None:
            known.type, known.description = info.type, info.description
        if known.default is None and info.default is not None:
            known.default = info.default


def _recbole_dir() -> Path:
    import recbole

    return Path(recbole.__file__).resolve().parent


def _package_dir() -> Path:
    return Path(__file__).resolve().parents[1]


def _model_keys(model_class: type) -> dict[str, KeyInfo]:
    """The keys one model reads: its contract's (this package's models and plug-ins), else
    RecBole's model yaml, our yaml for it and every ``config["key"]`` in its source."""
    import inspect

    from recbole_vlm4rec.models import model_yaml
    from recbole_vlm4rec.models.contract import model_info

    name = model_class.__name__
    info = model_info(model_class, model_yaml(model_class))
    if info.declared:
        found = {s.name: KeyInfo(f"{name}'s contract", s.kind.__name__, None, s.doc)
                 for s in info.contract.settings}
        if info.contract.features is not None:
            found[info.contract.features.key] = KeyInfo(f"{name}'s contract (features)")
        return found
    found = {}
    for path, source in ((info.yaml_path, f"configs/model/{name}.yaml"),
                         (_recbole_dir() / "properties" / "model" / f"{name}.yaml",
                          f"RecBole model yaml/{name}.yaml")):
        if path is not None and path.is_file():
            _merge(found, yaml_keys(path, source))
    try:
        _merge(found, source_keys(_files([Path(inspect.getsourcefile(model_class))]),
                                  f"{name} source"))
    except (TypeError, OSError):
        pass
    return found


@lru_cache(maxsize=1)
def known_keys() -> KnownKeys:
    """Every key RecBole, this project's run layer and data layer, and every model read."""
    import inspect

    from recbole.model.abstract_recommender import AbstractRecommender, GeneralRecommender
    from recbole.utils import argument_list

    from recbole_vlm4rec.formats import paths
    from recbole_vlm4rec.models import project_models, recbole_models

    recbole_dir = _recbole_dir()
    known = KnownKeys()
    properties = recbole_dir / "properties"
    _merge(known.general, yaml_keys(properties / "overall.yaml", "RecBole overall.yaml"))
    for path in sorted((properties / "dataset").glob("*.yaml")):
        if path.name not in NOT_CONFIG:
            _merge(known.general, yaml_keys(path, f"RecBole dataset/{path.name}"))
    for path in sorted((properties / "quick_start_config").glob("*.yaml")):
        _merge(known.general, yaml_keys(path, f"RecBole quick_start_config/{path.name}"))
    for group in ("general_arguments", "training_arguments", "evaluation_arguments",
                  "dataset_arguments"):
        for key in getattr(argument_list, group):
            known.general.setdefault(key, KeyInfo(f"RecBole argument_list.{group}"))
    recbole_code = [p for p in recbole_dir.rglob("*.py")
                    if p.relative_to(recbole_dir).parts[0] != "model"
                    and not any(part in NOT_CONFIG for part in p.relative_to(recbole_dir).parts)]
    general_classes = [("abstract_recommender.py", inspect.getsource(cls))
                       for cls in (AbstractRecommender, GeneralRecommender)]
    _merge(known.general, source_keys(_files(recbole_code) + general_classes, "RecBole code"))
    configs = paths.configs_dir()
    _merge(known.general, yaml_keys(configs / "overall.yaml", "configs/overall.yaml"))
    for path in sorted((configs / "dataset").glob("*.yaml")):
        _merge(known.general, yaml_keys(path, f"configs/dataset/{path.name}"))
    package = _package_dir()
    own_code = [p for p in package.rglob("*.py") if p.relative_to(package).parts[0] != "models"]
    own_code.append(package / "models" / "features.py")  # helpers every content model calls
    for setting in GENERAL_SETTINGS:
        known.general.setdefault(setting.name, KeyInfo("run layer (GENERAL_SETTINGS)"))
    _merge(known.general, source_keys(_files(own_code), "recbole_vlm4rec code"))
    for name, model_class in {**recbole_models(), **project_models()}.items():
        known.by_model[name] = _model_keys(model_class)
    # RecBole's other model families (sequential, context-aware...) and their base classes: their
    # keys are "known" (another model's), never general
    for path in (recbole_dir / "model").rglob("*.py"):
        if path.name != "__init__.py":
            known.by_model.setdefault(f"<{path.stem}>", {}).update(
                source_keys(_files([path]), f"RecBole {path.name}"))
    for path in sorted((properties / "model").glob("*.yaml")):
        known.by_model.setdefault(path.stem, {}).update(yaml_keys(path, f"RecBole {path.name}"))
    return known


def value_choices() -> dict[str, tuple[Any, ...]]:
    """Allowed values of general keys: the run layer's and RecBole's (models: their contract)."""
    from recbole_vlm4rec.formats.features import UNKNOWN_TOKEN_RULES
    from recbole_vlm4rec.run.cold_start import TARGETS
    from recbole_vlm4rec.run.masking import MASKS

    return {"learner": recbole_learners(), "eval_history_mask": MASKS,
            "cold_start_targets": TARGETS, "feature_unknown_tokens": UNKNOWN_TOKEN_RULES}


@lru_cache(maxsize=1)
def recbole_learners() -> tuple[str, ...]:
    """The optimisers RecBole's trainer builds (any other name silently falls back to Adam)."""
    source = (_recbole_dir() / "trainer" / "trainer.py").read_text(encoding="utf-8")
    return tuple(dict.fromkeys(LEARNER_BRANCH.findall(source)))


# --- the check -----------------------------------------------------------------------------------
def given_keys(layers: Sequence[Any], overrides: dict[str, Any]) -> dict[str, str]:
    """key -> where it was given (the last layer that sets it), overrides last."""
    given: dict[str, str] = {}
    for layer in layers:
        for key in read_yaml(Path(layer.path)):
            given[str(key)] = layer.role if layer.role != "user" else f"user: {layer.path}"
    for key in overrides:
        given[str(key)] = "command line"
    return given


def _origin_is_users(where: str) -> bool:
    """Given for this run (another model's key is then an error), not by a shared layer."""
    return where == "command line" or where.startswith("user") or where == "model"


def _describe_origin(key: str, where: str, overrides: dict[str, Any]) -> str:
    if where == "command line":
        return f"--{key}={overrides[key]}"
    return f"{key} in the {where} layer"


def check_keys(model: str, model_class: type, layers: Sequence[Any],
               overrides: dict[str, Any]) -> Accounting:
    """ConfigKeyError for an unknown key or another model's key the user gave; the Accounting
    lists another model's keys given by a shared layer."""
    known = known_keys()
    general = known.general
    own = known.model_keys(model, model_class)
    accounting = Accounting(model)
    for key, where in given_keys(layers, overrides).items():
        if key in general or key in own:
            continue
        readers = sorted((m for m, keys in known.by_model.items()
                          if key in keys and not m.startswith("<")), key=_runnable_first)
        shown = _describe_origin(key, where, overrides)
        if not readers and not any(key in keys for keys in known.by_model.values()):
            close = difflib.get_close_matches(key, sorted(general | own.keys()), n=3, cutoff=0.75)
            close = close or difflib.get_close_matches(key, sorted(known.everything()), n=3,
                                                       cutoff=0.75)
            hint = f"; did you mean {' or '.join(close)}?" if close else \
                "; `vlm4rec run --help` and docs/configuration.md list where keys come from"
            raise ConfigKeyError(f"unknown config key '{key}' ({shown}){hint}")
        if _origin_is_users(where):
            others = ", ".join(readers[:6]) + (" ..." if len(readers) > 6 else "")
            reads = ", ".join(sorted(own)) or "no settings of its own"
            raise ConfigKeyError(
                f"config key '{key}' ({shown}) is not read by {model} (a setting of "
                f"{others or 'another model'}); {model} reads {reads}, plus the general keys")
        accounting.not_read[key] = where
    return accounting


def _runnable_first(model: str) -> tuple[int, str]:
    """Sort key: this project's models, then RecBole's general ones, then the rest."""
    from recbole_vlm4rec.models import project_models, recbole_models

    return (0 if model in project_models() else 1 if model in recbole_models() else 2, model)


def check_values(config: Any, model_class: type, given: Mapping[str, str],
                 feature_names: Sequence[str] | None = None, overrides: Mapping[str, Any] = {},
                 ) -> None:
    """ConfigValueError (one line) for the first bad value: a model setting against its
    contract (every setting, and the number of ``feature_names``), a general setting against its
    range (GENERAL_SETTINGS) or choices, any other given key against its yaml-declared type."""
    from recbole_vlm4rec.models import model_yaml
    from recbole_vlm4rec.models.contract import model_info

    where = {key: _describe_origin(key, origin, overrides) for key, origin in given.items()}
    info = model_info(model_class, model_yaml(model_class))
    checked: set[str] = set()
    if info.declared:
        values = {key: config[key] for key in info.contract.keys() if key in config}
        problems = info.contract.problems(values, feature_names, where)
        if problems:
            raise ConfigValueError(problems[0])
        checked |= set(info.contract.keys())
    for setting in GENERAL_SETTINGS:
        if setting.name in config and setting.name not in checked:
            problem = setting.problem(config[setting.name])
            if problem:
                raise ConfigValueError(f"config key '{setting.name}'"
                                       f"{_where(setting.name, where)} {problem}")
            checked.add(setting.name)
    known = known_keys()
    own = known.model_keys(model_class.__name__, model_class)
    choices = value_choices()
    for key in given:
        if key not in config or key in checked:
            continue
        value = config[key]
        if key in choices:
            if value not in choices[key]:
                allowed = ", ".join(str(c) for c in choices[key])
                raise ConfigValueError(f"config key '{key}'{_where(key, where)} takes one of "
                                       f"{allowed}; got {value!r}")
            continue
        info_key = own.get(key) or known.general.get(key)
        wanted = _declared_type(info_key)
        if wanted and not _has_type(value, wanted, info_key):
            what = {"int": "an integer", "float": "a number", "bool": "True or False"}[wanted]
            about = f" ({info_key.description})" if info_key and info_key.description else ""
            raise ConfigValueError(f"config key '{key}'{_where(key, where)} takes {what}"
                                   f"{about}; got {value!r}")


def check_general_values(layers: Sequence[Any], overrides: Mapping[str, Any]) -> None:
    """ConfigValueError for a general setting out of range in the layers or the overrides, before
    RecBole's Config is built (RecBole raises its own ValueError for some, e.g. ``topk: [0]``)."""
    from recbole.config.configurator import Config

    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    names = {setting.name for setting in GENERAL_SETTINGS}
    for layer in layers:
        for key, value in read_yaml(Path(layer.path)).items():
            if key in names:
                values[key], where[key] = value, f"{key} in the {layer.role} layer"
    # the overrides' strings as RecBole converts them ("[0]" -> [0])
    converted = Config._convert_config_dict(None, {k: v for k, v in overrides.items() if k in names})
    for key, value in converted.items():
        values[key], where[key] = value, _describe_origin(key, "command line", overrides)
    for setting in GENERAL_SETTINGS:
        problem = setting.problem(values[setting.name]) if setting.name in values else None
        if problem:
            raise ConfigValueError(f"config key '{setting.name}' ({where[setting.name]}) {problem}")


def _where(key: str, where: Mapping[str, str]) -> str:
    return f" ({where[key]})" if key in where else ""


def _declared_type(info: KeyInfo | None) -> str | None:
    if info is None:
        return None
    declared = {"int": "int", "float": "float", "bool": "bool"}.get(info.type or "")
    if declared or info.type:
        return declared
    default = info.default
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    return None


def _has_type(value: Any, wanted: str, info: KeyInfo | None) -> bool:
    if value is None:
        return info is None or info.default is None
    if wanted == "bool":
        return isinstance(value, bool) or value in (0, 1)
    if isinstance(value, bool):
        return False
    if wanted == "int":
        return isinstance(value, int)
    return isinstance(value, (int, float))
