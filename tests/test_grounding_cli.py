"""`vlm4rec ground` end to end with the scripted backend: CLI flags, crash + resume, two runs at once."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from grounding_fakes import (ScriptedBackend, bad_and_good_images, description_rows,
                             make_project_home, register_fake)
from recbole_vlm4rec import cli
from recbole_vlm4rec.grounding.items import items_from_dataset
from recbole_vlm4rec.grounding.prompts import load_prompt
from recbole_vlm4rec.grounding.run import run_grounding
from recbole_vlm4rec.grounding.store import DescriptionStore

N_ITEMS = len(bad_and_good_images())
N_OK = sum(reason is None for _, _, reason in bad_and_good_images().values())


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project home whose dataset/ holds the 'shop' fixture; configs/ still come from the repo."""
    register_fake()
    return make_project_home(tmp_path, monkeypatch)


def test_ground_command_writes_descriptions_and_summary(home: Path, capsys):
    code = cli.main(["ground", "shop", "--backend", "fake", "--no-progress", "--batch-size", "3"])
    out = capsys.readouterr().out
    assert code == 0
    rows = description_rows(home / "dataset/shop/descriptions/fake-preference.jsonl")
    assert len(rows) == N_ITEMS and sum(r["status"] == "ok" for r in rows) == N_OK
    assert f"{N_OK}  ({N_OK} described now, 0 cache hits)" in out and "not_an_image" in out
    assert cli.main(["ground", "shop", "--backend", "fake", "--no-progress", "--prompt", "structured",
                     "--domain", "fashion", "--limit", "2"]) == 0
    rows = description_rows(home / "dataset/shop/descriptions/fake-structured-fashion.jsonl")
    assert [r["item_id"] for r in rows] == ["i01", "i02"] and "fit" in rows[0]["fields"]
    assert rows[0]["text"].startswith("Category: category value.")


