"""Every change this project makes to RecBole 1.2.1, installed by one explicit call: :func:`install`.

RecBole 1.2.1 is the last release and predates numpy 2, scipy 1.13, pandas 3 (copy-on-write) and
torch 2.6 (``weights_only`` loading). Where the breakage is one call site we shim (small,
idempotent, targeted), so the project installs beside current numpy / scipy / torch; pandas 3 breaks
RecBole's Dataset in too many places, so it is pinned below 3 instead (see below). Each breakage has
its own test in ``tests/test_compat.py``. The result-preserving speed-ups (their code is in
``speedups.py``) and the tie-safe ranking of the evaluator's collector are installed here too,
and so are the patches of RecBole's torch.distributed path (their code is in
``compat_distributed.py``): nothing outside these two modules patches RecBole (both replace a
method through one decorator, ``method_patch.replaces``).

Scope: importing the package, or building a config (:func:`config_class` is a RecBole ``Config``
subclass that carries its own fixes), changes nothing global. :func:`install` is called where a
run starts: ``vlm4rec`` (recbole_vlm4rec/cli.py), ``run_recbole.py`` (run/cli.py main), a
benchmark cell (benchmark/cell.py) and the test suite (tests/conftest.py); the run layer refuses
to build a run without it (:func:`require_installed`). Even then numpy itself is left alone
(RecBole's modules get a numpy view with the removed aliases) and sys.argv is ignored only by our
``Config`` subclass, not by RecBole's class.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np

from recbole_vlm4rec import compat_distributed
from recbole_vlm4rec.method_patch import replaces

_installed = False
_trusted_checkpoint_dirs: set[Path] = set()


def install() -> None:
    """Install every patch (safe to call many times): the compatibility shims, the speed-ups,
    the tie-safe collector, and the warning filters for RecBole's own deprecated calls."""
    global _installed
    if _installed:
        return
    _require_pandas_below_3()
    _quiet_recboles_deprecated_calls()
    _numpy_aliases_for_recbole_only()
    _restore_dok_update()
    _load_own_checkpoints_with_pickle()
    _evaluate_traditional_models_every_epoch()
    _itemknn_scores_in_csr()
    _batch_positions_fetched_at_once()
    _batch_rows_by_tensor_index()
    _fused_adam_for_models_that_ask()
    _tie_safe_collector()
    compat_distributed.install()  # RecBole's torch.distributed path: its own module, same rule
    _installed = True


def installed() -> bool:
    return _installed


class NotInstalledError(RuntimeError):
    pass


def require_installed() -> None:
    """NotInstalledError saying what to call, before a run meets an unpatched RecBole."""
    if not _installed:
        raise NotInstalledError(
            "RecBole is not patched for this run: call recbole_vlm4rec.compat.install() once "
            "before building a run (vlm4rec, run_recbole.py and benchmark cells do)")


# --- warnings ------------------------------------------------------------------------------------
# RecBole's own deprecated calls warn on every run: chained fillna and torch.cuda.amp
# (FutureWarning), and torch.sparse.FloatTensor in LightGCN and the other graph models (a torch
# UserWarning). The behaviour they warn about is handled here or harmless, so the warnings only
# bury real output; each filter names the module the warning comes from.
def _quiet_recboles_deprecated_calls() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")
    warnings.filterwarnings("ignore", message=r"torch\.sparse\.SparseTensor\(indices, values",
                            category=UserWarning, module=r"recbole\.model\.")


# --- numpy 2 -------------------------------------------------------------------------------------
# Config.compatibility_settings() does `np.float = np.float_` (np.float_ is gone in numpy 2) and
# the modules below use np.float / np.long / np.bool. We do not put the aliases back into numpy
# (every other user of numpy in the process would see them): RecBole's alias-setting method becomes
# a no-op, and each module's own `np` becomes a view of numpy that also has the old names.
# tests/test_compat.py scans RecBole's source so a module missing from this list fails a test.
RECBOLE_MODULES_USING_NUMPY_ALIASES = (
    "recbole.evaluator.metrics",
    "recbole.data.interaction",
    "recbole.data.dataset.dataset",
    "recbole.model.abstract_recommender",
    "recbole.model.layers",
)
# Never imported by this project's runs (context-aware FFM, RecBole's ray-based tuner).
RECBOLE_MODULES_NOT_USED = ("recbole.model.context_aware_recommender.ffm",
                            "recbole.trainer.hyper_tuning")
_NUMPY_ALIASES = {
    "float": np.float64,
    "int": np.int_,
    "bool": np.bool_,
    "complex": np.complex128,
    "object": np.object_,
    "str": np.str_,
    "long": np.int_,
    "unicode": np.str_,
}


