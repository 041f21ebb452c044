"""Online top-k from a bundle: a known user, an ad-hoc item history (a new user) or a text.

Scoring is VLM4Rec's: ``mean`` profile = normalised mean of the history's (normalised) item
vectors, score = cosine; ``max`` = best cosine to any history item. Seen items are never returned.
The index is searched for ``k + len(history)`` neighbours, which provably contains the top-k unseen
items for both aggregations (an item above a top-k item in a history item's list also scores
above it), so with the flat index the answer equals a brute-force scan.

Each recommendation is explained by the history items most similar to it (cosine), with their
descriptions when the bundle has them.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from recbole_vlm4rec.serving.bundle import Bundle, load_bundle


class ServingError(ValueError):
    """A query the bundle cannot answer; the message says why and what would work."""


class UnknownUserError(ServingError):
    pass


class UnknownItemError(ServingError):
    pass


class EmptyHistoryError(ServingError):
    pass


class EncoderMismatchError(ServingError):
    pass


@dataclass
class Because:
    item: str
    similarity: float
    description: str | None = None


@dataclass
class Recommendation:
    item: str
    score: float
    description: str | None = None
    because: list[Because] = field(default_factory=list)


def _unknown(kind: str, names: Sequence[str], known: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:5])
    hint = difflib.get_close_matches(str(names[0]), list(known[:200000]), n=3, cutoff=0.6)
    return (f"unknown {kind} {shown}" + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
            + (f"; did you mean {', '.join(hint)}?" if hint else ".")
            + f" The bundle knows {len(known)} {kind}s, e.g. {', '.join(known[:3])}.")


class Recommender:
    """Answers top-k queries from one loaded bundle."""

    def __init__(self, bundle: Bundle | str | Path) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.item_row = {token: row for row, token in enumerate(self.bundle.item_tokens)}
        self.user_row = {token: row for row, token in enumerate(self.bundle.user_tokens)}
        self.aggregation = self.bundle.meta.get("profile_aggregation", "mean")
        feature = self.bundle.meta.get("feature") or {}
        # dataset items the feature does not cover: "no vector", not "not in the catalogue"
        self.items_without_vector = set(feature.get("items_without_vector_tokens") or ())
        self._encoder = None
        self.ignored_items: list[str] = []  # last for_items() query's items without a vector

    # --- queries ---------------------------------------------------------------------------
    def for_user(self, user: str, k: int = 10, explain: int = 2) -> list[Recommendation]:
        """Top-k unseen items for a user of the bundle."""
        row = self.user_row.get(str(user))
        if row is None:
            raise UnknownUserError(_unknown("user", [str(user)], self.bundle.user_tokens))
        history = self.bundle.history_rows(row)
        if len(history) == 0:
            raise EmptyHistoryError(
                f"user {user!r} has no interacted item with a "
                f"'{self.bundle.meta.get('item_feature')}' vector: nothing to build a profile "
                "from. Query with --items to give a history."
            )
        return self._rank(history, k, explain)

    def for_items(self, items: Sequence[str], k: int = 10, explain: int = 2) -> list[Recommendation]:
        """Top-k for a new user given the item tokens they interacted with."""
        items = [str(i).strip() for i in items if str(i).strip()]
        if not items:
            raise EmptyHistoryError("empty history: give at least one item token")
        unknown = [i for i in items if i not in self.item_row and i not in self.items_without_vector]
        if unknown:
            raise UnknownItemError(_unknown("item", unknown, self.bundle.item_tokens))
        # Like VLM4Rec's profiles: items the feature does not cover cannot enter one.
        self.ignored_items = [i for i in items if i not in self.item_row]
        usable = [self.item_row[i] for i in items if i in self.item_row]
        if not usable:
            raise EmptyHistoryError(
                f"none of the history items has a '{self.bundle.meta.get('item_feature')}' vector "
                f"({', '.join(self.ignored_items[:5])}): nothing to build a profile from"
            )
        return self._rank(np.unique(usable), k, explain)

    def for_text(self, text: str, k: int = 10, encoder: str | None = None) -> list[Recommendation]:
        """Top-k items for a free-text wish, encoded with the bundle's own text encoder."""
        if not text.strip():
            raise EmptyHistoryError("empty text query")
        query = self.encode_query(text, encoder)
        rows, scores = self._search(query[None, :], k)
        return [Recommendation(self.bundle.item_tokens[r], float(s), self._describe(r))
                for r, s in zip(rows[0], scores[0]) if r >= 0][:k]

    def check_encoder(self, encoder: str | None = None) -> str:
        """The encoder to embed queries with; EncoderMismatchError if its weights differ from the
        ones the bundle's item vectors were made with (compared by fingerprint)."""
        from recbole_vlm4rec.encoding.text import encoder_fingerprint

        built = self.bundle.meta.get("encoder") or {}
        if not built.get("name"):
            raise EncoderMismatchError(
                f"bundle feature '{self.bundle.meta.get('item_feature')}' was not made by a text "
                "encoder (no encoder recorded): it cannot answer text queries"
            )
        name = encoder or built["name"]
        fingerprint = encoder_fingerprint(name)
        if built.get("fingerprint") and fingerprint != built["fingerprint"]:
            raise EncoderMismatchError(
                f"the query encoder {name!r} (fingerprint {fingerprint}) is not the one the bundle "
                f"was built with ({built['name']!r}, fingerprint {built['fingerprint']}): its "
                "vectors live in another space. Re-export the bundle with this encoder, or query "
                "with the bundle's."
            )
        return name

    def encode_query(self, text: str, encoder: str | None = None) -> np.ndarray:
        from recbole_vlm4rec.encoding.text import TextEncoder

        name = self.check_encoder(encoder)
        if self._encoder is None or self._encoder.spec != name:
            self._encoder = TextEncoder(name)
        vector = self._encoder.encode([text], show_progress=False)[0]
        if vector.shape[0] != self.bundle.embeddings.shape[1]:
            raise EncoderMismatchError(f"query vector has {vector.shape[0]} dims, bundle "
                                       f"{self.bundle.embeddings.shape[1]}")
        return vector

    # --- ranking ---------------------------------------------------------------------------
    def _search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        n = min(n, len(self.bundle.item_tokens))
        scores, rows = self.bundle.index.search(np.ascontiguousarray(queries, np.float32), n)
        return rows, scores

    def _rank(self, history: np.ndarray, k: int, explain: int) -> list[Recommendation]:
        vectors = self.bundle.embeddings[history]
        depth = k + len(history)
        if self.aggregation == "max":
            rows, scores = self._search(vectors, depth)
            best: dict[int, float] = {}
            for row, score in zip(rows.ravel(), scores.ravel()):
                if row >= 0 and score > best.get(row, -np.inf):
                    best[int(row)] = float(score)
            candidates = sorted(best.items(), key=lambda kv: -kv[1])
        else:
            profile = vectors.mean(axis=0)
            profile /= max(float(np.linalg.norm(profile)), 1e-12)
            rows, scores = self._search(profile[None, :], depth)
            candidates = [(int(r), float(s)) for r, s in zip(rows[0], scores[0]) if r >= 0]
        seen = set(history.tolist())
        top = [(row, score) for row, score in candidates if row not in seen][:k]
        return [self._recommendation(row, score, history, vectors, explain) for row, score in top]

    def _describe(self, row: int) -> str | None:
        return self.bundle.descriptions.get(self.bundle.item_tokens[row])

    def _recommendation(self, row: int, score: float, history: np.ndarray, vectors: np.ndarray,
                        explain: int) -> Recommendation:
        similarity = vectors @ self.bundle.embeddings[row]
        nearest = np.argsort(-similarity, kind="stable")[:explain]
        because = [Because(self.bundle.item_tokens[history[i]], float(similarity[i]),
                           self._describe(int(history[i]))) for i in nearest]
        return Recommendation(self.bundle.item_tokens[row], score, self._describe(row), because)
