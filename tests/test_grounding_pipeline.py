"""Grounding pipeline with a scripted backend: bad inputs, cache hits, staleness, resume, export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from grounding_fakes import (GOOD_TEXT, ScriptedBackend, bad_and_good_images, description_rows,
                             write_shop_dataset)
from recbole_vlm4rec.grounding.items import items_from_dataset
from recbole_vlm4rec.grounding.prompts import load_prompt
from recbole_vlm4rec.grounding.run import GroundingAborted, TagHeldByAnotherDescriber, run_grounding
from recbole_vlm4rec.formats.descriptions import DESCRIPTION_KEYS as EXPORT_KEYS
from recbole_vlm4rec.grounding.store import DescriptionRow, DescriptionStore

EXPECTED = {item: reason for item, (_, _, reason) in bad_and_good_images().items()}
OK_ITEMS = sorted(item for item, reason in EXPECTED.items() if reason is None)


@pytest.fixture
def shop(tmp_path: Path):
    folder = write_shop_dataset(tmp_path)
    return folder, items_from_dataset(folder, context_template="{title}")


def ground(folder: Path, items, backend, prompt="preference", tag="run", **kwargs):
    with DescriptionStore(folder / "descriptions" / f"{tag}.sqlite") as store:
        output = folder / "descriptions" / f"{tag}.jsonl"
        summary = run_grounding(items, load_prompt(prompt), backend, store, output, progress=False, **kwargs)
    return summary, {row["item_id"]: row for row in description_rows(output)}


def test_every_bad_input_is_recorded_and_the_run_goes_on(shop):
    folder, items = shop
    backend = ScriptedBackend()
    summary, rows = ground(folder, items, backend)
    assert sorted(rows) == sorted(EXPECTED)  # one row per item, failures included
    for item, reason in EXPECTED.items():
        row = rows[item]
        assert list(row) == list(EXPORT_KEYS)
        if reason is None:
            assert row["status"] == "ok" and row["text"] and row["reason"] is None
            assert len(row["image_sha256"]) == 64
        else:
            assert (row["status"], row["reason"], row["text"]) == ("failed", reason, None), item
    assert sorted(backend.seen) == OK_ITEMS  # unusable images never reach the backend
    assert rows["i01"]["text"] == GOOD_TEXT.format(colour="red")
    assert rows["i03"]["detail"] == "converted CMYK to RGB"
    assert rows["i10"]["detail"].endswith("img/gone.jpg: the image file does not exist")
    assert "transparency" in rows["i04"]["detail"] and "downscaled" in rows["i06"]["detail"]
    assert rows["i01"]["backend"] == "fake" and rows["i01"]["model"] == "fake-model"
    assert (rows["i01"]["prompt"], rows["i01"]["prompt_version"]) == ("preference", "1")
    assert "title of i01" in backend.prompts["i01"]  # the context template reached the prompt
    # unchanged JPEG/PNG files travel as they are; converted or downscaled ones do not
    assert backend.original_bytes == {"i01": True, "i02": True, "i03": False, "i04": False,
                                      "i05": False, "i06": False}
    assert summary.described == len(OK_ITEMS) and summary.cached == 0
    assert summary.failures == {reason: 1 for reason in EXPECTED.values() if reason}
    text = summary.format()
    assert "truncated" in text and "cache hits" in text
    lines = (folder / "descriptions" / "run.jsonl").read_text().splitlines()
    assert [json.loads(line)["item_id"] for line in lines] == sorted(EXPECTED)


def test_model_output_failures_are_recorded_with_reasons(shop):
    folder, items = shop
    script = {"i01": "", "i02": "nice", "i03": " ".join(["red"] * 40), "i04": ("error", "http_500")}
    summary, rows = ground(folder, items, ScriptedBackend(script=script))
    assert [rows[i]["reason"] for i in ("i01", "i02", "i03", "i04")] == [
        "empty_output", "degenerate_output", "degenerate_output", "http_500"
    ]
    assert rows["i05"]["status"] == "ok"
    assert summary.failures["degenerate_output"] == 2


def test_rerun_uses_the_cache_and_retries_only_failures(shop):
    folder, items = shop
    ground(folder, items, ScriptedBackend(script={"i02": ("error", "timeout")}))
    again = ScriptedBackend()
    summary, rows = ground(folder, items, again)
    assert again.seen == ["i02"]  # only the failed item is redone; bad images are re-checked on disk
    assert summary.cached == len(OK_ITEMS) - 1 and summary.described == 1
    assert rows["i02"]["status"] == "ok"
    keep = ScriptedBackend(script={"i05": ("error", "timeout")})
    ground(folder, items, keep, tag="keep")
    kept = ScriptedBackend()
    summary, rows = ground(folder, items, kept, tag="keep", retry_failed=False)
    assert kept.seen == [] and rows["i05"]["reason"] == "timeout"


def test_changed_image_prompt_or_model_makes_rows_stale(shop, tmp_path):
    folder, items = shop
    ground(folder, items, ScriptedBackend())
    (folder / "img" / "red.jpg").write_bytes((folder / "img" / "blue.png").read_bytes())
    backend = ScriptedBackend()
    _, rows = ground(folder, items, backend)
    assert backend.seen == ["i01"] and rows["i01"]["text"] == GOOD_TEXT.format(colour="blue")
    other_model = ScriptedBackend(model="fake-model-2")
    with pytest.raises(TagHeldByAnotherDescriber, match="by fake / fake-model / .*--redo"):
        ground(folder, items, other_model)  # one tag, one describer: a switch must be asked for
    assert other_model.seen == []
    ground(folder, items, other_model, redo=True)
    assert sorted(other_model.seen) == OK_ITEMS
    edited = tmp_path / "preference.yaml"
    shutil.copy(load_prompt("preference").path, edited)
    edited.write_text(edited.read_text().replace("version: 1", "version: 2"))
    new_prompt = ScriptedBackend(model="fake-model-2")
    _, rows = ground(folder, items, new_prompt, prompt=str(edited))
    assert sorted(new_prompt.seen) == OK_ITEMS and rows["i01"]["prompt_version"] == "2"
    with DescriptionStore(folder / "descriptions" / "run.sqlite") as store:
        assert store.count() == len(EXPECTED)  # replaced, never duplicated


def test_ctrl_c_keeps_finished_batches_and_a_rerun_completes(shop):
    folder, items = shop
    stopping = ScriptedBackend(batch_size=2, interrupt_after=4)
    summary, rows = ground(folder, items, stopping)
    assert summary.interrupted
    done = [item for item, row in rows.items() if row["status"] == "ok"]
    assert sorted(done) == sorted(stopping.seen) and len(done) == 4
    assert summary.to_do == len(OK_ITEMS) + 2  # + 2 undecodable images, found by the workers
    assert summary.not_done == len(EXPECTED) - len(rows) >= len(OK_ITEMS) - 4  # every item: a row or "not done"
    resumed = ScriptedBackend()
    summary, rows = ground(folder, items, resumed)
    assert sorted(resumed.seen) == sorted(set(OK_ITEMS) - set(done))  # nothing redone, nothing lost
    assert not summary.interrupted and summary.cached == 4
    assert sorted(rows) == sorted(EXPECTED)
    assert sorted(i for i, r in rows.items() if r["status"] == "ok") == OK_ITEMS


def test_a_broken_backend_aborts_with_finished_rows_saved(shop):
    folder, items = shop

    class Broken(ScriptedBackend):
        def describe(self, requests):
            if self.seen:
                raise RuntimeError("CUDA out of memory")
            return super().describe(requests)

    with pytest.raises(GroundingAborted, match="CUDA out of memory") as error:
        ground(folder, items, Broken(batch_size=3))
    assert error.value.summary.described == 3
    rows = description_rows(folder / "descriptions" / "run.jsonl")
    assert sum(row["status"] == "ok" for row in rows) == 3


def test_concurrent_workers_give_the_same_rows(shop):
    folder, items = shop
    _, serial = ground(folder, items, ScriptedBackend(batch_size=1), tag="serial")
    _, threaded = ground(folder, items, ScriptedBackend(batch_size=1, concurrency=4, delay=0.01), tag="threads")
    assert {k: v["text"] for k, v in serial.items()} == {k: v["text"] for k, v in threaded.items()}


def test_dry_run_prints_prompts_and_writes_nothing(shop, capsys):
    folder, items = shop
    backend = ScriptedBackend()
    with DescriptionStore(folder / "descriptions" / "dry.sqlite") as store:
        summary = run_grounding(items, load_prompt("structured"), backend, store,
                                folder / "descriptions" / "dry.jsonl", dry_run=True, progress=False)
        assert store.count() == 0
    err = capsys.readouterr().err
    assert "dry run" in err and '"category": "<the kind of item>"' in err and "title of i01" in err
    assert backend.seen == [] and not (folder / "descriptions" / "dry.jsonl").exists()
    assert summary.to_do == len(OK_ITEMS) + 2  # images are hashed, not decoded, in a dry run


def test_store_recovers_from_a_transaction_left_open_by_an_interrupt(tmp_path):
    """Ctrl-C between BEGIN and COMMIT must not make every later write fail."""
    with DescriptionStore(tmp_path / "s.sqlite") as store:
        store._db.execute("BEGIN IMMEDIATE")  # what an interrupted put_many leaves behind
        row = DescriptionRow(item_id="a", status="ok", text="a red scarf", reason=None, detail="",
                             backend="b", model="m", prompt="p", prompt_version="1",
                             prompt_key="k", image_sha256="h", fields=None)
        assert store.put_many([row]) == set()  # written: no good row kept in its place
        assert store.count() == 1
