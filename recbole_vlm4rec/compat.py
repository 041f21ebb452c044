"""Every workaround that RecBole 1.2.1 needs on today's numpy / scipy / pandas / torch.

RecBole 1.2.1 is the last release and predates numpy 2, scipy 1.13, pandas 3 (copy-on-write) and
torch 2.6 (``weights_only`` loading). We shim rather than pin so that the project installs beside
current libraries. Each shim is small, idempotent, targeted at one call site, and has its own test
in ``tests/test_compat.py``. Nothing outside this module patches RecBole.

Call :func:`apply` before importing any ``recbole`` module; ``recbole_vlm4rec/__init__.py`` does.
"""

from __future__ import annotations

import os
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
    _restore_numpy_aliases()
    import recbole  # noqa: F401  (after the numpy aliases: recbole's import chain touches them)

    _restore_dok_update()
    _fix_pandas_copy_on_write()
    _load_own_checkpoints_with_pickle()
    _stop_config_reading_sys_argv()
    _applied = True


# --- numpy 2 -------------------------------------------------------------------------------------
# Config.compatibility_settings() does `np.float = np.float_` (np.float_ is gone in numpy 2) and
# evaluator/metrics.py uses np.float / np.bool.
_NUMPY_ALIASES = {
    "float_": np.float64,
    "complex_": np.complex128,
    "unicode_": np.str_,
    "float": np.float64,
    "int": np.int_,
    "complex": np.complex128,
    "object": np.object_,
    "str": np.str_,
    "long": np.int_,
    "bool": np.bool_,
}


def _restore_numpy_aliases() -> None:
    for name, value in _NUMPY_ALIASES.items():
        if name not in vars(np):  # vars(): getattr on a removed name warns or raises
            setattr(np, name, value)


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


# --- pandas 3 ------------------------------------------------------------------------------------
# RecBole fills missing values with `df[col].fillna(..., inplace=True)`; under copy-on-write that
# fills a temporary copy and leaves NaN in place. Two sites matter:
#   * Dataset._load_feat: empty *_seq cells stay NaN and then crash on `.split`;
#   * Dataset._fill_nan: missing tokens/floats are never imputed.
class _ReadCsvFillsEmptySequences(ModuleType):
    """Stands in for ``pandas`` inside recbole's dataset module; only ``read_csv`` differs."""

    def __init__(self, pandas_module: ModuleType) -> None:
        super().__init__("pandas")
        self._pandas = pandas_module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pandas, name)

    def read_csv(self, *args: Any, **kwargs: Any) -> Any:
        frame = self._pandas.read_csv(*args, **kwargs)
        # Columns still carry their atomic-file header ("name:token_seq") at this point.
        for column in frame.columns:
            if str(column).endswith("_seq"):
                frame[column] = frame[column].fillna("")
        return frame


def _fill_nan(self: Any) -> None:
    """Copy-on-write-safe version of ``recbole.data.dataset.Dataset._fill_nan`` (same semantics)."""
    from recbole.utils import FeatureType

    for feat_name in self.feat_name_list:
        feat = getattr(self, feat_name)
        for field in feat:
            ftype = self.field2type[field]
            if ftype == FeatureType.TOKEN:
                feat[field] = feat[field].fillna(value=0)
            elif ftype == FeatureType.FLOAT:
                feat[field] = feat[field].fillna(value=feat[field].mean())
            else:
                dtype = np.int64 if ftype == FeatureType.TOKEN_SEQ else np.float64
                feat[field] = feat[field].apply(
                    lambda x: np.array([], dtype=dtype) if isinstance(x, float) else x
                )


def _fix_pandas_copy_on_write() -> None:
    import pandas as pd
    import recbole.data.dataset.dataset as dataset_module

    if int(pd.__version__.split(".")[0]) < 3:
        return
    if not isinstance(dataset_module.pd, _ReadCsvFillsEmptySequences):
        dataset_module.pd = _ReadCsvFillsEmptySequences(pd)
    dataset_module.Dataset._fill_nan = _fill_nan


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
# points parse the command line themselves and hand RecBole the overrides as config_dict.
def _stop_config_reading_sys_argv() -> None:
    from recbole.config import Config

    def _load_cmd_line(self: Any) -> dict:
        return {}

    Config._load_cmd_line = _load_cmd_line


# --- recbole.quick_start and ray -----------------------------------------------------------------
# recbole.quick_start imports ray.tune at module level, and ray 2.6 (the newest RecBole's wheel
# allows) does not import on numpy 2 / setuptools without pkg_resources. We never import
# quick_start: runner.py builds Config -> dataset -> dataloaders -> model -> trainer itself.
# tests/test_compat.py asserts that a full run leaves recbole.quick_start and ray unimported.
