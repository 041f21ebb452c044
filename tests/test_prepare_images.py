"""`--download-images` against a local http.server: retries, validation, resume, failure report."""

from __future__ import annotations

import io
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from recbole_vlm4rec import cli
from recbole_vlm4rec.data.prepare.images import check_image, download_images, file_stem
from recbole_vlm4rec.formats.items import read_atomic_item_file


def image_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def image_server():
    hits: Counter = Counter()
    jpeg, png = image_bytes("JPEG"), image_bytes("PNG")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            hits[self.path] += 1
            routes = {
                "/a.jpg": (200, jpeg), "/b.png": (200, png), "/page": (200, b"<html>hi</html>"),
                "/big.jpg": (200, jpeg + b"\0" * 5000), "/bad.jpg": (200, b"\xff\xd8junk"),
            }
            if self.path == "/flaky.jpg":  # fails twice, then works: needs retries
                status, body = (503, b"busy") if hits[self.path] <= 2 else (200, jpeg)
            else:
                status, body = routes.get(self.path, (404, b"not found"))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


def test_download_validates_retries_and_resumes(tmp_path, image_server):
    base, hits = image_server
    urls = {name: f"{base}/{path}" for name, path in [
        ("a", "a.jpg"), ("b", "b.png"), ("flaky", "flaky.jpg"), ("gone", "gone.jpg"),
        ("page", "page"), ("big", "big.jpg"), ("bad", "bad.jpg"), ("weird/id", "a.jpg")]}
    urls["ftp"] = "ftp://example/x.jpg"
    folder = tmp_path / "images"
    report = download_images(urls, folder, concurrency=3, retries=2, backoff=0.01,
                             max_bytes=3000)
    assert set(report.saved) == {"a", "b", "flaky", "weird/id"}
    assert report.saved["b"] == "images/b.png"  # extension from the decoded format
    assert hits["/flaky.jpg"] == 3
    reasons = {token: reason for token, (_, reason) in report.failures.items()}
    assert reasons["gone"] == "HTTP 404" and hits["/gone.jpg"] == 1  # 4xx: no retry
    assert reasons["page"].startswith("not_an_image")
    assert reasons["bad"].startswith(("corrupt", "truncated", "not_an_image"))
    assert "too large" in reasons["big"] and reasons["ftp"] == "not an http(s) URL"
    assert (folder / f"{file_stem('weird/id')}.jpg").is_file() and "/" not in file_stem("weird/id")
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp files left

    again = download_images(urls, folder, retries=0, max_bytes=3000)
    assert again.reused == 4 and hits["/a.jpg"] == 2  # 'a' and 'weird/id', first run only
    assert set(again.failures) == set(report.failures)


def test_check_image_rejects_non_images():
    assert check_image(image_bytes("PNG")) == ".png"
    with pytest.raises(ValueError, match="^(corrupt|truncated|not_an_image)"):
        check_image(b"GIF89a-broken")
    truncated = image_bytes("JPEG")[:-40]  # a decode catches this; Image.verify() would not
    with pytest.raises(ValueError, match="^(truncated|corrupt)"):
        check_image(truncated)
    bmp = io.BytesIO()
    Image.new("RGB", (2, 2)).save(bmp, format="BMP")
    with pytest.raises(ValueError, match="unsupported image format BMP"):
        check_image(bmp.getvalue())


def test_download_images_cli_rewrites_item_file(tmp_path, image_server):
    base, hits = image_server
    (tmp_path / "r.csv").write_text("user,item\n" + "".join(
        f"u{u},{i}\n" for u in range(3) for i in ("a", "b", "c")))
    (tmp_path / "items.csv").write_text(
        f"item,title,image\na,Alpha,{base}/a.jpg\nb,Beta,{base}/gone.jpg\nc,Gamma,\n")
    root = tmp_path / "datasets"
    argv = ["prepare", "catalogue", "--interactions", str(tmp_path / "r.csv"), "--items",
            str(tmp_path / "items.csv"), "--name", "shop", "--download-images", "--retries", "0",
            "--root", str(root), "--config-dir", str(tmp_path / "cfg")]
    assert cli.main(argv) == 0
    folder = root / "shop"
    items = read_atomic_item_file(folder / "shop.item").set_index("item_id")
    assert items.loc["a", "image"] == "images/a.jpg" and (folder / "images" / "a.jpg").is_file()
    assert items.loc["b", "image"] == f"{base}/gone.jpg" and items.loc["c", "image"] == ""
    assert "gone.jpg\tHTTP 404" in (folder / "image_failures.tsv").read_text()
    card = json.loads((folder / "card.json").read_text())
    assert card["counters"]["image_download_failures"]["count"] == 1
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert cli.main(argv) == 0  # resumes: a.jpg is not fetched again, output unchanged
    assert hits["/a.jpg"] == 1
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
