"""Online top-k from a bundle: a known user, an ad-hoc item history (a new user) or a text.

``profile`` bundles score as the exported model does: a known user's score is its profile (``mean``)
or its best cosine to a profile item (``max``) against every item vector, with the items the
evaluation masks left out, so the answer equals the model's ``full_sort_predict`` top-k. A new
user's profile is built block by block as the model builds it (each feature block's mean,
normalised, scaled by the square root of its weight). The index is searched for
``k + len(excluded) + 1`` neighbours, which provably contains the top-k unexcluded items for both
aggregations (an item above a top-k item in a history item's list also scores above it), so with
the flat index the answer equals a brute-force scan. Equal scores are ordered as the evaluation
orders them (formats/ranking.py: the run's seeded permutation, rotated per user); when a tie
reaches the search depth every item is scored instead, so the answer stays exact. Each
recommendation is explained by the history items most similar to it, with their descriptions when
the bundle has them.

``topn`` bundles answer known users from the precomputed list (k <= the bundle's top_n).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from recbole_vlm4rec.formats.ranking import item_permutation, top_k_by_priority, user_priorities
from recbole_vlm4rec.serving.bundle import Bundle, block_profile, load_bundle


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


class InvalidQueryError(ServingError):
    """A query argument out of range (k < 1, explain < 0)."""


def check_counts(k: int, explain: int = 0) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidQueryError(f"k must be an integer >= 1, got {k!r}")
    if isinstance(explain, bool) or not isinstance(explain, (int, np.integer)) or explain < 0:
        raise InvalidQueryError(f"explain must be an integer >= 0, got {explain!r}")


@dataclass
class Because:
    item: str
    similarity: float
    description: str | None = None
    title: str | None = None


@dataclass
class Recommendation:
    item: str
    score: float
    description: str | None = None
    because: list[Because] = field(default_factory=list)
    title: str | None = None  # from the bundle's titles.tsv (the item table), when it has one


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
        self.kind = self.bundle.meta["kind"]
        self.item_row = {token: row for row, token in enumerate(self.bundle.item_tokens)}
        self.user_row = {token: row for row, token in enumerate(self.bundle.user_tokens)}
        self.aggregation = self.bundle.meta.get("profile_aggregation", "mean")
        self.feature = self.bundle.meta.get("item_feature")
        self._encoder = None
        self.ignored_items: list[str] = []  # last for_items() query's items without a vector
        self._warm_up()

    def _warm_up(self) -> None:
        """First uses that cost a query ~10-50 ms once per process (numpy.random's import for
        the tie permutation, BLAS and FAISS thread pools), paid while loading instead: a
        query's reported time is the query's."""
        seed = self.bundle.meta.get("tie_break_seed")
        if seed is not None:
            item_permutation(len(self.bundle.item_tokens) + 1, int(seed))  # cached
        if self.kind == "profile":
            first = self.bundle.embeddings[:1]
            self.bundle.index.search(first, 1)
            first @ first.T

    # --- queries ---------------------------------------------------------------------------
    def for_user(self, user: str, k: int = 10, explain: int = 2) -> list[Recommendation]:
        """Top-k for a user of the bundle, the evaluation's masked items left out."""
        check_counts(k, explain)
        row = self.user_row.get(str(user))
        if row is None:
            raise UnknownUserError(_unknown("user", [str(user)], self.bundle.user_tokens))
        if self.kind == "topn":
            return self._from_top_n(row, k)
        history = self.bundle.profile_rows(row)
        if self.aggregation == "mean":
            profile = self.bundle.user_profiles[row]
        else:
            profile = None
        if len(history) == 0:
            raise EmptyHistoryError(
                f"user {user!r} has no training item with a '{self.feature}' vector: the model "
                "scores every item 0 for them. Query with --items to give a history.")
        return self._rank(history, self.bundle.masked_rows(row), k, explain, profile, row)

    def for_items(self, items: Sequence[str], k: int = 10, explain: int = 2) -> list[Recommendation]:
        """Top-k for a new user given the item tokens they interacted with."""
        check_counts(k, explain)
        self._require_profile("an ad-hoc history")
        items = [str(i).strip() for i in items if str(i).strip()]
        if not items:
            raise EmptyHistoryError("empty history: give at least one item token")
        unknown = [i for i in items if i not in self.item_row]
        if unknown:
            raise UnknownItemError(_unknown("item", unknown, self.bundle.item_tokens))
        rows = np.unique([self.item_row[i] for i in items])
        # Like the model's profiles: items the feature does not cover cannot enter one.
        usable = rows[self.bundle.has_vector[rows]]
        self.ignored_items = self.without_vector(items)
        if not len(usable):
            raise EmptyHistoryError(
                f"none of the history items has a '{self.feature}' vector "
                f"({', '.join(self.ignored_items[:5])}): nothing to build a profile from")
        profile = self._profile(usable) if self.aggregation == "mean" else None
        return self._rank(usable, rows, k, explain, profile)

    def without_vector(self, items: Sequence[str]) -> list[str]:
        """The known items of ``items`` that the bundle's feature has no vector for (left out of
        a profile), sorted as the bundle lists them."""
        if self.kind != "profile":
            return []
        rows = np.unique([self.item_row[i] for i in items if i in self.item_row])
        return [self.bundle.item_tokens[r] for r in rows if not self.bundle.has_vector[r]]

    def for_text(self, text: str, k: int = 10, encoder: str | None = None) -> list[Recommendation]:
        """Top-k items for a free-text wish, encoded with the bundle's own text encoder."""
        check_counts(k)
        self._require_profile("a text query")
        if not text.strip():
            raise EmptyHistoryError("empty text query")
        query = self.encode_query(text, encoder)
        rows, scores = self._search(query[None, :], k)
        return [Recommendation(self.bundle.item_tokens[r], float(s), self._describe(r),
                               title=self._title(r))
                for r, s in zip(rows[0], scores[0]) if r >= 0][:k]

    def _require_profile(self, what: str) -> None:
        if self.kind != "profile":
            raise ServingError(
                f"this bundle serves {self.bundle.meta.get('model')}'s precomputed top-"
                f"{self.bundle.meta.get('top_n')} for known users; {what} needs a feature-based "
                "bundle (vlm4rec export <dataset> --model VLM4Rec)")

    def _from_top_n(self, row: int, k: int) -> list[Recommendation]:
        top_n = self.bundle.topn_items.shape[1]
        if k > top_n:
            raise ServingError(f"k={k} but the bundle keeps each user's best {top_n}: export it "
                               f"again with --top-n {k} or more")
        return [Recommendation(self.bundle.item_tokens[i], float(s), self._describe(int(i)),
                               title=self._title(int(i)))
                for i, s in zip(self.bundle.topn_items[row, :k], self.bundle.topn_scores[row, :k])
                if np.isfinite(s)]

    def check_encoder(self, encoder: str | None = None) -> str:
        """The encoder to embed queries with; EncoderMismatchError if its weights differ from the
        ones the bundle's item vectors were made with (compared by fingerprint)."""
        from recbole_vlm4rec.encoding.text import encoder_fingerprint

        built = self.bundle.meta.get("encoder") or {}
        if not built.get("name"):
            raise EncoderMismatchError(
                f"bundle feature '{self.feature}' was not made by one text encoder (no encoder "
                "recorded): it cannot answer text queries"
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

    def load_text_encoder(self, encoder: str | None = None):
        """The (loaded) encoder text queries use; loading it is the slow part of a first query,
        so callers that time queries load it first. BERT sentence encoders (the default MiniLM)
        run in numpy (query_encoder.py: no torch import), others through sentence-transformers."""
        from recbole_vlm4rec.serving.query_encoder import load_query_encoder

        self._require_profile("a text query")
        name = self.check_encoder(encoder)
        if self._encoder is None or self._encoder.spec != name:
            self._encoder = load_query_encoder(name)
        return self._encoder

    def use_text_encoder(self, encoder) -> None:
        """Share an encoder loaded elsewhere (a service serving several bundles built with the
        same one); the caller has checked it with :meth:`check_encoder`."""
        self._encoder = encoder

    def encode_query(self, text: str, encoder: str | None = None) -> np.ndarray:
        vector = self.load_text_encoder(encoder).encode([text], show_progress=False)[0]
        if vector.shape[0] != self.bundle.embeddings.shape[1]:
            raise EncoderMismatchError(f"query vector has {vector.shape[0]} dims, bundle "
                                       f"{self.bundle.embeddings.shape[1]}")
        return vector

    # --- ranking ---------------------------------------------------------------------------
    def _profile(self, rows: np.ndarray) -> np.ndarray:
        """The model's mean profile of ``rows`` (bundle.block_profile)."""
        return block_profile(self.bundle.embeddings[rows].sum(axis=0), self.bundle.meta["blocks"])

    def _search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        n = min(n, len(self.bundle.item_tokens))
        scores, rows = self.bundle.index.search(np.ascontiguousarray(queries, np.float32), n)
        return rows, scores

    def _rank(self, history: np.ndarray, excluded: np.ndarray, k: int, explain: int,
              profile: np.ndarray | None, user_row: int | None = None) -> list[Recommendation]:
        """Top-k by score, equal scores in the evaluation's seeded order for this user."""
        vectors = self.bundle.embeddings[history]
        depth = k + len(excluded) + 1  # one past the k-th kept item: a tie there shows
        if profile is None:  # max aggregation: best similarity to any history item
            rows, scores = self._search(vectors, depth)
            best: dict[int, float] = {}
            for row, score in zip(rows.ravel(), scores.ravel()):
                if row >= 0 and score > best.get(row, -np.inf):
                    best[int(row)] = float(score)
            candidates = list(best.items())
        else:
            rows, scores = self._search(profile[None, :], depth)
            candidates = [(int(r), float(s)) for r, s in zip(rows[0], scores[0]) if r >= 0]
        # a search stops at `depth`: an item scoring the last returned score may be cut off
        bound = float(scores[:, -1].max()) if depth < len(self.bundle.item_tokens) else -np.inf
        priority = self.tie_priorities(user_row)
        skip = set(np.asarray(excluded).tolist())
        top = sorted(((row, score) for row, score in candidates if row not in skip),
                     key=lambda rs: (-rs[1], -priority[rs[0]]))[:k]
        if len(top) < min(k, len(self.bundle.item_tokens) - len(skip)) or (
                top and top[-1][1] <= bound):
            top = self._exact_top(vectors, profile, excluded, k, user_row)
        return [self._recommendation(row, score, history, vectors, explain) for row, score in top]

    def tie_priorities(self, user_row: int | None) -> np.ndarray:
        """Per item row, the evaluation's tie priority for this user (item id = row + 1; a
        query that is no known user ranks as RecBole's padding user 0). numpy only: a first
        query must not pay for importing torch."""
        user = 0 if user_row is None else user_row + 1
        n_ids = len(self.bundle.item_tokens) + 1
        return user_priorities(user, n_ids, int(self.bundle.meta["tie_break_seed"]))[1:]

    def _exact_top(self, vectors: np.ndarray, profile: np.ndarray | None, excluded: np.ndarray,
                   k: int, user_row: int | None) -> list[tuple[int, float]]:
        """Every item scored (a tie reached the search depth), ordered as
        formats/ranking.tie_safe_topk orders the evaluation's row."""
        embeddings = self.bundle.embeddings
        if profile is None:
            scores = (vectors @ embeddings.T).max(axis=0)
        else:
            scores = embeddings @ profile
        scores = scores.astype(np.float32)
        scores[np.asarray(excluded, np.int64)] = -np.inf
        top = top_k_by_priority(scores, k, self.tie_priorities(user_row))
        return [(int(row), float(scores[row])) for row in top]

    def _describe(self, row: int) -> str | None:
        return self.bundle.descriptions.get(self.bundle.item_tokens[row])

    def _title(self, row: int) -> str | None:
        return self.bundle.titles.get(self.bundle.item_tokens[row])

    def _recommendation(self, row: int, score: float, history: np.ndarray, vectors: np.ndarray,
                        explain: int) -> Recommendation:
        similarity = vectors @ self.bundle.embeddings[row]
        nearest = np.argsort(-similarity, kind="stable")[:explain]
        because = [Because(self.bundle.item_tokens[history[i]], float(similarity[i]),
                           self._describe(int(history[i])), self._title(int(history[i])))
                   for i in nearest]
        return Recommendation(self.bundle.item_tokens[row], score, self._describe(row), because,
                              self._title(row))
