"""A failed attempt never replaces a good description: tagger rows, then an always-500 server,
then a server killed mid-run, all on one tag; one tag holds one describer's rows unless --redo
asks for a switch; --dry-run writes nothing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from grounding_fakes import description_rows, make_project_home
from recbole_vlm4rec import cli
from recbole_vlm4rec.grounding.backends.openai_stub import STUB_ANSWER, StubProcess, StubServer
from recbole_vlm4rec.grounding.store import DescriptionStore

TAG = "shop-desc"


def always_500(payload, seen):
    return 500, {}, {"error": {"message": "engine crashed"}}


def files(home: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    """(jsonl rows, sqlite rows) of the tag, by item."""
    folder = home / "dataset/shop/descriptions"
    jsonl = {row["item_id"]: row for row in description_rows(folder / f"{TAG}.jsonl")}
    with DescriptionStore(folder / f"{TAG}.sqlite", read_only=True) as store:
        cached = {row.item_id: row.export() for row in store.all_rows()}
    return jsonl, cached


def openai_argv(base_url: str, *extra: str) -> list[str]:
    return ["ground", "shop", "--backend", "openai", "--base-url", base_url, "--model", "stub",
            "--tag", TAG, "--no-progress", "--max-retries", "1",
            "--backend-option", "backoff_base=0.01", *extra]


def test_failures_and_a_dying_server_leave_every_good_row_in_place(tmp_path: Path, monkeypatch, capsys):
    home = make_project_home(tmp_path, monkeypatch)
    assert cli.main(["ground", "shop", "--backend", "tagger", "--tag", TAG, "--no-progress"]) == 0
    jsonl, cached = files(home)
    good = {item: row for item, row in jsonl.items() if row["status"] == "ok"}
    assert len(good) == 6 and cached == jsonl

    def assert_intact(replaced: set[str] = frozenset()) -> None:
        now_jsonl, now_cached = files(home)
        assert now_cached == now_jsonl  # the file is the cache, exported
        for item, row in good.items():
            if item in replaced:
                assert now_jsonl[item]["status"] == "ok" and now_jsonl[item]["text"] == STUB_ANSWER
            else:
                assert now_jsonl[item] == row, item

    with StubServer(policy=always_500) as failing:
        capsys.readouterr()
        assert cli.main(openai_argv(failing.base_url)) == 2  # another describer: refused up front
        assert "holds 6 good descriptions by tagger" in capsys.readouterr().err
        assert sum(failing.requests.values()) == 0
        assert_intact()
        assert cli.main(openai_argv(failing.base_url, "--redo")) == 0  # the switch, asked for
        out = capsys.readouterr().out
        assert sum(failing.requests.values()) == 12  # 6 items x 2 tries, every one a 500
        assert "http_500" in out and "kept         6  items whose attempt failed" in out
        assert_intact()

    with StubProcess(latency=0.3) as dying:
        def kill_after_two() -> None:
            while dying.received() < 2:
                time.sleep(0.02)
            time.sleep(0.1)  # the first answer is back, the second in flight
            dying.kill()

        killer = threading.Thread(target=kill_after_two, daemon=True)
        killer.start()
        code = cli.main(openai_argv(dying.base_url, "--redo", "--concurrency", "1"))
        killer.join(timeout=30)
    assert code in (0, 1)  # 1: the run stopped once items in a row could not connect
    now_jsonl, _ = files(home)
    replaced = {item for item, row in now_jsonl.items() if row["backend"] == "openai" and row["status"] == "ok"}
    assert 1 <= len(replaced) < 6  # it died mid-run
    assert_intact(replaced)
    assert all(now_jsonl[item]["backend"] == "tagger" for item in set(good) - replaced)


def test_a_dry_run_writes_nothing(tmp_path: Path, monkeypatch, capsys):
    home = make_project_home(tmp_path, monkeypatch)
    folder = home / "dataset/shop/descriptions"
    assert cli.main(["ground", "shop", "--backend", "tagger", "--tag", TAG, "--dry-run"]) == 0
    assert not folder.exists()  # not even an empty cache
    assert cli.main(["ground", "shop", "--backend", "tagger", "--tag", TAG, "--no-progress", "--limit", "3"]) == 0
    before = {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in folder.iterdir()}
    assert sorted(before) == [f"{TAG}.jsonl", f"{TAG}.sqlite"]
    capsys.readouterr()
    assert cli.main(["ground", "shop", "--backend", "tagger", "--tag", TAG, "--dry-run"]) == 0
    assert "3 cache hits" in capsys.readouterr().err  # it read the cache
    after = {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in folder.iterdir()}
    assert after == before
