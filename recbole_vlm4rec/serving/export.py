"""``vlm4rec export``: a model, built exactly as a run builds it, -> a serving bundle (bundle.py).

Two kinds of bundle, both answering "the top-k of this model's ``full_sort_predict`` for a known
user, with the items the evaluation masks left out":

``profile`` (feature-based models: VLM4Rec, VLM4RecFusion; built from features, nothing trained)
    The model's own item embeddings (for fusion, each feature block scaled by its weight) in a
    FAISS index, each user's profile history (the training interactions the model's profiles use)
    and masked items. It also answers queries the model never saw: a new user's item list, or a
    text encoded with the bundle's encoder.
``topn`` (any model, e.g. from a trained model's checkpoint)
    The model's ``full_sort_predict`` run once for every user under the run's masking, keeping
    each user's best ``top_n`` items with their scores. Known users only.

The bundle is made from the same split, masking and cold-start protocol as the run
(run/runner.build_run), so a bundle of a run's model serves what that run evaluated.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from recbole_vlm4rec.data.dataset import item_file
from recbole_vlm4rec.formats import descriptions
from recbole_vlm4rec.models.features import features_read_by
from recbole_vlm4rec.serving.bundle import write_profile_bundle, write_topn_bundle

def profile_models() -> list[str]:
    """Models whose contract says serving can rebuild a new user's profile (a profile bundle)."""
    from recbole_vlm4rec.models import all_model_info

    return [name for name, info in all_model_info().items()
            if info.contract.capabilities.profile_servable]


def read_descriptions(path: str | Path) -> dict[str, str]:
    """``item token -> description`` from a ``vlm4rec ground`` JSONL file or a TSV with a header
    (formats/descriptions.py); failed rows are left out, malformed lines reported."""
    if Path(path).suffix not in (".jsonl", ".json"):
        return descriptions.read_description_table(path)
    parsed = descriptions.read_descriptions(path)
    if parsed.malformed:
        print(f"warning: {parsed.malformed_summary()}", file=sys.stderr)
    return parsed.texts()


def _item_text_descriptions(meta: dict[str, Any], item_field: str) -> dict[str, str]:
    """For a feature encoded from item text: the rendered texts, as explanations."""
    from recbole_vlm4rec.formats.items import read_item_table, render_item_texts

    table, template = meta.get("item_table"), meta.get("template")
    if not table or not template or not Path(table).is_file():
        return {}
    tokens, texts, _ = render_item_texts(read_item_table(table), template, item_field, table)
    return dict(zip(tokens, texts))


TITLE_COLUMNS = ("title", "movie_title", "name")
_NOT_TITLES = ("item_id", "image", "asin")


def item_titles(item_file: str | Path, item_field: str) -> tuple[str | None, dict[str, str]]:
    """``(column, token -> title)`` from the item table: its ``title`` (or ``movie_title``,
    ``name``) column, else its first text column; ``(None, {})`` without a usable column."""
    from recbole_vlm4rec.formats.items import read_item_table

    if not Path(item_file).is_file():
        return None, {}
    table = read_item_table(item_file)
    if item_field not in table.columns:
        return None, {}
    candidates = [c for c in TITLE_COLUMNS if c in table.columns] or [
        c for c in table.columns if c not in (item_field, *_NOT_TITLES)
        and not _numeric(table[c])]
    if not candidates:
        return None, {}
    column = candidates[0]
    titles = {str(t): " ".join(str(v).split()) for t, v in zip(table[item_field], table[column])
              if str(v).strip()}
    return column, titles


def item_images(item_file: str | Path, item_field: str,
                image_column: str = "image") -> dict[str, str]:
    """``token -> image file`` (absolute; relative references are under the table's folder) for
    the explorer page; URLs and empty cells are left out (the page shows no picture for them)."""
    from recbole_vlm4rec.formats.images import is_url, resolve_image_reference
    from recbole_vlm4rec.formats.items import read_item_table

    if not Path(item_file).is_file():
        return {}
    table = read_item_table(item_file)
    if item_field not in table.columns or image_column not in table.columns:
        return {}
    folder = Path(item_file).resolve().parent
    return {str(t): str(Path(resolve_image_reference(str(v), folder)).resolve())
            for t, v in zip(table[item_field], table[image_column])
            if str(v).strip() and not is_url(str(v).strip())}


def _numeric(values: Any) -> bool:
    """True for a column of numbers (a price, a year): not a title."""
    import pandas as pd

    filled = values[values.str.strip() != ""]
    return bool(pd.to_numeric(filled, errors="coerce").notna().all())


def _per_user(lists: Any, n_users: int) -> list[np.ndarray]:
    out = []
    for uid in range(n_users):
        items = lists[uid] if lists is not None and uid < len(lists) else None
        out.append(np.zeros(0, np.int64) if items is None else np.asarray(items, np.int64))
    return out


def masked_items(test_data: Any, n_users: int) -> list[np.ndarray]:
    """Per internal user id, the items the test evaluation masks (the run's eval_history_mask)."""
    return _per_user(getattr(test_data, "uid2history_item", None), n_users)


def held_out_items(test_data: Any, n_users: int) -> list[np.ndarray]:
    """Per internal user id, the test split's items (the evaluation's positives)."""
    return _per_user(getattr(test_data, "uid2positive_item", None), n_users)


