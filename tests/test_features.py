"""Feature files: format round trip, alignment by token, and every malformed-file case."""

from __future__ import annotations

import numpy as np
import pytest

from recbole_vlm4rec.formats.features import (
    FeatureFileError,
    align_feature,
    feature_paths,
    load_array,
    load_feature,
    save_feature,
)

ITEM_TOKENS = ["[PAD]", "a", "b", "c", "d"]  # internal id -> raw token, as RecBole maps them


def write_raw(folder, name, matrix, tokens_text):
    folder.mkdir(parents=True, exist_ok=True)
    npy, tok, _ = feature_paths(folder, name)
    np.save(npy, matrix)
    tok.write_text(tokens_text)


def test_round_trip_keeps_rows_tokens_and_meta(tmp_path):
    matrix = np.arange(12, dtype=np.float64).reshape(4, 3)
    save_feature(tmp_path, "f", matrix, ["a", "b", "c", "d"], meta={"encoder": "x"})
    loaded = load_feature(tmp_path, "f")
    assert loaded.matrix.dtype == np.float32
    np.testing.assert_array_equal(loaded.matrix, matrix.astype(np.float32))
    assert loaded.tokens == ["a", "b", "c", "d"]
    assert loaded.meta == {"encoder": "x"}


def test_alignment_follows_tokens_not_row_order(tmp_path):
    vectors = {"a": [1, 0], "b": [0, 1], "c": [1, 1], "d": [2, 3]}
    shuffled = ["c", "a", "d", "b"]
    save_feature(tmp_path, "f", np.array([vectors[t] for t in shuffled], float), shuffled)
    aligned = align_feature(load_feature(tmp_path, "f"), ITEM_TOKENS)
    assert aligned.matrix.shape == (5, 2)
    np.testing.assert_array_equal(aligned.matrix[0], [0, 0])  # padding row
    for item_id, token in enumerate(ITEM_TOKENS[1:], start=1):
        np.testing.assert_array_equal(aligned.matrix[item_id], vectors[token])
    assert aligned.has_vector.tolist() == [False, True, True, True, True]


def test_items_without_vector_are_zero_and_counted(tmp_path):
    save_feature(tmp_path, "f", np.array([[1.0, 2.0], [0.0, 0.0]]), ["b", "d"])
    aligned = align_feature(load_feature(tmp_path, "f"), ITEM_TOKENS)
    # a and c have no row, d has an all-zero row: only b counts as having a vector
    assert aligned.has_vector.tolist() == [False, False, True, False, False]
    assert aligned.n_covered == 1 and aligned.n_items == 4
    assert "1/4 items have a vector" in aligned.report()
    assert "3 items have none" in aligned.report()


def test_unknown_tokens_error_names_file_or_are_counted_when_ignored(tmp_path):
    save_feature(tmp_path, "f", np.ones((3, 2)), ["a", "zzz", "b"])
    feature = load_feature(tmp_path, "f")
    with pytest.raises(FeatureFileError, match=r"f\.npy.*1 of 3 rows.*'zzz'"):
        align_feature(feature, ITEM_TOKENS)
    aligned = align_feature(feature, ITEM_TOKENS, unknown_tokens="ignore")
    assert aligned.n_unknown_tokens == 1
    assert aligned.has_vector.tolist() == [False, True, True, False, False]


@pytest.mark.parametrize(
    "matrix, tokens_text, message",
    [
        (np.ones((3, 2)), "a\nb\n", r"3 rows but .*f\.tokens lists 2 item tokens"),
        (np.ones((2, 2), dtype=np.int64), "a\nb\n", r"dtype is int64, expected a float array"),
        (np.ones(2), "a\nb\n", r"expected a 2-D array"),
        (np.array([[1.0, np.nan], [1.0, 2.0]]), "a\nb\n", r"1 rows contain NaN or inf: row 0 \(item 'a'\)"),
        (np.array([[1.0, 2.0], [np.inf, 2.0]]), "a\nb\n", r"row 1 \(item 'b'\)"),
        (np.ones((2, 2)), "a\na\n", r"f\.tokens:2: item token 'a' already on line 1"),
        (np.ones((2, 2)), "a\n \n", r"f\.tokens:2: empty item token"),
    ],
)
def test_malformed_files_raise_errors_naming_the_file(tmp_path, matrix, tokens_text, message):
    write_raw(tmp_path, "f", matrix, tokens_text)
    with pytest.raises(FeatureFileError, match=message):
        load_feature(tmp_path, "f")


