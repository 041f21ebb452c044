"""Grounding across a fleet of OpenAI-compatible servers: several --base-url (or a file of them),
a server killed mid-run loses no item, and the summary says what each server did."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from PIL import Image

from grounding_fakes import description_rows, make_project_home
from recbole_vlm4rec import cli
from recbole_vlm4rec.grounding.backends.openai_stub import STUB_ANSWER, StubProcess, StubServer


def server_line(out: str, url: str) -> tuple[int, int, int, str]:
    """(requests, answered, failed, reasons) of ``url`` in the summary."""
    match = re.search(re.escape(url) + r"  (\d+) requests, (\d+) answered, (\d+) failed(.*)", out)
    assert match, out
    return int(match[1]), int(match[2]), int(match[3]), match[4]


def kill_after(server: StubProcess, requests: int) -> threading.Thread:
    def watch() -> None:
        while server.received() < requests:
            time.sleep(0.02)
        server.kill()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_fleet_loses_nothing_when_a_server_is_killed_mid_run(tmp_path: Path, capsys):
    lines = ["item_id,image"]
    for number in range(40):
        Image.new("RGB", (12, 12), (number * 6, 90, 200 - number * 4)).save(tmp_path / f"{number}.jpg")
        lines.append(f"p{number:02d},{number}.jpg")
    (tmp_path / "items.csv").write_text("\n".join(lines) + "\n")
    with StubProcess(latency=0.1) as survivor, StubProcess(latency=0.1) as doomed:
        killer = kill_after(doomed, 8)
        code = cli.main(["ground", "--items", str(tmp_path / "items.csv"), "--backend", "openai",
                         "--base-url", survivor.base_url, "--base-url", doomed.base_url,
                         "--model", "stub", "--concurrency", "6", "--max-retries", "3",
                         "--backend-option", "backoff_base=0.05", "--no-progress"])
        killer.join(timeout=30)
        assert not killer.is_alive()  # it was killed while the run went on
    out = capsys.readouterr().out
    rows = description_rows(tmp_path / "descriptions/openai-preference.jsonl")
    assert code == 0 and len(rows) == 40
    assert all(row["status"] == "ok" and row["text"] == STUB_ANSWER for row in rows)  # none lost
    sent_a, answered_a, failed_a, _ = server_line(out, survivor.base_url)
    sent_b, answered_b, failed_b, reasons_b = server_line(out, doomed.base_url)
    assert answered_a + answered_b == 40 and answered_a > answered_b >= 1
    assert failed_b >= 1 and "connection_error" in reasons_b  # its requests in flight, and probes
    assert sent_b == answered_b + failed_b and sent_a == answered_a + failed_a


def test_base_urls_from_a_file_share_the_items(tmp_path: Path, monkeypatch, capsys):
    make_project_home(tmp_path, monkeypatch)
    with StubServer(latency=0.05) as first, StubServer(latency=0.05) as second:
        listing = tmp_path / "servers.txt"
        listing.write_text(f"# two servers\n{first.base_url}\n{second.base_url}\n")
        assert cli.main(["ground", "shop", "--backend", "openai", "--base-urls-file", str(listing),
                         "--model", "stub", "--concurrency", "2", "--no-progress"]) == 0
        out = capsys.readouterr().out
        assert sum(first.requests.values()) >= 1 and sum(second.requests.values()) >= 1
    assert server_line(out, first.base_url)[1] + server_line(out, second.base_url)[1] == 6
    listing.write_text("http://ok:1/v1\nnot a url\n")
    assert cli.main(["ground", "shop", "--backend", "openai", "--base-urls-file", str(listing),
                     "--model", "stub"]) == 2
    assert "servers.txt:2: base URL 'not a url'" in capsys.readouterr().err