class _NumpyWithRemovedAliases(ModuleType):
    """Stands in for ``numpy`` inside RecBole's metrics module; adds only the removed names."""

    def __init__(self) -> None:
        super().__init__("numpy")

    def __getattr__(self, name: str) -> Any:
        if name in _NUMPY_ALIASES:
            return _NUMPY_ALIASES[name]
        return getattr(np, name)


def _numpy_aliases_for_recbole_only() -> None:
    import importlib

    from recbole.config.configurator import Config as RecBoleConfig

    RecBoleConfig.compatibility_settings = lambda self: None
    view = _NumpyWithRemovedAliases()
    for name in RECBOLE_MODULES_USING_NUMPY_ALIASES:
        module = importlib.import_module(name)
        if not isinstance(module.np, _NumpyWithRemovedAliases):
            module.np = view


# --- scipy >= 1.13 -------------------------------------------------------------------------------
# LightGCN, NGCF, NCL, GCMC and SpectralCF build their adjacency with the private
# dok_matrix._update(dict), which scipy removed. The dict of keys lives in ``_dict`` now.
def _restore_dok_update() -> None:
    import scipy.sparse as sp

    if hasattr(sp.dok_matrix, "_update"):
        return

    def _update(self: Any, data: dict) -> None:
        self._dict.update(data)

    sp.dok_matrix._update = _update


# --- pandas 3: pinned, not shimmed -----------------------------------------------------------------
# RecBole's Dataset relies on pandas<3 semantics in at least seven places: `df[col].fillna(...,
# inplace=True)` (a silent no-op under copy-on-write: empty *_seq cells crash on `.split`, missing
# tokens/floats are never imputed) and `Series.agg(len)` (now the length of the whole Series, which
# breaks remapping, normalising and discretising every token_seq/float_seq field). Shimming those
# would mean rewriting large parts of Dataset, so setup.cfg pins pandas<3 and this check fails fast
# with the fix when another install pulled pandas 3 in.
def _require_pandas_below_3() -> None:
    import pandas as pd

    major = int(pd.__version__.split(".")[0])
    if major >= 3:
        raise ImportError(
            f"pandas {pd.__version__} is installed, but RecBole 1.2.1 silently mis-loads atomic "
            "files under pandas 3 (copy-on-write fillna, Series.agg semantics). Install the "
            "supported range: pip install 'pandas>=2.2,<3'"
        )


# --- torch >= 2.6 --------------------------------------------------------------------------------
# torch.load defaults to weights_only=True, but RecBole checkpoints pickle the Config. We allow full
# unpickling only for files inside checkpoint folders that this project's runner wrote; anything
# else keeps torch's safe default.
def trust_checkpoint_dir(path: str | os.PathLike) -> None:
    """Mark a folder whose checkpoints this process wrote (the runner calls it)."""
    _trusted_checkpoint_dirs.add(Path(path).resolve())


def is_trusted_checkpoint(path: str | os.PathLike) -> bool:
    resolved = Path(path).resolve()
    return any(folder in resolved.parents for folder in _trusted_checkpoint_dirs)


