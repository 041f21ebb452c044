"""eval_history_mask: RecBole's train+valid masking by default, MMRec's train-only on request."""

from __future__ import annotations

import pytest

from recbole_vlm4rec.run.masking import MASKS, apply_eval_history_mask


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


def test_runner_applies_the_configured_mask(taste_groups):
    """Each rule's test metrics are the ones computed by hand under that rule
    (conftest.metrics_by_hand masks the split's items itself, outside RecBole), and they differ on
    this data: a run that ignored the setting would report the same numbers twice and fail here."""
    from conftest import metrics_by_hand, read_by
    from recbole_vlm4rec.run.runner import run

    _, name, overrides = taste_groups
    reported = {}
    for mask in MASKS:  # VLM4Rec: scores from content, no training, no ties
        result = run("VLM4Rec", name, overrides={**read_by("VLM4Rec", overrides),
                                                 "eval_history_mask": mask}, write_results=False)
        reported[mask] = {key: result.test_result[key] for key in ("recall@10", "mrr@10")}
        assert reported[mask] == pytest.approx(metrics_by_hand(result.checkpoint, k=10), abs=1e-4)
    # under `train` a user's validation items (of the user's taste group, so near the top) are
    # rankable again: ranked above the test items, they lower their ranks
    assert reported["train"]["mrr@10"] < reported["train_valid"]["mrr@10"]
