"""The report's qualitative examples: a few test users, their training items, each model's top-k.

The lists come from the run records (``result.examples``, kept by the runner for a fixed
pseudo-random sample of test users, see per_user.py); nothing is rerun. One seed is shown: the
first one of the spec where every chosen model has a record with examples. Users are those every
chosen model recorded, in the recorded order.

Unless ``--example-models`` names them, the models shown are the reference, the best trained model
(by the table's first metric), then the others best first, 4 in all, of the reference's protocol
(warm or item cold-start): a page of content-only strips with no hits says little.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Any

from recbole_vlm4rec.benchmark.catalogue import Catalogue, ItemView
from recbole_vlm4rec.benchmark.report_data import ModelSummary, without_machine_paths

DEFAULT_EXAMPLE_USERS = 3
DEFAULT_EXAMPLE_MODELS = 4
TRAIN_ITEMS_SHOWN = 8


class ExampleChoiceError(ValueError):
    """--example-models names a label the benchmark does not have."""


@dataclass
class ExampleChoice:
    seed: int
    labels: list[str]
    users: list[dict[str, Any]]  # per user: {"user", "n_train", "train_items", "test_items"}
    top_items: dict[str, dict[str, list[str]]]  # label -> user -> top-k tokens
    k: int
    notes: list[str] = field(default_factory=list)
    roles: dict[str, str] = field(default_factory=dict)  # label -> why it is shown, if chosen


def default_example_labels(summaries: dict[str, ModelSummary], candidates: list[str],
                           reference: str | None, metric: str | None) -> tuple[list[str],
                                                                              dict[str, str]]:
    """The reference, the best trained model, then the rest best first by ``metric`` (ties in
    table order), all of the first one's protocol; and each label's role where it has one."""
    if not candidates:
        return [], {}

    def value(label: str) -> float:
        mean = summaries[label].metric(metric)[0] if metric else math.nan
        return -math.inf if math.isnan(mean) else mean

    ranked = sorted(candidates, key=value, reverse=True)  # sorted() is stable: table order on ties
    first = reference if reference in candidates else ranked[0]
    # one protocol: cold-start runs train on other interactions than warm ones
    ranked = [label for label in ranked if summaries[label].cold_start == summaries[first].cold_start]
    roles = {first: "reference" if first == reference else f"best by {metric}"}
    trained = [label for label in ranked if summaries[label].trained]
    if trained and trained[0] != first:
        roles[trained[0]] = f"best trained model by {metric}"
    labels = list(dict.fromkeys([first, *trained[:1], *ranked]))[:DEFAULT_EXAMPLE_MODELS]
    return labels, {label: role for label, role in roles.items() if label in labels}


def _examples_by_seed(summary: ModelSummary) -> dict[int, dict[str, Any]]:
    return {r["cell"]["seed"]: r["result"]["examples"] for r in summary.ok
            if (r["result"].get("examples") or {}).get("users")}


def choose_examples(summaries: dict[str, ModelSummary], reference: str | None,
                    wanted: list[str] | None = None, n_users: int = DEFAULT_EXAMPLE_USERS,
                    seeds: list[int] | None = None,
                    metric: str | None = None) -> ExampleChoice | None:
    """Which seed, models and users the examples show; None when no record has examples.
    ``metric`` ranks the models when ``wanted`` does not name them (the table's first)."""
    with_examples = {label: _examples_by_seed(s) for label, s in summaries.items()}
    with_examples = {label: e for label, e in with_examples.items() if e}
    notes, roles = [], {}
    if wanted:
        unknown = [label for label in wanted if label not in summaries]
        if unknown:
            raise ExampleChoiceError(f"--example-models {unknown} not in the benchmark: "
                                     f"{list(summaries)}")
        lacking = [label for label in wanted if label not in with_examples]
        if lacking:
            notes.append(f"no examples recorded for {lacking} (no ok run, or records older "
                         "than the examples: rerun with --rerun)")
        labels = [label for label in wanted if label in with_examples]
    else:
        labels, roles = default_example_labels(summaries, list(with_examples), reference, metric)
    if not labels:
        return None
    candidates = list(seeds or []) + sorted({s for e in with_examples.values() for s in e})
    seed = max(dict.fromkeys(candidates),
               key=lambda s: sum(s in with_examples[label] for label in labels))
    dropped = [label for label in labels if seed not in with_examples[label]]
    if dropped:
        notes.append(f"{dropped} have no record for seed {seed}: not shown")
    labels = [label for label in labels if seed in with_examples[label]]
    recorded = {label: with_examples[label][seed] for label in labels}
    first = recorded[labels[0]]
    tops = {label: {u["user"]: u["top_items"] for u in recorded[label]["users"]}
            for label in labels}
    users = [u for u in first["users"] if all(u["user"] in tops[label] for label in labels)]
    return ExampleChoice(seed, labels, users[:n_users], tops, int(first.get("k", 10)), notes,
                         {label: role for label, role in roles.items() if label in labels})


def _card(view: ItemView, hit: bool = False, rank: int | None = None) -> str:
    if view.thumbnail:
        picture = (f'<img class="thumb" src="{view.thumbnail}" '
                   f'alt="{escape(view.title or view.token)}">')
    else:
        picture = f'<div class="thumb noimg">{escape(view.no_image_reason or "no image")}</div>'
    title = escape(view.title) if view.title else '<span class="missing">no title</span>'
    if view.description:
        description = (f'<div class="desc" title="{escape(view.description)}">'
                       f'{escape(view.description)}</div>')
    else:
        description = '<div class="desc missing">no description</div>'
    badges = (f'<span class="rank">{rank}</span>' if rank else "") + (
        '<span class="hitmark">hit</span>' if hit else "")
    return (f'<figure class="item{" hit" if hit else ""}" data-item="{escape(view.token)}">'
            f'{badges}{picture}<figcaption><div class="title">{title}</div>'
            f'<div class="token">item {escape(view.token)}</div>{description}'
            "</figcaption></figure>")


def render_examples(choice: ExampleChoice, catalogue: Catalogue) -> str:
    """HTML for one dataset's examples section body."""
    parts = [f"<p>Seed {choice.seed}; users drawn by a fixed pseudo-random order of their ids "
             f"(the same users in every run). Descriptions: "
             f"{escape(catalogue.description_source or 'none found')}"
             + (f", each starting with “{escape(catalogue.common_prefix.strip())}” (left out "
                "below)" if catalogue.common_prefix else "") +
             ". A green frame marks a "
             f"hit: an item of the user's test set. Models: "
             f"{', '.join(_named(label, choice.roles.get(label)) for label in choice.labels)}."
             "</p>"]
    parts += [f'<p class="note">{escape(without_machine_paths(note))}</p>'
              for note in choice.notes + catalogue.notes]
    if not choice.users:
        parts.append('<p class="note">No test user was recorded by every chosen model.</p>')
    for user in choice.users:
        test = set(user["test_items"])
        train = user["train_items"][-TRAIN_ITEMS_SHOWN:]
        parts.append(f'<div class="user" data-user="{escape(user["user"])}">'
                     f'<h3>User {escape(user["user"])}: {user["n_train"]} training interactions, '
                     f'{len(test)} test items</h3>')
        parts.append(_strip(f"Training items (the {len(train)} most recent of {user['n_train']})",
                            [_card(catalogue.view(t)) for t in train], "train"))
        shown_test = user["test_items"][:choice.k]
        parts.append(_strip(f"Held-out test items ({len(shown_test)} of {len(test)})",
                            [_card(catalogue.view(t)) for t in shown_test], "test"))
        for label in choice.labels:
            top = choice.top_items[label][user["user"]]
            hits = sum(t in test for t in top)
            cards = [_card(catalogue.view(t), hit=t in test, rank=r)
                     for r, t in enumerate(top, start=1)]
            parts.append(_strip(f"{label}: top-{choice.k} ({hits} hit{'s' * (hits != 1)})",
                                cards, "model"))
        parts.append("</div>")
    return "\n".join(parts)


def _named(label: str, role: str | None) -> str:
    return escape(label) + (f" ({escape(role)})" if role else "")


def _strip(heading: str, cards: list[str], kind: str) -> str:
    body = "".join(cards) or '<p class="note">none</p>'
    return (f'<div class="strip {kind}"><h4>{escape(heading)}</h4>'
            f'<div class="cards">{body}</div></div>')
