"""The explorer page in headless Chromium against a live `vlm4rec serve`: every view renders
without a console error or a broken picture, a search returns cards, an item page has one column
per feature, a user page one column per bundle, and the screenshot is not blank.

The page logs one ``EXPLORER {...}`` line per rendered view (what it counted in its own DOM once
its pictures settled); any other console line (a script error, a failed request) fails the test.
Needs Debian's ``chromium`` (`.ci/run` installs it); skips, saying so, when it is absent."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from serve_fixtures import LiveServer, export_explorer_bundles

from recbole_vlm4rec.serving.server import create_app
from recbole_vlm4rec.serving.service import Service


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)


pytestmark = pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH: `apt-get "
                                "install -y chromium` (.ci/run installs it)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explorer")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp)
        folders, _ = export_explorer_bundles(tmp)
    with LiveServer(create_app(Service([folders["emb"], folders["text"]]))) as live:
        yield live, tmp


def render(url: str, tmp, name: str) -> tuple[dict, np.ndarray]:
    shot = tmp / f"{name}.png"
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", f"--user-data-dir={tmp / 'profile'}", f"--screenshot={shot}",
               "--window-size=1280,1000", "--virtual-time-budget=20000",
               "--enable-logging=stderr", "--v=0", url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert len(console) == 1 and "EXPLORER " in console[0], console  # nothing else logged
    found = json.loads(console[0].split("EXPLORER ", 1)[1].rsplit('", source:', 1)[0])
    return found, np.asarray(Image.open(shot).convert("RGB"))


def test_item_page_shows_one_column_per_feature(server):
    live, tmp = server
    found, pixels = render(f"{live.url}/#/item/shop/i3", tmp, "item")
    assert found["view"] == "item" and found["features"] == ["emb", "text", "co-interaction"]
    assert found["columns"] == 3 and found["cards"] == 3 * 10
    assert found["image"] and found["images"] >= 1 and found["broken"] == 0
    assert pixels.shape[:2] == (1000, 1280)
    not_white = (pixels < 245).any(axis=2).mean()
    assert not_white > 0.05 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100


def test_search_returns_cards(server):
    live, tmp = server
    found, _ = render(f"{live.url}/#/search?q=space%20opera%20with%20robots", tmp, "search")
    assert found["view"] == "search" and found["cards"] >= 4 and found["broken"] == 0


def test_user_page_puts_bundles_side_by_side(server):
    live, tmp = server
    found, _ = render(f"{live.url}/#/user/shop/u3", tmp, "user")
    assert found["view"] == "user" and found["columns"] == 2 and found["history"] > 0
    assert found["held_out"] > 0 and found["broken"] == 0


def test_home_and_a_bad_id_render_without_console_errors(server):
    live, tmp = server
    found, pixels = render(f"{live.url}/", tmp, "home")
    assert found == {**found, "view": "home", "bundles": 2}
    assert (pixels < 245).any(axis=2).mean() > 0.02
    found, _ = render(f"{live.url}/#/item/shop/nope", tmp, "missing")
    assert found["view"] == "error" and "unknown item 'nope'" in found["message"]
