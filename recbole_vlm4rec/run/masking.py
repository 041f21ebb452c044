"""Which of a user's known items are masked (never ranked) when scoring the test split.

``eval_history_mask`` (config key):

``train_valid`` (default, RecBole's rule)
    test ranking excludes the user's training *and* validation items.
``train`` (MMRec's rule)
    test ranking excludes only training items, so a validation item ranked high counts as a miss
    (as in MMRec's published tables).

Validation ranking always masks training items only. The choice changes the test dataloader's
``uid2history_item`` right after RecBole builds it (``runner.run`` calls
:func:`apply_eval_history_mask`); nothing else in RecBole is touched.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

MASKS = ("train_valid", "train")


def apply_eval_history_mask(config: Any, train_data: Any, test_data: Any) -> None:
    """Set the test dataloader's masked history to the configured rule (no-op for the default)."""
    mode = config["eval_history_mask"]
    if mode not in MASKS:
        raise ValueError(f"eval_history_mask must be one of {MASKS}, got {mode!r}")
    if mode == "train_valid" or not hasattr(test_data, "uid2history_item"):
        return  # RecBole's rule, or a dataloader without full-ranking history (sampled eval)
    train = train_data._dataset.inter_feat
    uid_field, iid_field = train_data._dataset.uid_field, train_data._dataset.iid_field
    users = train[uid_field].numpy()
    items = train[iid_field].numpy()
    order = np.argsort(users, kind="stable")
    users, items = users[order], items[order]
    starts = np.searchsorted(users, np.arange(len(test_data.uid2history_item) + 1))
    changed = 0
    for uid, history in enumerate(test_data.uid2history_item):
        if history is None:
            continue  # not a test user
        positives = test_data.uid2positive_item[uid]
        train_items = items[starts[uid]:starts[uid + 1]]
        # Like RecBole, an item that is also a test positive is never masked.
        kept = np.setdiff1d(train_items, positives.numpy())
        changed += len(history) - len(kept)
        test_data.uid2history_item[uid] = torch.from_numpy(kept.astype(np.int64))
    logging.getLogger().info(
        f"eval_history_mask=train: test ranking masks training items only "
        f"({changed} validation interactions are no longer masked)"
    )
