"""eval_history_mask: RecBole's train+valid masking by default, MMRec's train-only on request."""

from __future__ import annotations

import pytest

from recbole_vlm4rec.run.masking import apply_eval_history_mask


def items_by_user(split):
    inter = split._dataset.inter_feat
    out: dict[int, set[int]] = {}
    for u, i in zip(inter["user_id"].tolist(), inter["item_id"].tolist()):
        out.setdefault(u, set()).add(i)
    return out


def test_train_mask_leaves_validation_items_rankable(tiny_dataset, build_pipeline):
    _, name, overrides = tiny_dataset
    config, _, train, valid, test, _ = build_pipeline("Pop", name, overrides)
    train_items, valid_items = items_by_user(train), items_by_user(valid)
    masked = {u: set(h.tolist()) for u, h in enumerate(test.uid2history_item) if h is not None}
    assert masked and all(masked[u] == train_items[u] | valid_items.get(u, set()) for u in masked)

    config["eval_history_mask"] = "train"
    apply_eval_history_mask(config, train, test)
    for user, history in enumerate(test.uid2history_item):
        if history is not None:
            positives = set(test.uid2positive_item[user].tolist())
            assert set(history.tolist()) == train_items[user] - positives


def test_default_is_recboles_rule_and_unknown_rule_is_an_error(tiny_dataset, build_pipeline):
    _, name, overrides = tiny_dataset
    config, _, train, _, test, _ = build_pipeline("Pop", name, overrides)
    assert config["eval_history_mask"] == "train_valid"
    before = [None if h is None else h.tolist() for h in test.uid2history_item]
    apply_eval_history_mask(config, train, test)
    assert [None if h is None else h.tolist() for h in test.uid2history_item] == before
    config["eval_history_mask"] = "valid"
    with pytest.raises(ValueError, match="eval_history_mask must be one of"):
        apply_eval_history_mask(config, train, test)


def test_runner_applies_the_configured_mask(tiny_dataset):
    from recbole_vlm4rec.run.runner import run

    _, name, overrides = tiny_dataset
    recalls = {mask: run("Pop", name, overrides={**overrides, "eval_history_mask": mask},
                         write_results=False).test_result["recall@20"]
               for mask in ("train_valid", "train")}
    # Pop ranks popular validation items too once they are no longer masked: recall can only drop.
    assert recalls["train"] <= recalls["train_valid"]