def test_missing_files_and_corrupt_npy(tmp_path):
    with pytest.raises(FeatureFileError, match=r"file not found: .*f\.npy"):
        load_feature(tmp_path, "f")
    np.save(tmp_path / "g.npy", np.ones((1, 2)))
    with pytest.raises(FeatureFileError, match=r"no item-token list.*g\.tokens"):
        load_feature(tmp_path, "g")
    (tmp_path / "h.npy").write_bytes(b"this is not numpy")
    (tmp_path / "h.tokens").write_text("a\n")
    with pytest.raises(FeatureFileError, match=r"cannot read .*h\.npy") as error:
        load_feature(tmp_path, "h")
    # our message, never numpy's advice to load the file with pickle (which runs code from it)
    assert "not a NumPy .npy file (it starts with b'this i')" in str(error.value)
    assert "pickle" not in str(error.value) and "unsafe" not in str(error.value)
    (tmp_path / "archive.npz").write_text("neither")
    with pytest.raises(ValueError, match=r"archive\.npz: not a NumPy \.npz archive"):
        load_array(tmp_path / "archive.npz")
    np.save(tmp_path / "o.npy", np.array([[object()]]), allow_pickle=True)
    (tmp_path / "o.tokens").write_text("a\n")
    with pytest.raises(FeatureFileError, match=r"o\.npy"):
        load_feature(tmp_path, "o")


def test_save_refuses_bad_input_and_leaves_no_file(tmp_path):
    with pytest.raises(FeatureFileError, match="NaN"):
        save_feature(tmp_path, "f", np.array([[np.nan]]), ["a"])
    assert not any(tmp_path.iterdir())


def test_written_files_get_the_usual_permissions_not_mkstemps_0600(tmp_path) -> None:
    import os
    import stat

    from recbole_vlm4rec.formats.files import atomic_write_text

    mask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "sub" / "a.txt", "hello")
    finally:
        os.umask(mask)
    assert path.read_text() == "hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]  # no temp file left behind


def test_sqlite_caches_retry_a_locked_setup_and_close_on_other_errors(tmp_path, monkeypatch) -> None:
    """Two runs opening one new cache at once can see "database is locked" during WAL setup
    without SQLite waiting; the setup is retried, while a damaged file still fails at once."""
    import sqlite3

    from recbole_vlm4rec.formats import files

    real_connect = sqlite3.connect
    failures = {"left": 2}

    class FlakyConnection:
        def __init__(self, *args, **kwargs):
            self.inner = real_connect(*args, **kwargs)

        def execute(self, statement):
            if failures["left"]:
                failures["left"] -= 1
                raise sqlite3.OperationalError("database is locked")
            return self.inner.execute(statement)

        def close(self):
            self.inner.close()

    monkeypatch.setattr(files.sqlite3, "connect", FlakyConnection)
    connection = files.connect_sqlite_wal(tmp_path / "a.sqlite", ("CREATE TABLE t (a)",), timeout_s=5)
    assert failures["left"] == 0
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    monkeypatch.setattr(files.sqlite3, "connect", real_connect)

    damaged = tmp_path / "b.sqlite"
    damaged.write_bytes(b"not a database" * 100)
    with pytest.raises(sqlite3.DatabaseError, match="not a database"):
        files.connect_sqlite_wal(damaged, timeout_s=5)