class _TorchLoadsOwnCheckpoints(ModuleType):
    """Stands in for ``torch`` inside recbole's trainer module; only ``load`` differs."""

    def __init__(self, torch_module: ModuleType) -> None:
        super().__init__("torch")
        self._torch = torch_module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._torch, name)

    def load(self, f: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(f, (str, os.PathLike)) and is_trusted_checkpoint(f):
            kwargs.setdefault("weights_only", False)
        return self._torch.load(f, *args, **kwargs)


def _load_own_checkpoints_with_pickle() -> None:
    import recbole.trainer.trainer as trainer_module
    import torch

    if not isinstance(trainer_module.torch, _TorchLoadsOwnCheckpoints):
        trainer_module.torch = _TorchLoadsOwnCheckpoints(torch)


# --- Config: sys.argv, numpy aliases, use_gpu, pickling ------------------------------------------
# RecBole's Config() parses every `--key=value` in sys.argv (pytest's or our CLI's flags included)
# and sets numpy aliases that numpy 2 removed (it fails there). Our entry points parse the command
# line themselves and hand RecBole the overrides as config_dict, so the run layer builds this
# subclass, which does neither; RecBole's own Config keeps its behaviour for other callers.
# It also says `use_gpu = True` whenever the yaml does, on a machine without a GPU: here use_gpu is
# what the run uses (the device RecBole chose). Checkpoints pickle the config: this one pickles as
# the plain dict of its values (RecBole's enums and torch.device inside), so a checkpoint names no
# class of this package and loads wherever RecBole does; :func:`config_from_dict` rebuilds it.
def config_class() -> type:
    """RecBole's Config without the sys.argv layer: ``recbole_vlm4rec.compat.ProtocolConfig``."""
    global _ProtocolConfig
    if _ProtocolConfig is None:
        from recbole.config import Config as RecBoleConfig

        class ProtocolConfig(RecBoleConfig):
            def compatibility_settings(self) -> None:
                pass  # numpy aliases: RecBole's modules get a view with them (install())

            def _load_cmd_line(self) -> dict:
                return {}

            def _init_device(self) -> None:
                if "local_rank" in self.final_config_dict:  # a process of a distributed run:
                    compat_distributed.init_device(self.final_config_dict)  # gloo on CPU too
                else:
                    super()._init_device()
                self.final_config_dict["use_gpu"] = self.final_config_dict["device"].type == "cuda"

            def __reduce__(self) -> tuple:
                return dict, (dict(self.final_config_dict),)

            def __deepcopy__(self, memo: dict) -> Any:
                import copy

                clone = type(self).__new__(type(self))
                memo[id(self)] = clone
                clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
                return clone

        # Checkpoints written before the config pickled as a dict name the class by this path.
        ProtocolConfig.__module__ = __name__
        ProtocolConfig.__qualname__ = "ProtocolConfig"
        _ProtocolConfig = ProtocolConfig
    return _ProtocolConfig


_ProtocolConfig: type | None = None


def config_from_dict(values: dict[str, Any]) -> Any:
    """The Config a checkpoint pickled (as the dict of its final values), usable as before."""
    cls = config_class()
    config = cls.__new__(cls)
    config._init_parameters_category()  # the categories RecBole prints the config by
    config.final_config_dict = dict(values)
    if not values.get("single_spec", True):  # a process of a distributed run wrote it
        config.final_config_dict.update(single_spec=True, local_rank=0)  # rebuilt in one
    return config


def __getattr__(name: str) -> Any:
    # Built on first use so importing compat does not import RecBole (unpickling an older
    # checkpoint looks the class up here).
    if name == "ProtocolConfig":
        return config_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- data_preparation and the cold-start split ----------------------------------------------------
# RecBole's data_preparation calls dataset.build() and turns its splits into dataloaders in one
# call, with no hook between. The cold-start protocol (run/cold_start.py) rebuilds the splits there,
# so for the length of that one call the dataset's build() passes its splits through `adjust`.
def data_preparation(config: Any, dataset: Any,
                     adjust: Callable[[list[Any]], list[Any]] | None = None) -> tuple[Any, Any, Any]:
    """RecBole's ``data_preparation``; with ``adjust``, the splits are ``adjust(dataset.build())``."""
    from recbole.data import data_preparation as recbole_data_preparation

    if adjust is None:
        return recbole_data_preparation(config, dataset)
    normal_build = dataset.build

    def build() -> list[Any]:
        parts = adjust(normal_build())
        for part in parts:  # copies of the dataset made while the hook was set carry it
            vars(part).pop("build", None)
        return parts

    dataset.build = build
    try:
        return recbole_data_preparation(config, dataset)
    finally:
        vars(dataset).pop("build", None)


# --- TraditionalTrainer and eval_step ------------------------------------------------------------
# TraditionalTrainer forces one epoch but keeps eval_step from the config; with eval_step > 1 that
# single epoch is never evaluated, no checkpoint is written, and evaluate() then fails. A grid that
# sets eval_step for trained models must still run non-trained ones.
def _evaluate_traditional_models_every_epoch() -> None:
    from recbole.trainer import TraditionalTrainer

    @replaces(TraditionalTrainer, "__init__")
    def __init__(original: Callable, self: Any, config: Any, model: Any) -> None:
        original(self, config, model)
        self.eval_step = 1


# --- Fused Adam for models that ask --------------------------------------------------------------
# torch's default Adam makes ~7 passes over every parameter per step. SMORE fine-tunes its raw
# feature tables (Amazon-Baby: 7,051 x 4,480 values), where those passes were a third of a training
# step (193 ms; fused: 25 ms, one thread). A model class with ``fused_adam = True`` gets torch's
# fused Adam when RecBole's learner builds an Adam: the same update, equal up to float rounding.
def _fused_adam_for_models_that_ask() -> None:
    import torch
    from recbole.trainer import Trainer

    @replaces(Trainer, "_build_optimizer")
    def _build_optimizer(original: Callable, self: Any, **kwargs: Any) -> Any:
        optimizer = original(self, **kwargs)
        if type(optimizer) is not torch.optim.Adam or not getattr(self.model, "fused_adam", False):
            return optimizer
        group = optimizer.param_groups[0]
        params = [p for g in optimizer.param_groups for p in g["params"]]
        try:  # fused needs floating parameters on a supported device (CPU: torch >= 2.4)
            return torch.optim.Adam(params, lr=group["lr"], weight_decay=group["weight_decay"],
                                    fused=True)
        except (RuntimeError, TypeError, ValueError):
            return optimizer


# --- Speed-ups (speedups.py) ----------------------------------------------------------------------
def _itemknn_scores_in_csr() -> None:
    from recbole.model.general_recommender.itemknn import ItemKNN

    from recbole_vlm4rec.speedups import itemknn_scores_in_csr

    @replaces(ItemKNN, "__init__")
    def __init__(original: Callable, self: Any, config: Any, dataset: Any) -> None:
        original(self, config, dataset)
        itemknn_scores_in_csr(self)


def _batch_positions_fetched_at_once() -> None:
    from recbole.data.dataloader.abstract_dataloader import AbstractDataLoader

    from recbole_vlm4rec.speedups import RowPositions

    @replaces(AbstractDataLoader, "__init__")
    def __init__(original: Callable, self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        # torch's dataset attribute (RecBole's loaders answer `.dataset` with their Dataset, and
        # torch forbids setting it after __init__: hence the instance dict)
        positions = self.__dict__.get("dataset")
        if type(positions) is list:
            self.__dict__["dataset"] = RowPositions(positions)


def _batch_rows_by_tensor_index() -> None:
    from recbole.data.interaction import Interaction

    from recbole_vlm4rec.speedups import interaction_rows

    @replaces(Interaction, "__getitem__")
    def __getitem__(original: Callable, self: Any, index: Any) -> Any:
        rows = None if isinstance(index, str) else interaction_rows(self, index)
        return original(self, index) if rows is None else rows


# --- Tie-safe ranking in RecBole's evaluator ------------------------------------------------------
# Collector.eval_batch_collect feeds "rec.items" and "rec.topk" from torch.topk of the score rows,
# which orders tied items by index. Here both come from formats/ranking.tie_safe_topk (ties by a
# permutation seeded from the run's seed), the hit flags from speedups.topk_hits; RecBole's own
# code still collects everything else. run/ranking.py documents the rule and counts tied users:
# while its count_ties() block is open, the collector holds a TieCounts as ``_vlm4rec_ties``.
RANKED_KEYS = ("rec.items", "rec.topk")


class _RegisterWithout:
    """A Collector register that reports some keys as not needed (computed here instead)."""

    def __init__(self, register: Any, keys: tuple[str, ...]) -> None:
        self._register, self._keys = register, keys

    def need(self, key: str) -> bool:
        return key not in self._keys and self._register.need(key)


def _row_users(collector: Any, interaction: Any, n_rows: int) -> Any:
    """The user id of each score row (full ranking: one row per user); else row positions."""
    import torch

    field = collector.config["USER_ID_FIELD"]
    try:
        users = interaction[field]
    except (KeyError, TypeError, IndexError):
        users = None
    if users is None or len(users) != n_rows:
        return torch.arange(n_rows)
    return users


def _tie_safe_collector() -> None:
    from recbole.evaluator.collector import Collector

    from recbole_vlm4rec.formats.ranking import tie_safe_topk
    from recbole_vlm4rec.speedups import topk_hits

    @replaces(Collector, "eval_batch_collect")
    def eval_batch_collect(original: Callable, self: Any, scores_tensor: Any, interaction: Any,
                           positive_u: Any, positive_i: Any) -> None:
        needed = [key for key in RANKED_KEYS if self.register.need(key)]
        if not needed:
            return original(self, scores_tensor, interaction, positive_u, positive_i)
        users = _row_users(self, interaction, scores_tensor.shape[0])
        k = max(self.topk)
        if k > scores_tensor.shape[1]:  # topk_hits names the problem
            topk_hits(scores_tensor, positive_u, positive_i, k)
        top = tie_safe_topk(scores_tensor, k, users, int(self.config["seed"]))
        counts = self.__dict__.get("_vlm4rec_ties")
        if counts is not None:
            counts.users += scores_tensor.shape[0]
            counts.users_all_equal += top.all_equal
            counts.users_tied_at_cutoff += top.tied_at_cutoff
        if "rec.items" in needed:
            self.data_struct.update_tensor("rec.items", top.indices)
        if "rec.topk" in needed:
            hits = topk_hits(scores_tensor, positive_u, positive_i, top.indices.shape[1],
                             topk_idx=top.indices)
            self.data_struct.update_tensor("rec.topk", hits)
        register, self.register = self.register, _RegisterWithout(self.register, RANKED_KEYS)
        try:
            original(self, scores_tensor, interaction, positive_u, positive_i)
        finally:
            self.register = register


# --- recbole.quick_start and ray -----------------------------------------------------------------
# recbole.quick_start imports ray.tune at module level, and ray 2.6 (the newest RecBole's wheel
# allows) does not import on numpy 2 / setuptools without pkg_resources. We never import
# quick_start: run/runner.py builds Config -> dataset -> dataloaders -> model -> trainer itself.
# tests/test_compat.py asserts that a full run leaves recbole.quick_start and ray unimported.
