"""A damaged bundle is refused on load with one line naming the file and what is wrong (exit 2 in
the CLI), never a traceback or a wrong answer; `-k` must be >= 1; a query does not import torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recbole_vlm4rec import cli
from recbole_vlm4rec.formats.ranking import (priorities, tie_safe_topk, top_k_by_priority,
                                             user_priorities)
from recbole_vlm4rec.serving.bundle import (BundleError, build_index, load_bundle,
                                            write_profile_arrays, write_topn_bundle)
from recbole_vlm4rec.serving.recommend import InvalidQueryError, Recommender


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def good_bundle(folder: Path, n_items: int = 12, dim: int = 6) -> Path:
    embeddings = unit_rows(n_items, dim)
    embeddings[-1] = 0.0  # the last item has no vector
    tokens = [f"it{i}" for i in range(n_items)]
    meta = {"model": "VLM4Rec", "item_feature": "vlm", "features": ["vlm"],
            "titles": {t: f"Title {t}" for t in tokens},
            "train_items": [np.array([0, 1, 11]), np.array([2, 3])],
            "test_items": [np.array([4]), np.array([5, 6])]}
    return write_profile_arrays(
        folder, tokens, embeddings, np.arange(n_items) < n_items - 1, ["alice", "bob"],
        [np.array([0, 1]), np.array([2, 3])], [np.array([0, 1, 11]), np.array([2, 3])], meta,
        descriptions={t: f"about {t}" for t in tokens})


def rewrite_json(path: Path, **changes) -> None:
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def nan_row(folder: Path) -> None:
    embeddings = np.load(folder / "item_embeddings.npy")
    embeddings[3] = np.nan
    save_npy(folder / "item_embeddings.npy", embeddings)


def other_vectors_index(folder: Path) -> None:
    import faiss

    index = build_index(unit_rows(12, 6, seed=9))
    (folder / "index.faiss").write_bytes(faiss.serialize_index(index).tobytes())


def hnsw_index(folder: Path) -> None:
    import faiss

    index = build_index(np.load(folder / "item_embeddings.npy"), "hnsw")
    (folder / "index.faiss").write_bytes(faiss.serialize_index(index).tobytes())


def garbage_index(folder: Path) -> None:
    size = (folder / "index.faiss").stat().st_size
    (folder / "index.faiss").write_bytes(np.random.default_rng(0).bytes(size))


def garbage_index_header(folder: Path) -> None:
    """A valid index type followed by an absurd vector count: FAISS must not be asked for it."""
    data = bytearray((folder / "index.faiss").read_bytes())
    data[8:16] = (2**62).to_bytes(8, "little")
    (folder / "index.faiss").write_bytes(bytes(data))


def non_utf8(name: str):
    def corrupt(folder: Path) -> None:
        lines = (folder / name).read_bytes().split(b"\n")
        lines[1] = lines[1] + b"\xff\xfe caf\xe9"
        (folder / name).write_bytes(b"\n".join(lines))
    return corrupt


def out_of_range_history(folder: Path) -> None:
    np.savez(folder / "profile_histories.npz", indptr=np.array([0, 2, 4]),
             indices=np.array([0, 1, 2, 99]))


def bad_indptr(folder: Path) -> None:
    np.savez(folder / "masked.npz", indptr=np.array([0, 3, 2]), indices=np.array([0, 1, 11]))


def has_vector_lies(folder: Path) -> None:
    save_npy(folder / "has_vector.npy", np.ones(12, bool))


CORRUPTIONS = {
    "index truncated": (lambda f: truncate(f / "index.faiss"), "index.faiss", "truncated"),
    "index empty": (lambda f: (f / "index.faiss").write_bytes(b""), "index.faiss", "empty file"),
    "index garbage": (garbage_index, "index.faiss", "not a readable FAISS index"),
    "index header asks for 2^62 vectors": (garbage_index_header, "index.faiss",
                                           "not a readable FAISS index"),
    "index of other vectors": (other_vectors_index, "index.faiss",
                               r"does not hold item_embeddings.npy's vectors"),
    "index of another kind": (hnsw_index, "index.faiss", "bundle.json says a flat index"),
    "masked.npz truncated": (lambda f: truncate(f / "masked.npz"), "masked.npz",
                             "cannot be read"),
    "profile_histories.npz not an archive": (
        lambda f: (f / "profile_histories.npz").write_bytes(b"PK\x03\x04 not really"),
        "profile_histories.npz", "cannot be read"),
    "train.npz truncated": (lambda f: truncate(f / "train.npz"), "train.npz", "cannot be read"),
    "history outside the catalogue": (out_of_range_history, "profile_histories.npz",
                                      "item row 99, outside 0..11"),
    "indptr decreasing": (bad_indptr, "masked.npz", "never decrease"),
    "descriptions.tsv not UTF-8": (non_utf8("descriptions.tsv"), "descriptions.tsv",
                                   "line 2 is not UTF-8"),
    "titles.tsv not UTF-8": (non_utf8("titles.tsv"), "titles.tsv", "line 2 is not UTF-8"),
    "items.tokens not UTF-8": (non_utf8("items.tokens"), "items.tokens", "line 2 is not UTF-8"),
    "items.tokens short": (lambda f: (f / "items.tokens").write_text("a\nb\n"), "items.tokens",
                           "2 lines, bundle.json says 12 items"),
    "users.tokens duplicate": (lambda f: (f / "users.tokens").write_text("alice\nalice\n"),
                               "users.tokens", "user 'alice' appears more than once"),
    "descriptions.tsv without a tab": (
        lambda f: (f / "descriptions.tsv").write_text("it0 no tab here\n"), "descriptions.tsv",
        "line 1 has no tab"),
    "wrong dim in bundle.json": (lambda f: rewrite_json(f / "bundle.json", dim=7),
                                 "bundle.json", "'blocks' dims add up to 6, 'dim' says 7"),
    "wrong dim and blocks in bundle.json": (
        lambda f: rewrite_json(f / "bundle.json", dim=7,
                               blocks=[{"name": "vlm", "dim": 7, "weight": 1.0}]),
        "item_embeddings.npy", r"shape \(12, 6\), expected \(12, 7\)"),
    "n_items a string": (lambda f: rewrite_json(f / "bundle.json", n_items="12"), "bundle.json",
                         "'n_items' must be an integer"),
    "bundle.json not JSON": (lambda f: (f / "bundle.json").write_text("{oops"), "bundle.json",
                             "not valid JSON"),
    "NaN row in item_embeddings.npy": (nan_row, "item_embeddings.npy",
                                       "NaN or infinite \\(first in row 3\\)"),
    "item_embeddings.npy truncated": (lambda f: truncate(f / "item_embeddings.npy"),
                                      "item_embeddings.npy", "cannot be read"),
    "item_embeddings.npy integers": (
        lambda f: save_npy(f / "item_embeddings.npy", np.zeros((12, 6), np.int64)),
        "item_embeddings.npy", "float array expected"),
    "has_vector.npy disagrees": (has_vector_lies, "has_vector.npy",
                                 "row 11 says True but item_embeddings.npy's row 11 is zero"),
    "user_profiles.npy inf": (
        lambda f: save_npy(f / "user_profiles.npy", np.full((2, 6), np.inf, np.float32)),
        "user_profiles.npy", "NaN or infinite"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_each_damaged_file_is_named_in_one_line_with_exit_2(tmp_path, capsys, case):
    folder = good_bundle(tmp_path / "b")
    assert cli.main(["recommend", str(folder), "--user", "alice"]) == 0
    capsys.readouterr()
    corrupt, file_name, problem = CORRUPTIONS[case]
    corrupt(folder)
    with pytest.raises(BundleError, match=problem) as raised:
        load_bundle(folder)
    assert f"{folder / file_name}:" in str(raised.value)
    assert cli.main(["recommend", str(folder), "--user", "alice"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and file_name in err, err
    assert "Traceback" not in err


def test_topn_bundle_scores_checked(tmp_path, capsys):
    items = np.array([[0, 0, 0], [1, 2, 3], [3, 2, 1]])
    scores = np.array([[0, 0, 0], [0.9, 0.5, -np.inf], [0.3, 0.2, 0.1]], np.float32)
    folder = write_topn_bundle(tmp_path / "t", (items, scores), ["[PAD]", "a", "b", "c"],
                               ["[PAD]", "u1", "u2"], {"model": "LightGCN"}, None)
    assert [r.item for r in Recommender(folder).for_user("u1", k=3)] == ["a", "b"]
    bad = np.load(folder / "topn_scores.npy")
    bad[1, 0] = np.nan
    save_npy(folder / "topn_scores.npy", bad)
    with pytest.raises(BundleError, match="topn_scores.npy: NaN or \\+inf"):
        load_bundle(folder)
    save_npy(folder / "topn_scores.npy", scores[1:])
    save_npy(folder / "topn_items.npy", np.array([[0, 1, 7], [2, 1, 0]]))
    with pytest.raises(BundleError, match="topn_items.npy: a list holds item row 7"):
        load_bundle(folder)


def test_k_and_explain_must_be_in_range(tmp_path, capsys):
    folder = good_bundle(tmp_path / "b")
    for flag, value in (("-k", "0"), ("-k", "-1"), ("-k", "two"), ("--explain", "-1")):
        with pytest.raises(SystemExit) as raised:
            cli.main(["recommend", str(folder), "--user", "alice", flag, value])
        assert raised.value.code == 2
        assert f"argument {flag}" in capsys.readouterr().err
    recommender = Recommender(folder)
    for k in (0, -1, 2.5, True):
        with pytest.raises(InvalidQueryError, match="k must be an integer >= 1"):
            recommender.for_user("alice", k=k)
    with pytest.raises(InvalidQueryError, match="explain must be"):
        recommender.for_items(["it0"], k=3, explain=-2)


def test_a_good_bundle_keeps_its_optional_files(tmp_path):
    bundle = load_bundle(good_bundle(tmp_path / "b"))
    assert bundle.titles["it3"] == "Title it3" and bundle.descriptions["it3"] == "about it3"
    assert bundle.train_rows(0).tolist() == [0, 1, 11] and bundle.test_rows(1).tolist() == [5, 6]
    # rewritten without them: nothing stale is left behind
    embeddings = unit_rows(12, 6)
    write_profile_arrays(tmp_path / "b", [f"it{i}" for i in range(12)], embeddings,
                         np.ones(12, bool), ["alice", "bob"], [np.array([0]), np.array([1])],
                         [np.array([0]), np.array([1])], {"model": "VLM4Rec"})
    bundle = load_bundle(tmp_path / "b")
    assert bundle.titles == {} and bundle.train is None and bundle.test_rows(0) is None
    assert not (tmp_path / "b" / "descriptions.tsv").exists()


def test_numpy_tie_break_equals_the_evaluations():
    import torch

    rng = np.random.default_rng(3)
    for n_items, seed in ((50, 2020), (1001, 7)):
        for user in (0, 5, 123456):
            expected = priorities(torch.tensor([user]), n_items, seed)[0].numpy()
            assert (user_priorities(user, n_items, seed) == expected).all()
            scores = rng.integers(0, 4, n_items).astype(np.float32)  # many ties
            scores[rng.choice(n_items, 10, replace=False)] = -np.inf
            for k in (1, 5, 40, n_items):
                reference = tie_safe_topk(torch.from_numpy(scores.copy())[None], k,
                                          torch.tensor([user]), seed).indices[0].numpy()
                reference = reference[scores[reference] > -np.inf]
                got = top_k_by_priority(scores, k, user_priorities(user, n_items, seed))
                assert got.tolist() == reference.tolist()


def test_first_query_imports_no_torch(tmp_path):
    """Query latency measures the query: the tie-break no longer imports torch on first use."""
    folder = good_bundle(tmp_path / "b")
    code = ("import sys; from recbole_vlm4rec.serving.recommend import Recommender; "
            f"r = Recommender({str(folder)!r}); r.for_user('alice', k=3); "
            "r.for_items(['it0', 'it5'], k=11); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