def test_ground_on_a_csv_table_and_dry_run(home: Path, tmp_path: Path, capsys):
    table = tmp_path / "table" / "products.csv"
    table.parent.mkdir()
    images = home / "dataset" / "shop" / "img"
    table.write_text(f"sku,name,photo\nA1,Linen shirt,red.jpg\nB2,Toy,{images / 'missing.png'}\n")
    argv = ["ground", "--items", str(table), "--item-column", "sku", "--image-column", "photo",
            "--image-root", str(images), "--context", "{name}", "--backend", "fake", "--no-progress"]
    assert cli.main(argv + ["--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "Linen shirt" in err and "1 to describe" in err and "missing" in err
    assert not (table.parent / "descriptions" / "fake-preference.jsonl").exists()
    assert cli.main(argv + ["--tag", "mine"]) == 0
    rows = description_rows(table.parent / "descriptions" / "mine.jsonl")
    assert [(r["item_id"], r["status"], r["reason"]) for r in rows] == [("A1", "ok", None), ("B2", "failed", "missing")]


@pytest.mark.parametrize("argv, message", [
    (["ground", "--backend", "fake"], "give a dataset name or --items"),
    (["ground", "nope", "--backend", "fake"], "unknown dataset 'nope'"),
    (["ground", "shop", "--backend", "fake", "--base-url", "http://x"], "does not take --base-url"),
    (["ground", "shop", "--backend", "fake", "--prompt", "nope"], "prompt 'nope' not found"),
    (["ground", "shop", "--backend", "fake", "--context", "{brand}"], "['brand'] not found"),
])
def test_ground_command_errors_are_one_clear_line(home: Path, capsys, argv, message):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


SLOW_GROUND = ["ground", "shop", "--backend", "fake", "--no-progress", "--batch-size", "1",
               "--backend-option", "delay=0.4"]


def _slow_ground_after_two_rows(home: Path) -> tuple[subprocess.Popen, Path]:
    """Start `vlm4rec ground` (0.4 s per item) in a process; return once two rows are committed."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.getcwd()]))
    # A shell starting the test run in the background (`bash .ci/run &`) makes SIGINT ignored, and
    # children inherit that; a terminal's Ctrl-C reaches a process whose SIGINT is not ignored.
    code = ("import signal, sys, grounding_fakes; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "grounding_fakes.register_fake(); from recbole_vlm4rec import cli; sys.exit(cli.main(sys.argv[1:]))")
    process = subprocess.Popen([sys.executable, "-c", code, *SLOW_GROUND], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store_path = home / "dataset/shop/descriptions/fake-preference.sqlite"
    deadline = time.time() + 60
    while time.time() < deadline and _count(store_path, "status = 'ok'") < 2:
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.05)
    return process, store_path


def test_killed_run_resumes_without_losing_or_duplicating(home: Path):
    """SIGKILL the command mid-run (no cleanup at all), then rerun: every finished batch is kept."""
    process, store_path = _slow_ground_after_two_rows(home)
    n_bad_images = 4  # committed before any model call
    process.send_signal(signal.SIGKILL)
    process.communicate()
    survived = _count(store_path, "status = 'ok'")
    assert 2 <= survived < N_OK and _count(store_path, "1") >= n_bad_images + survived
    assert cli.main(SLOW_GROUND[:-2]) == 0
    rows = description_rows(home / "dataset/shop/descriptions/fake-preference.jsonl")
    assert len(rows) == len({r["item_id"] for r in rows}) == N_ITEMS
    assert sum(r["status"] == "ok" for r in rows) == N_OK
    assert _count(store_path, "1") == N_ITEMS


def test_ctrl_c_exits_130_with_finished_rows_exported(home: Path):
    """A real SIGINT to the command, as a terminal's Ctrl-C sends: it stops, exports what finished
    (JSONL included) and exits 130; a rerun does only the rest."""
    process, _ = _slow_ground_after_two_rows(home)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err.decode()
    rows = description_rows(home / "dataset/shop/descriptions/fake-preference.jsonl")
    done = {r["item_id"] for r in rows if r["status"] == "ok"}
    assert 2 <= len(done) < N_OK and "interrupted" in out.decode()
    assert cli.main(SLOW_GROUND[:-2]) == 0
    rows = description_rows(home / "dataset/shop/descriptions/fake-preference.jsonl")
    assert sum(r["status"] == "ok" for r in rows) == N_OK and len(rows) == N_ITEMS


def test_two_runs_on_the_same_tag_share_the_work(home: Path):
    """Two runs at once on one tag: every item is described once, by one of them (claims in the
    cache), and both exports list every item."""
    folder = home / "dataset" / "shop"
    items = items_from_dataset(folder)
    errors: list[BaseException] = []
    backends = [ScriptedBackend(batch_size=1, delay=0.1) for _ in range(2)]
    summaries = []

    def one_run(backend: ScriptedBackend) -> None:
        try:
            with DescriptionStore(folder / "descriptions" / "both.sqlite", timeout_s=30) as store:
                summaries.append(run_grounding(items, load_prompt("preference"), backend, store,
                                               folder / "descriptions" / "both.jsonl", progress=False))
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=one_run, args=(backend,)) for backend in backends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    first, second = (set(backend.seen) for backend in backends)
    assert not first & second and len(first) + len(second) == N_OK  # nothing asked twice
    assert first and second  # both did some of the work
    assert all(summary.ok == N_OK for summary in summaries)
    with sqlite3.connect(folder / "descriptions" / "both.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0  # all released
    rows = description_rows(folder / "descriptions" / "both.jsonl")
    assert len(rows) == N_ITEMS and sum(r["status"] == "ok" for r in rows) == N_OK


@pytest.mark.parametrize("owner, ttl", [("elsewhere:1:abc", 0.5), (f"{socket.gethostname()}:999999999:abc", 3600)])
def test_claims_of_a_dead_run_are_taken_over(home: Path, owner: str, ttl: float):
    """Claims left by a run that died: another host's expire after the TTL; a dead process on
    this host's are taken at once (a TTL of an hour would otherwise hold the run)."""
    folder = home / "dataset" / "shop"
    items = items_from_dataset(folder)
    with DescriptionStore(folder / "descriptions" / "dead.sqlite") as store:
        assert store.claim([item.item_id for item in items], owner, ttl_s=ttl)
    backend = ScriptedBackend(batch_size=1)
    result: list = []

    def run() -> None:
        with DescriptionStore(folder / "descriptions" / "dead.sqlite") as store:
            result.append(run_grounding(items, load_prompt("preference"), backend, store,
                                        folder / "descriptions" / "dead.jsonl", progress=False,
                                        claim_ttl_s=ttl))

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive() and result[0].ok == N_OK and len(backend.seen) == N_OK


def _count(store_path: Path, where: str) -> int:
    if not store_path.exists():
        return 0
    try:
        with sqlite3.connect(store_path, timeout=10) as db:
            return int(db.execute(f"SELECT COUNT(*) FROM descriptions WHERE {where}").fetchone()[0])
    except sqlite3.OperationalError:  # table not created yet
        return 0