def export_bundle(
    model: str,
    dataset: str,
    out: str | Path,
    config_files: Sequence[str] = (),
    overrides: dict[str, Any] | None = None,
    descriptions_file: str | Path | None = None,
    index_kind: str = "flat",
    top_n: int = 100,
) -> Path:
    """Build ``model`` on ``dataset`` as a run would (no training) and write its bundle."""
    from recbole_vlm4rec.run.protocol import prepare_run
    from recbole_vlm4rec.run.runner import build_run

    prepared = prepare_run(model, dataset, config_files, {"state": "WARNING", **(overrides or {})})
    built = build_run(prepared.config, prepared.model_class)
    return _write(built, model, dataset, out, descriptions_file, index_kind, top_n)


def export_checkpoint_bundle(checkpoint: str | Path, out: str | Path,
                             descriptions_file: str | Path | None = None,
                             top_n: int = 100) -> Path:
    """A ``topn`` bundle of a trained model from its RecBole checkpoint (``saved/*.pth``).

    The checkpoint pickles its config, so it is unpickled in full: export only checkpoints you
    (or this project's runs) wrote. The dataset and split are rebuilt from that config.
    """
    from recbole_vlm4rec import compat
    from recbole_vlm4rec.models import get_model_class
    from recbole_vlm4rec.run.runner import build_run

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    config = state["config"]  # the run's own config: same data, split, masking and seed
    if isinstance(config, dict):  # pickled as the dict of its values (compat.config_class)
        config = compat.config_from_dict(config)
    model, dataset = config["model"], config["dataset"]
    if not torch.cuda.is_available():
        config["device"] = torch.device("cpu")
    built = build_run(config, get_model_class(model))
    built.model.load_state_dict(state["state_dict"])
    built.model.load_other_parameter(state.get("other_parameter"))
    return _write(built, model, dataset, out, descriptions_file, "flat", top_n, profile=False,
                  source={"checkpoint": str(path.resolve())})


def _write(built: Any, model: str, dataset: str, out: str | Path,
           descriptions_file: str | Path | None, index_kind: str, top_n: int,
           profile: bool | None = None, source: dict[str, Any] | None = None) -> Path:
    data, instance = built.dataset, built.model.eval()
    item_tokens = [str(t) for t in data.field2id_token[data.iid_field]]
    user_tokens = [str(t) for t in data.field2id_token[data.uid_field]]
    masked = masked_items(built.test_data, len(user_tokens))
    features = features_read_by(type(instance), built.config)
    texts: dict[str, str] = {}
    if descriptions_file:
        texts = read_descriptions(descriptions_file)
    elif len(features) == 1:
        texts = _item_text_descriptions(data.item_feature(features[0]).meta, data.iid_field)
    title_column, titles = item_titles(item_file(built.config), data.iid_field)
    test_items = held_out_items(built.test_data, len(user_tokens))
    meta = {
        "model": model, "dataset": dataset, "features": features,
        "item_feature": "+".join(features) or None,
        "eval_history_mask": built.config["eval_history_mask"],
        "title_column": title_column, "n_titles": len(titles), "titles": titles,
        "images": item_images(item_file(built.config), data.iid_field),
        # per user row: held-out items (the explorer marks hits) and, for topn bundles, the
        # training items (profile bundles take them from the model's training split)
        "test_items": [t[t > 0] - 1 for t in test_items[1:]],
        # equal scores are ordered as the evaluation orders them (formats/ranking.py)
        "tie_break_seed": int(built.config["seed"]),
        **(source or {}),
    }
    servable = profile_models()
    if profile is None:
        profile = model in servable
    if profile:
        if type(instance).__name__ not in servable:
            raise ValueError(f"profile bundles serve {', '.join(servable)}; {model} is "
                             "served as a top-n bundle (vlm4rec export --checkpoint)")
        return write_profile_bundle(out, instance, built.train_data.dataset, item_tokens,
                                    user_tokens, masked, meta, texts, index_kind)
    top = _top_n_scores(instance, built.test_data, masked, top_n, int(built.config["seed"]))
    history = built.train_data.dataset.inter_matrix(form="csr")
    meta["train_items"] = [np.asarray(history[u].indices, np.int64) - 1
                           for u in range(1, len(user_tokens))]
    return write_topn_bundle(out, top, item_tokens, user_tokens, meta, texts)


@torch.no_grad()
def _top_n_scores(model: Any, test_data: Any, masked: list[np.ndarray], top_n: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(items, scores)`` ``(n_users, top_n)``: every user's best items under the run's masking,
    ordered as the evaluator orders them (ties by the run's seeded permutation)."""
    from recbole.data.interaction import Interaction

    from recbole_vlm4rec.formats.ranking import tie_safe_topk

    n_users = len(masked)
    n_items = model.n_items
    top_n = min(top_n, n_items - 1)
    items = np.zeros((n_users, top_n), np.int64)
    scores = np.full((n_users, top_n), -np.inf, np.float32)
    batch = max(1, 2**22 // n_items)
    for start in range(1, n_users, batch):
        users = torch.arange(start, min(start + batch, n_users), device=model.device)
        row_scores = model.full_sort_predict(Interaction({model.USER_ID: users}))
        row_scores = row_scores.view(len(users), n_items).float().clone()
        row_scores[:, 0] = -np.inf  # the padding item
        for offset, uid in enumerate(users.tolist()):
            row_scores[offset, torch.from_numpy(masked[uid])] = -np.inf
        best_items = tie_safe_topk(row_scores, top_n, users, seed).indices
        items[start:start + len(users)] = best_items.cpu().numpy()
        scores[start:start + len(users)] = torch.gather(row_scores, 1, best_items).cpu().numpy()
    return items, scores
