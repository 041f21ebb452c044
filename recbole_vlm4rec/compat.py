"""Every workaround that RecBole 1.2.1 needs on today's numpy / scipy / pandas / torch.

RecBole 1.2.1 is the last release and predates numpy 2, scipy 1.13, pandas 3 (copy-on-write) and
torch 2.6 (``weights_only`` loading). Where the breakage is one call site we shim (small,
idempotent, targeted), so the project installs beside current numpy / scipy / torch; pandas 3 breaks
RecBole's Dataset in too many places, so it is pinned below 3 instead (see below). Each breakage has
its own test in ``tests/test_compat.py``. Nothing outside this module patches RecBole for
compatibility (speed-ups that keep results identical live in ``speedups.py``).

Scope: importing this package changes nothing. The run layer calls :func:`apply` when it builds a
RecBole Config; even then numpy itself is left alone (RecBole's metrics module gets a numpy view
with the removed aliases, and RecBole's own alias-setting method becomes a no-op), and sys.argv is
ignored only by the :class:`Config` subclass our run layer constructs, not by RecBole's class.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

_applied = False
_trusted_checkpoint_dirs: set[Path] = set()


def apply() -> None:
    """Install all shims (safe to call many times)."""
    global _applied
    if _applied:
        return
    # RecBole's own deprecated calls (chained fillna, torch.cuda.amp) warn on every run; the
    # behaviour they warn about is handled here, so the warnings only bury real output.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")
    _numpy_aliases_for_recbole_only()
    _restore_dok_update()
    _require_pandas_below_3()
    _load_own_checkpoints_with_pickle()
    _evaluate_traditional_models_every_epoch()
    _applied = True


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


# --- Config and sys.argv -------------------------------------------------------------------------
# Config() parses every `--key=value` in sys.argv (pytest's or our CLI's flags included). Our entry
# points parse the command line themselves and hand RecBole the overrides as config_dict, so the
# run layer builds this subclass; RecBole's own Config keeps its behaviour for other callers.
def config_class() -> type:
    """RecBole's Config without the sys.argv layer: ``recbole_vlm4rec.compat.ProtocolConfig``."""
    global _ProtocolConfig
    if _ProtocolConfig is None:
        from recbole.config import Config as RecBoleConfig

        class ProtocolConfig(RecBoleConfig):
            def _load_cmd_line(self) -> dict:
                return {}

        # Checkpoints pickle the config: the class must be importable by this name.
        ProtocolConfig.__module__ = __name__
        ProtocolConfig.__qualname__ = "ProtocolConfig"
        _ProtocolConfig = ProtocolConfig
    return _ProtocolConfig


_ProtocolConfig: type | None = None


def __getattr__(name: str) -> Any:
    # Built on first use so importing compat does not import RecBole (unpickling a checkpoint
    # looks the class up here).
    if name == "ProtocolConfig":
        return config_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- TraditionalTrainer and eval_step ------------------------------------------------------------
# TraditionalTrainer forces one epoch but keeps eval_step from the config; with eval_step > 1 that
# single epoch is never evaluated, no checkpoint is written, and evaluate() then fails. A grid that
# sets eval_step for trained models must still run non-trained ones.
def _evaluate_traditional_models_every_epoch() -> None:
    from recbole.trainer import TraditionalTrainer

    if getattr(TraditionalTrainer.__init__, "_vlm4rec_shim", False):
        return
    original_init = TraditionalTrainer.__init__

    def __init__(self: Any, config: Any, model: Any) -> None:
        original_init(self, config, model)
        self.eval_step = 1

    __init__._vlm4rec_shim = True  # type: ignore[attr-defined]
    TraditionalTrainer.__init__ = __init__


# --- recbole.quick_start and ray -----------------------------------------------------------------
# recbole.quick_start imports ray.tune at module level, and ray 2.6 (the newest RecBole's wheel
# allows) does not import on numpy 2 / setuptools without pkg_resources. We never import
# quick_start: run/runner.py builds Config -> dataset -> dataloaders -> model -> trainer itself.
# tests/test_compat.py asserts that a full run leaves recbole.quick_start and ray unimported.
