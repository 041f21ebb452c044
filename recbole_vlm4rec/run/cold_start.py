"""Item cold-start protocol: a seeded share of items never appears in training.

Config keys (all runs; ``cold_start_items`` empty or 0 = the normal protocol)::

    cold_start_items: 0.2       # share of the items with interactions that become cold
    cold_start_seed: ~          # which items: ~ = the run's `seed`
    cold_start_targets: cold    # cold: valid/test hold only cold items' interactions, every warm
                                #   interaction trains, and validation and test rank the cold
                                #   items among themselves (the candidates are the cold items);
                                # mixed: RecBole's normal split, plus the cold items' training
                                #   interactions moved into valid/test; every item is ranked, and
                                #   test metrics are also reported for warm and cold targets apart

The split is made as usual (RecBole's ratio split or the dataset's predefined one); then every
interaction of a cold item that landed in training goes to valid or test, at random (seeded) in the
proportion of the valid and test shares of ``eval_args.split`` (half each for predefined splits).
So no model sees a cold item in training: content-based models (VLM4Rec) score it from its
features, ID-based ones (BPR, LightGCN) only have an untrained embedding for it.

Why the candidates are the cold items under ``cold``: when only cold items are targets but every
item is ranked, any policy that lifts items without interactions above the warm ones wins, whether
or not it orders the cold items well (a hybrid that places new items among the user's top warm
scores did, docs/results-hybrid.md). Ranking the cold items among themselves (the usual item
cold-start protocol) scores only how a model orders new items: a warm item's score cannot move a
cold item's rank. That strict "cold targets over all items" setting is not offered.

Hooked into a run by :func:`cold_start_splits`: the runner hands the function it returns to
``compat.data_preparation``, which passes RecBole's splits through it (no dataset method is
replaced); :func:`restrict_candidates` then masks every
non-cold item in the trainer's full-ranking evaluation (``cold``), and :func:`evaluate_by_target`
adds the warm / cold test metrics (``mixed``). The run JSON's ``cold_start`` records what was moved,
the candidates and, under ``mixed``, ``test_by_target``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from recbole.data.interaction import cat_interactions

TARGETS = ("cold", "mixed")


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
        hint = " ('all' is now 'mixed')" if targets == "all" else ""
        raise ColdStartConfigError(
            f"cold_start_targets must be one of {TARGETS}, got {targets!r}{hint}")
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
        "candidates": (f"the {len(cold)} cold items" if targets == "cold"
                       else f"all {dataset.item_num - 1} items"),
        "n_items": n_items, "n_cold_items": len(cold),
        "n_cold_interactions": int(sum(int(m.sum()) for m in is_cold)),
        "moved_out_of_train": int(is_cold[0].sum()),
        "sizes": {"train": len(rebuilt[0]), "valid": len(rebuilt[1]), "test": len(rebuilt[2])},
    }
    dataset.logger.info(f"cold-start protocol: {dataset.cold_start_summary}")
    return rebuilt


def restrict_candidates(config: Any, dataset: Any, trainer: Any) -> None:
    """Under ``cold_start_targets: cold``, validation and test rank the cold items only: the
    trainer's full-ranking scores of every other item become -inf after RecBole masks the user's
    history, so no warm item's score reaches the ranking. A no-op otherwise."""
    settings = cold_start_settings(config)
    if settings is None or settings["targets"] != "cold":
        return
    mode = (config["eval_args"] or {}).get("mode")
    modes = mode.values() if isinstance(mode, dict) else [mode]
    if any(m != "full" for m in modes):
        raise ColdStartConfigError(
            f"cold_start_targets: cold ranks the cold items among themselves and needs full "
            f"ranking (eval_args.mode: full), got {mode!r}")
    not_candidate = torch.ones(dataset.item_num, dtype=torch.bool)
    not_candidate[torch.from_numpy(dataset.cold_items)] = False
    not_candidate = not_candidate.to(config["device"])
    full_sort_batch_eval = trainer._full_sort_batch_eval

    def cold_candidates_only(batched_data: Any) -> Any:
        interaction, scores, positive_u, positive_i = full_sort_batch_eval(batched_data)
        scores[:, not_candidate] = -np.inf
        return interaction, scores, positive_u, positive_i

    trainer._full_sort_batch_eval = cold_candidates_only


def evaluate_by_target(config: Any, trainer: Any, train_data: Any,
                       test_data: Any) -> dict[str, Any] | None:
    """Under ``cold_start_targets: mixed``: the test metrics again, once over the test
    interactions of warm items and once over those of cold items (every item without a training
    interaction: the chosen cold items and any whose interactions all fell outside training).
    The ranking is the one of the overall metrics (same scores, same masked history); only the
    targets differ, so a user counts where they have a test item of that kind. None otherwise."""
    from recbole.data.dataloader.general_dataloader import FullSortEvalDataLoader

    settings = cold_start_settings(config)
    if settings is None or settings["targets"] != "mixed":
        return None
    test_set = test_data._dataset
    iid = test_set.iid_field
    trained = np.zeros(test_set.item_num, dtype=bool)
    trained[train_data._dataset.inter_feat[iid].numpy()] = True
    is_cold = ~trained[test_set.inter_feat[iid].numpy()]
    by_target: dict[str, Any] = {}
    for kind, mask in (("warm", ~is_cold), ("cold", is_cold)):
        if not mask.any():
            by_target[kind] = {"interactions": 0, "users": 0, "metrics": {}}
            continue
        part = test_set.copy(test_set.inter_feat[torch.from_numpy(np.nonzero(mask)[0])])
        loader = FullSortEvalDataLoader(config, part, test_data._sampler, shuffle=False)
        for uid in loader.uid_list.tolist():  # keep the overall ranking's masked history
            loader.uid2history_item[uid] = test_data.uid2history_item[uid]
        result = trainer.evaluate(loader, load_best_model=False, show_progress=False)
        by_target[kind] = {"interactions": int(mask.sum()), "users": len(loader.uid_list),
                           "metrics": {k: float(v) for k, v in result.items()}}
    return by_target
