"""The evaluation protocol of a run: its config layers, its features, and the checks before it starts.

Config layers, later wins (each recorded with its sha256 in the results JSON):

1. RecBole's defaults (and, for a RecBole model, RecBole's own model yaml);
2. ``configs/overall.yaml``: the shared protocol (split, full ranking, metrics, masking). Required;
3. ``configs/model/<Model>.yaml``: required for this project's models (their defaults live there,
   nowhere else);
4. ``configs/dataset/<dataset>.yaml``: shipped for every named dataset (required for those);
5. ``<data_path>/<dataset>/<dataset>.yaml``: the dataset's own yaml, written by ``vlm4rec prepare``
   for datasets without a shipped one (optional);
6. ``--config_files`` (each must exist), then ``--key=value`` overrides.

``configs/`` is package data (formats/paths.py): the same protocol whether the package runs from
a checkout, an editable install or a wheel, and from any working directory.

:func:`prepare_run` is what ``vlm4rec run``, ``run_recbole.py``, the benchmark precheck and serving
all call, so they accept and refuse exactly the same configurations.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from recbole_vlm4rec import compat
from recbole_vlm4rec.data.dataset import (check_features_declared, declared_item_features,
                                          features_dir, item_file)
from recbole_vlm4rec.data.registry import (DEFAULT_DATASET, NAMED_DATASETS, check_dataset,
                                           is_embedded)
from recbole_vlm4rec.formats import paths
from recbole_vlm4rec.formats.paths import ProtocolMissingError
from recbole_vlm4rec.models import get_model_class, model_yaml, project_models
from recbole_vlm4rec.models.contract import model_info
from recbole_vlm4rec.models.features import features_read_by
from recbole_vlm4rec.run.accounting import (Accounting, ConfigValueError, check_general_values,
                                            check_keys, check_values, given_keys, known_keys,
                                            read_yaml)
from recbole_vlm4rec.run.memory import MemoryPlan, plan_memory

logger = logging.getLogger(__name__)


@dataclass
class ConfigLayer:
    role: str  # overall / model / dataset / dataset-folder / user
    path: Path

    def to_json(self) -> dict[str, str]:
        return {"role": self.role, "path": str(self.path),
                "sha256": hashlib.sha256(self.path.read_bytes()).hexdigest()}


@dataclass
class PreparedRun:
    """A run's config plus what the protocol decided before the dataset is built."""

    config: Any  # recbole.config.Config
    model_class: type
    layers: list[ConfigLayer]
    features: list[str]  # dataset features the model reads
    notes: list[str] = field(default_factory=list)  # what was built / used, for the log
    accounting: Accounting | None = None  # keys given but not read by this model (reported)
    memory: MemoryPlan | None = None  # the estimate checked before loading (run/memory.py)
    given: dict[str, str] = field(default_factory=dict)  # key -> where it was given

    def differences(self) -> list[str]:
        """``key = value (protocol: value)`` for each setting given for this run (command line,
        ``--config_files``) whose value differs from the protocol's layers (or RecBole's default
        where no layer sets it): what the console shows instead of RecBole's whole config."""
        protocol: dict[str, Any] = {}
        for layer in self.layers:
            if layer.role != "user":
                protocol.update(read_yaml(layer.path))
        known = known_keys()
        own = known.model_keys(self.model_class.__name__, self.model_class)
        lines = []
        for key, where in self.given.items():
            if where != "command line" and not where.startswith("user"):
                continue
            info = own.get(key) or known.general.get(key)
            base = protocol[key] if key in protocol else info.default if info else None
            value = self.config[key]
            if value != base:
                lines.append(f"{key} = {value!r} (protocol: {base!r})")
        return lines


def config_layers(model: str, dataset: str, data_path: str | Path,
                  extra: Sequence[str] = ()) -> list[ConfigLayer]:
    """The yaml layers of ``model`` on ``dataset`` in override order; a missing required layer
    raises ProtocolMissingError, a missing ``extra`` file FileNotFoundError."""
    configs = paths.configs_dir()
    layers = [ConfigLayer("overall", configs / "overall.yaml")]
    values = model_yaml(get_model_class(model))
    if values is not None and values.is_file():
        layers.append(ConfigLayer("model", values))
    elif model in project_models():
        raise ProtocolMissingError(f"model {model} has no values file {values}: every model "
                                   "with a contract ships one (reinstall, or add the yaml)")
    shipped = configs / "dataset" / f"{dataset}.yaml"
    if shipped.is_file():
        layers.append(ConfigLayer("dataset", shipped))
    elif dataset in NAMED_DATASETS:
        raise ProtocolMissingError(f"named dataset {dataset} has no shipped protocol layer "
                                   f"{shipped} (reinstall recbole-vlm4rec)")
    own = Path(data_path) / dataset / f"{dataset}.yaml"
    if own.is_file():
        layers.append(ConfigLayer("dataset-folder", own))
    for path in extra:
        if not Path(path).is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        layers.append(ConfigLayer("user", Path(path).resolve()))
    return layers


