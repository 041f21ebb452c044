"""Item cold-start protocol: a seeded share of items never appears in training.

Config keys (all runs; ``cold_start_items`` empty or 0 = the normal protocol)::

    cold_start_items: 0.2       # share of the items with interactions that become cold
    cold_start_seed: ~          # which items: ~ = the run's `seed`
    cold_start_targets: cold    # cold: valid/test hold only cold items' interactions and every
                                #   warm interaction trains (strict item cold-start);
                                # all: RecBole's normal split, plus the cold items' training
                                #   interactions moved into valid/test (warm and cold targets)

The split is made as usual (RecBole's ratio split or the dataset's predefined one); then every
interaction of a cold item that landed in training goes to valid or test, at random (seeded) in the
proportion of the valid and test shares of ``eval_args.split`` (half each for predefined splits).
So no model sees a cold item in training: content-based models (VLM4Rec) score it from its
features, ID-based ones (BPR, LightGCN) only have an untrained embedding for it.

Hooked into a run by :func:`cold_start_splits`: the runner hands the function it returns to
``compat.data_preparation``, which passes RecBole's splits through it. The run JSON's
``cold_start`` records what was moved.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from recbole.data.interaction import cat_interactions

TARGETS = ("cold", "all")


class ColdStartConfigError(ValueError):
    pass


def cold_start_settings(config: Any) -> dict[str, Any] | None:
    """Validated settings, or None when the protocol is off."""
    share = config["cold_start_items"]
    if share in (None, "", 0, 0.0, False):
        return None
    try:
        share = float(share)
    except (TypeError, ValueError):
        raise ColdStartConfigError(f"cold_start_items must be a share in (0, 1), got {share!r}")
    if not 0.0 < share < 1.0:
        raise ColdStartConfigError(f"cold_start_items must be a share in (0, 1), got {share}")
    targets = config["cold_start_targets"]
    if targets not in TARGETS:
        raise ColdStartConfigError(f"cold_start_targets must be one of {TARGETS}, got {targets!r}")
    seed = config["cold_start_seed"]
    return {"share": share, "targets": targets,
            "seed": int(config["seed"] if seed is None else seed),
            "valid_share": _valid_share(config)}


def _valid_share(config: Any) -> float:
    split = (config["eval_args"] or {}).get("split") or {}
    ratios = split.get("RS") if isinstance(split, dict) else None
    if ratios and len(ratios) == 3 and ratios[1] + ratios[2] > 0:
        return float(ratios[1]) / float(ratios[1] + ratios[2])
    return 0.5


def cold_start_splits(config: Any, dataset: Any) -> Callable[[list[Any]], list[Any]] | None:
    """When ``cold_start_items`` is set, the function that turns ``dataset.build()``'s splits
    into cold-start splits (the runner hands it to ``compat.data_preparation``); else None."""
    settings = cold_start_settings(config)
    if settings is None:
        return None

    def split(parts: list[Any]) -> list[Any]:
        return split_cold_items(dataset, parts, **settings)

    return split


def choose_cold_items(item_ids: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Sorted internal ids of ``round(share * #items)`` items (at least one) among ``item_ids``."""
    candidates = np.unique(item_ids)
    n_cold = min(max(1, int(round(share * len(candidates)))), len(candidates) - 1)
    return np.sort(np.random.default_rng(seed).choice(candidates, n_cold, replace=False))


def split_cold_items(dataset: Any, parts: list[Any], share: float, seed: int, targets: str,
                     valid_share: float) -> list[Any]:
    """``[train, valid, test]`` rebuilt so that no interaction of a cold item is in train."""
    iid = dataset.iid_field
    train, valid, test = parts
    everything = np.concatenate([p.inter_feat[iid].numpy() for p in parts])
    cold = choose_cold_items(everything, share, seed)
    is_cold = [torch.from_numpy(np.isin(p.inter_feat[iid].numpy(), cold)) for p in parts]
    rng = np.random.default_rng(seed + 1)

    def take(part: Any, mask: torch.Tensor) -> Any:
        return part.inter_feat[torch.nonzero(mask).flatten()]

    if targets == "cold":
        new_train = [take(p, ~m) for p, m in zip(parts, is_cold)]
        to_assign = cat_interactions([take(p, m) for p, m in zip(parts, is_cold)])
        new_valid, new_test = [], []
    else:
        new_train = [take(train, ~is_cold[0])]
        to_assign = take(train, is_cold[0])
        new_valid, new_test = [valid.inter_feat], [test.inter_feat]
    goes_to_valid = torch.from_numpy(rng.random(len(to_assign)) < valid_share)
    new_valid.append(to_assign[torch.nonzero(goes_to_valid).flatten()])
    new_test.append(to_assign[torch.nonzero(~goes_to_valid).flatten()])
    rebuilt = [dataset.copy(cat_interactions(chunks)) for chunks in (new_train, new_valid, new_test)]
    n_items = len(np.unique(everything))
    dataset.cold_items = cold
    dataset.cold_start_summary = {
        "share": share, "seed": seed, "targets": targets, "valid_share": round(valid_share, 4),
        "n_items": n_items, "n_cold_items": len(cold),
        "n_cold_interactions": int(sum(int(m.sum()) for m in is_cold)),
        "moved_out_of_train": int(is_cold[0].sum()),
        "sizes": {"train": len(rebuilt[0]), "valid": len(rebuilt[1]), "test": len(rebuilt[2])},
    }
    dataset.logger.info(f"cold-start protocol: {dataset.cold_start_summary}")
    return rebuilt
