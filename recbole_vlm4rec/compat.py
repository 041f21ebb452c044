"""Every workaround that RecBole 1.2.1 needs on today's numpy / scipy / pandas / torch.

RecBole 1.2.1 is the last release and predates numpy 2, scipy 1.13, pandas 3 (copy-on-write) and
torch 2.6 (``weights_only`` loading). Where the breakage is one call site we shim (small,
idempotent, targeted), so the project installs beside current numpy / scipy / torch; pandas 3 breaks
RecBole's Dataset in too many places, so it is pinned below 3 instead (see below). Each breakage has
its own test in ``tests/test_compat.py``. Nothing outside this module patches RecBole.

``recbole_vlm4rec/__init__.py`` calls :func:`apply_on_recbole_import`: the numpy aliases go in at
once (cheap), the rest the moment anything imports ``recbole``, so commands that never touch
RecBole (``vlm4rec --help``, ``prepare``, ``ground``, ``encode``) do not pay for importing its trainer.
Calling :func:`apply` directly installs everything now.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
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
    _restore_numpy_aliases()
    import recbole  # noqa: F401  (after the numpy aliases: recbole's import chain touches them)

    _restore_dok_update()
    _require_pandas_below_3()
    _load_own_checkpoints_with_pickle()
    _stop_config_reading_sys_argv()
    _evaluate_traditional_models_every_epoch()
    _sparse_topk_hits_in_evaluator()
    _itemknn_scores_in_csr()
    _applied = True


def apply_on_recbole_import() -> None:
    """Restore the numpy aliases now and run :func:`apply` right after ``recbole`` is imported."""
    _restore_numpy_aliases()
    if "recbole" in sys.modules:
        apply()
    elif not any(isinstance(f, _ApplyAfterRecBoleImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _ApplyAfterRecBoleImport())


class _ApplyAfterRecBoleImport(importlib.abc.MetaPathFinder):
    """Finds ``recbole`` through the normal finders and wraps its loader so that :func:`apply`
    runs as soon as the package module exists, before any RecBole submodule is used."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "recbole":
            return None
        sys.meta_path.remove(self)  # one shot; also keeps find_spec below from recursing
        spec = importlib.util.find_spec("recbole")
        if spec is not None and spec.loader is not None:
            spec.loader = _LoaderThenApply(spec.loader)
        return spec


class _LoaderThenApply(importlib.abc.Loader):
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def create_module(self, spec: Any) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        apply()


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
# points parse the command line themselves and hand RecBole the overrides as config_dict.
def _stop_config_reading_sys_argv() -> None:
    from recbole.config import Config

    def _load_cmd_line(self: Any) -> dict:
        return {}

    Config._load_cmd_line = _load_cmd_line


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


# --- Full-ranking evaluator speed ----------------------------------------------------------------
# Collector.eval_batch_collect marks hits by allocating a dense int matrix the size of the score
# matrix and summing it, per batch: on a 2-core CPU that costs more than the top-k itself (about a
# third of VLM4Rec's whole evaluation at Amazon-Baby scale). We compute the identical "rec.topk"
# tensor (hit flags of the top-k, then the number of distinct positives per user) from the sparse
# positives instead, and let RecBole's own code handle every other metric input.
def topk_hits(scores: Any, positive_u: Any, positive_i: Any, k: int) -> Any:
    """``(n_users, k + 1)`` int64 (as RecBole makes it): top-k hit flags, then #positives."""
    import torch

    n_users, n_items = scores.shape
    _, topk_idx = torch.topk(scores, k, dim=-1)
    positive_keys = torch.unique(positive_u.long() * n_items + positive_i.long())
    top_keys = torch.arange(n_users, device=scores.device)[:, None] * n_items + topk_idx
    hits = torch.isin(top_keys, positive_keys).long()
    n_positive = torch.bincount(positive_keys // n_items, minlength=n_users)
    return torch.cat((hits, n_positive[:, None]), dim=1)


class _RegisterWithout:
    """A Collector register that reports one key as not needed (we compute it ourselves)."""

    def __init__(self, register: Any, key: str) -> None:
        self._register, self._key = register, key

    def need(self, key: str) -> bool:
        return key != self._key and self._register.need(key)


def _sparse_topk_hits_in_evaluator() -> None:
    from recbole.evaluator.collector import Collector

    original = Collector.eval_batch_collect
    if getattr(original, "_vlm4rec_shim", False):
        return

    def eval_batch_collect(self: Any, scores_tensor: Any, interaction: Any,
                           positive_u: Any, positive_i: Any) -> None:
        if not self.register.need("rec.topk"):
            return original(self, scores_tensor, interaction, positive_u, positive_i)
        hits = topk_hits(scores_tensor, positive_u, positive_i, max(self.topk))
        self.data_struct.update_tensor("rec.topk", hits)
        register, self.register = self.register, _RegisterWithout(self.register, "rec.topk")
        try:
            original(self, scores_tensor, interaction, positive_u, positive_i)
        finally:
            self.register = register

    eval_batch_collect._vlm4rec_shim = True  # type: ignore[attr-defined]
    eval_batch_collect._original = original  # type: ignore[attr-defined]
    Collector.eval_batch_collect = eval_batch_collect


# --- ItemKNN full ranking ------------------------------------------------------------------------
# ItemKNN keeps its user x item score matrix in LIL format and slices rows of it for every
# evaluation batch; LIL row slicing made its Amazon-Baby full ranking ~4.5x LightGCN's. The same
# matrix in CSR gives identical scores with fast row slicing.
def _itemknn_scores_in_csr() -> None:
    from recbole.model.general_recommender.itemknn import ItemKNN

    original_init = ItemKNN.__init__
    if getattr(original_init, "_vlm4rec_shim", False):
        return

    def __init__(self: Any, config: Any, dataset: Any) -> None:
        original_init(self, config, dataset)
        self.pred_mat = self.pred_mat.tocsr()

    __init__._vlm4rec_shim = True  # type: ignore[attr-defined]
    ItemKNN.__init__ = __init__


# --- recbole.quick_start and ray -----------------------------------------------------------------
# recbole.quick_start imports ray.tune at module level, and ray 2.6 (the newest RecBole's wheel
# allows) does not import on numpy 2 / setuptools without pkg_resources. We never import
# quick_start: runner.py builds Config -> dataset -> dataloaders -> model -> trainer itself.
# tests/test_compat.py asserts that a full run leaves recbole.quick_start and ray unimported.