def _data_path(config_files: Sequence[str], overrides: dict[str, Any]) -> str:
    """``data_path`` as the layers will set it (default: the project home's dataset/ folder)."""
    if "data_path" in overrides:
        return str(overrides["data_path"])
    for path in reversed(list(config_files)):
        if Path(path).is_file():
            value = (yaml.safe_load(Path(path).read_text()) or {}).get("data_path")
            if value:
                return str(value)
    return str(paths.dataset_root())


def resolve_layers(model: str, dataset: str, config_files: Sequence[str] = (),
                   overrides: dict[str, Any] | None = None) -> tuple[str, list[ConfigLayer]]:
    """``(data_path, layers)`` of a run; checks that the model and the dataset exist."""
    get_model_class(model)
    data_path = _data_path(config_files, overrides or {})
    if not is_embedded(dataset):
        check_dataset(dataset, root=Path(data_path))
    return data_path, config_layers(model, dataset, data_path, config_files)


def build_config(model: str, dataset: str = DEFAULT_DATASET, config_files: Sequence[str] = (),
                 overrides: dict[str, Any] | None = None) -> Any:
    """A RecBole Config for ``model`` on ``dataset`` with the protocol's layers applied.

    Changes nothing global (compat.config_class() carries its own fixes): a precheck, or any
    code, may build configs without patching RecBole."""
    Config = compat.config_class()
    data_path, layers = resolve_layers(model, dataset, config_files, overrides)
    # RecBole loads its own model yaml only when given a name it knows; ours are passed as classes.
    model_arg: Any = get_model_class(model) if model in project_models() else model
    return Config(model=model_arg, dataset=dataset,
                  config_file_list=[str(layer.path) for layer in layers],
                  config_dict={"data_path": data_path, **(overrides or {})})


def prepare_run(model: str, dataset: str = DEFAULT_DATASET, config_files: Sequence[str] = (),
                overrides: dict[str, Any] | None = None,
                build_features: bool = True) -> PreparedRun:
    """Config + checks + declared features, everything before the dataset is created.

    Raises UnknownModelError / UnknownDatasetError / MissingFeatureError / ProtocolMissingError
    for a configuration that cannot run, ConfigKeyError / ConfigValueError (run/accounting.py)
    for a key nothing reads or a value of the wrong kind. With ``build_features`` (a real run), declared derived
    features the model reads are built through the encode stage first; the precheck skips that.
    """
    _, layers = resolve_layers(model, dataset, config_files, overrides)
    model_class = get_model_class(model)
    accounting = check_keys(model, model_class, layers, overrides or {})
    check_general_values(layers, overrides or {})
    config = build_config(model, dataset, config_files, overrides)
    given = given_keys(layers, overrides or {})
    try:
        features = features_read_by(model_class, config)
    except ValueError as error:  # no feature named and no default, or a name given twice
        check_values(config, model_class, given, None, overrides or {})  # its own mistakes first
        raise ConfigValueError(str(error)) from None
    check_values(config, model_class, given, features, overrides or {})
    check_features_declared(config, features)
    memory = check_memory(config, model, model_class, features, given)
    prepared = PreparedRun(config, model_class, layers, features, accounting=accounting,
                           given=given, memory=memory)
    if build_features:
        prepared.notes = build_declared_features(config, features)
    prepared.notes += memory.notes
    return prepared


def check_memory(config: Any, model: str, model_class: type, features: Sequence[str],
                 given: dict[str, str]) -> MemoryPlan:
    """The run's memory estimate against its budget (run/memory.py): MemoryBudgetError before
    anything loads when it cannot fit; sets ``eval_batch_size`` when the budget lowers it."""
    info = model_info(model_class, model_yaml(model_class))
    plan = plan_memory(config, model, info.contract, info.trained, features,
                       eval_batch_size_given=given.get("eval_batch_size", "overall") != "overall")
    if plan.eval_batch_size != config["eval_batch_size"]:
        config["eval_batch_size"] = plan.eval_batch_size
    return plan


def build_declared_features(config: Any, names: Sequence[str] | None = None) -> list[str]:
    """Build the declared derived features among ``names`` (all when None) with the encode stage."""
    from recbole_vlm4rec.encoding.declared import ensure_declared_features

    declared = declared_item_features(config)
    wanted = {name: spec for name, spec in declared.items()
              if spec.get("build") and (names is None or name in names)}
    if not wanted:
        return []
    device = str(config["device"]) if config["device"] else None
    return ensure_declared_features(
        wanted, item_file(config), features_dir(config),
        encoder_spec=config["text_encoder"], item_field=config["ITEM_ID_FIELD"], device=device)
