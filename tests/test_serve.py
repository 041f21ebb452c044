"""`vlm4rec serve`: the same answers as `vlm4rec recommend`, neighbours under every feature with
co-interaction counts, text search, JSON errors with the right status (never a 500), atomic hot
swap with no failed request under load, the CLI; the numpy query encoder equals
sentence-transformers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_fixtures import LiveServer, export_explorer_bundles, item_title
from starlette.testclient import TestClient

from recbole_vlm4rec import cli
from recbole_vlm4rec.serving.bundle import load_bundle, write_profile_arrays
from recbole_vlm4rec.serving.server import create_app
from recbole_vlm4rec.serving.service import Service

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shop")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp)  # RecBole's ./log and ./saved
        folders, overrides = export_explorer_bundles(tmp)
    return folders


@pytest.fixture(scope="module")
def client(shop):
    service = Service([shop["emb"], shop["text"]])
    with TestClient(create_app(service)) as test_client:
        yield test_client


def cli_json(capsys, *args: str) -> dict:
    assert cli.main(["recommend", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_recommend_answers_equal_the_cli(client, shop, capsys):
    for user in ("u0", "u3", "u17"):
        served = client.get("/recommend", params={"user": user, "k": 7, "explain": 3,
                                                  "bundle": "shop-emb"})
        assert served.status_code == 200
        expected = cli_json(capsys, str(shop["emb"]), "--user", user, "-k", "7", "--explain", "3")
        body = served.json()
        assert body["recommendations"] == expected["recommendations"]
        assert body["query"] == expected["query"] and body["bundle"] == "shop-emb"
        assert len(body["recommendations"]) == 7 and body["recommendations"][0]["because"]
    served = client.post("/recommend", json={"items": ["i1", "i22", "i5"], "k": 5,
                                              "bundle": "shop-text"})
    expected = cli_json(capsys, str(shop["text"]), "--items", "i1,i22,i5", "-k", "5")
    assert served.json()["recommendations"] == expected["recommendations"]
    assert served.json()["query"] == expected["query"]
    # integer tokens are accepted as the strings they are
    assert client.post("/recommend", json={"items": ["1"]}).status_code == 404


def test_similar_has_one_column_per_feature_with_co_interaction_counts(client, shop):
    body = client.get("/similar/i3", params={"k": 6}).json()
    assert [c["feature"] for c in body["features"]] == ["emb", "text", "co-interaction"]
    assert body["item"]["title"] == item_title(3) and body["item"]["image"] == "/images/shop/i3"
    assert body["item"]["descriptions"]["text"] == item_title(3)  # the rendered template
    bundle = load_bundle(shop["emb"])
    row = bundle.item_tokens.index("i3")
    # brute force: cosine neighbours, and users in common in the training split
    cosine = bundle.embeddings @ bundle.embeddings[row]
    cosine[row] = -np.inf
    emb = body["features"][0]["neighbours"]
    assert [n["item"] for n in emb] == [bundle.item_tokens[r] for r in np.argsort(-cosine)[:6]]
    indptr, indices = bundle.train
    users_of = [set(np.flatnonzero([r in indices[indptr[u]:indptr[u + 1]]
                                    for u in range(len(indptr) - 1)])) for r in range(40)]
    shared = np.array([len(users_of[row] & users_of[r]) for r in range(40)])
    shared[row] = 0
    co = body["features"][2]["neighbours"]
    assert [n["co_count"] for n in co] == sorted(shared, reverse=True)[:6]
    assert all(shared[bundle.item_tokens.index(n["item"])] == n["co_count"] for n in co)
    co_items = {n["item"] for n in co}
    for n in emb:
        assert n["co_count"] == shared[bundle.item_tokens.index(n["item"])]
        assert n["in_co_top"] == (n["item"] in co_items)
    only = client.get("/similar/i3", params={"feature": "text", "k": 3}).json()
    assert [c["feature"] for c in only["features"]] == ["text"]
    assert len(only["features"][0]["neighbours"]) == 3


def test_text_search_and_title_lookup(client):
    body = client.get("/search", params={"q": "space opera with robots", "k": 4}).json()
    assert body["bundle"] == "shop-text"  # the first bundle that can embed text
    found = [r["item"] for r in body["recommendations"]]
    assert len(found) == 4 and all(item_title(int(t[1:])).startswith("space opera") for t in found)
    assert set(body["images"]) == set(found)
    lookup = client.get("/items", params={"q": "JAZZ piano"}).json()
    assert {c["item"] for c in lookup["items"]} == {f"i{i}" for i in range(6, 40, 10)}
    assert client.get("/items", params={"q": "i7"}).json()["items"][0]["item"] == "i7"


def test_user_page_data(client, shop):
    body = client.get("/users/u3", params={"k": 5}).json()
    bundle = load_bundle(shop["text"])
    row = bundle.user_tokens.index("u3")
    assert [c["item"] for c in body["history"]] == [bundle.item_tokens[r]
                                                     for r in bundle.train_rows(row)]
    held = {bundle.item_tokens[r] for r in bundle.test_rows(row)}
    assert {c["item"] for c in body["held_out"]} == held and held
    assert [c["bundle"] for c in body["recommendations"]] == ["shop-emb", "shop-text"]
    for column in body["recommendations"]:
        assert len(column["items"]) == 5
        assert column["hits"] == sum(i["item"] in held for i in column["items"])
        assert all(i["held_out"] == (i["item"] in held) for i in column["items"])


def test_images_and_page(client):
    image = client.get("/images/shop/i3")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content[:4] == b"\x89PNG"
    page = client.get("/")
    assert page.status_code == 200 and "<script>" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN


ERRORS = [
    ("get", "/recommend?user=ghost", 404, "unknown user 'ghost'"),
    ("get", "/recommend", 422, "give ?user="),
    ("get", "/recommend?user=u1&k=0", 422, "k must be an integer from 1 to 1000, got 0"),
    ("get", "/recommend?user=u1&k=-3", 422, "k must be"),
    ("get", "/recommend?user=u1&k=ten", 422, "got 'ten'"),
    ("get", "/recommend?user=u1&k=100000", 422, "k must be"),
    ("get", "/recommend?user=u1&explain=-1", 422, "explain must be"),
    ("get", "/recommend?user=u1&bundle=nope", 404, "unknown bundle 'nope'"),
    ("post", ("/recommend", b"{not json"), 400, "the body is not JSON"),
    ("post", ("/recommend", b'["i1"]'), 422, "takes a JSON object"),
    ("post", ("/recommend", b'{"items": []}'), 422, "empty history"),
    ("post", ("/recommend", b'{"items": [true]}'), 422, "items must be item tokens"),
    ("post", ("/recommend", b'{"items": ["i1"], "k": "5"}'), 200, None),
    ("post", ("/recommend", b'{"items": ["i1"], "k": 2.5}'), 422, "k must be"),
    ("post", ("/recommend", b'{"items": ["i1", "zz"]}'), 404, "unknown item 'zz'"),
    ("get", "/search?q=robots&bundle=shop-emb", 400, "cannot embed text"),
    ("get", "/search?q=", 422, "give ?q="),
    ("get", "/search?q=robots&k=0", 422, "k must be"),
    ("get", "/similar/zz", 404, "unknown item 'zz'"),
    ("get", "/similar/i1?feature=smell", 422, "unknown feature 'smell'"),
    ("get", "/similar/i1?dataset=other", 404, "unknown dataset 'other'"),
    ("get", "/similar/i1?k=1001", 422, "k must be"),
    ("get", "/users/ghost", 404, "unknown user 'ghost'"),
    ("get", "/images/shop/i30", 404, "no image for item 'i30'"),
    ("get", "/images/shop/zz", 404, "no image"),
    ("get", "/nowhere", 404, "no route GET /nowhere"),
    ("post", ("/healthz", b""), 405, "POST is not allowed"),
    ("post", ("/reload?bundle=nope", b""), 404, "unknown bundle 'nope'"),
]


@pytest.mark.parametrize("method, target, status, message", ERRORS,
                         ids=[f"{e[2]}-{i}" for i, e in enumerate(ERRORS)])
def test_errors_are_json_with_a_status_and_one_message(client, method, target, status, message):
    if method == "get":
        answer = client.get(target)
    else:
        answer = client.post(target[0], content=target[1])
    assert answer.status_code == status, answer.text
    if message is not None:
        assert answer.json() == {"status": status, "message": answer.json()["message"]}
        assert message in answer.json()["message"] and "\n" not in answer.json()["message"]


def unit(n: int, dim: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def write_version(folder: Path, seed: int) -> list[str]:
    """A 300-item bundle whose vectors depend on ``seed``; returns u0's top-5 under it."""
    embeddings = unit(300, 16, seed)
    tokens = [f"t{i}" for i in range(300)]
    histories = [np.array([0, 1, 2]), np.array([3, 4])]
    write_profile_arrays(folder, tokens, embeddings, np.ones(300, bool), ["u0", "u1"], histories,
                         histories, {"model": "VLM4Rec", "item_feature": f"v{seed}",
                                     "dataset": "swap", "train_items": histories})
    scores = embeddings @ (embeddings[:3].sum(0) / np.linalg.norm(embeddings[:3].sum(0)))
    scores[:3] = -np.inf
    return [tokens[i] for i in np.argsort(-scores)[:5]]


def test_hot_swap_under_load_fails_no_request(tmp_path):
    folder = tmp_path / "swap"
    expected = {0: write_version(folder, 0)}
    service = Service([folder], search=False)
    stop, failures, answers = threading.Event(), [], []

    def hammer(path: str) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while not stop.is_set():
                answer = http.get(path)
                if answer.status_code != 200:
                    failures.append((path, answer.status_code, answer.text))
                elif path.startswith("/recommend"):
                    answers.append(tuple(r["item"] for r in answer.json()["recommendations"]))

    with LiveServer(create_app(service)) as server:
        clients = [threading.Thread(target=hammer, args=(path,)) for path in
                   ["/recommend?user=u0&k=5"] * 3 + ["/similar/t7?k=5", "/healthz"]]
        for thread in clients:
            thread.start()
        reloads = []
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for version in range(1, 5):
                writer = threading.Thread(target=lambda v=version: expected.__setitem__(
                    v, write_version(folder, v)))
                writer.start()
                while writer.is_alive():  # reloads while the export is half written
                    reloads.append(http.post("/reload").status_code)
                    time.sleep(0.005)
                writer.join()
                final = http.post("/reload")
                assert final.status_code == 200, final.text  # loaded now, or by a reload above
                assert final.json()["reloaded"] in (["swap"], [])
                time.sleep(0.2)
                now = http.get("/recommend?user=u0&k=5").json()["recommendations"]
                assert [r["item"] for r in now] == expected[version]
                assert http.get("/bundles").json()["bundles"][0]["feature"] == f"v{version}"
        stop.set()
        for thread in clients:
            thread.join()
    assert failures == []
    assert len(answers) > 50 and set(answers) <= {tuple(v) for v in expected.values()}
    assert set(reloads) <= {200, 409}  # a half-written bundle is refused, never half-loaded
    unchanged = Service([folder], search=False)
    assert unchanged.reload()["reloaded"] == []


def test_serve_command(shop, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "recbole_vlm4rec.cli", "serve",
                                str(shop["emb"]), str(shop["text"]), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        while not any("serving 2 bundle(s) on http://" in line for line in lines):
            line = process.stdout.readline()
            assert line, process.stderr.read()
            lines.append(line)
        url = lines[-1].split(" on ", 1)[1].split("/ ", 1)[0]
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok", "bundles": 2,
                                                      "generation": 1}
        assert "shop-text" in "".join(lines) and "search" in "".join(lines)
        process.send_signal(signal.SIGHUP)  # reload on signal: nothing changed on disk
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/healthz").json()["generation"] != 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=30)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in os.listdir(shop["emb"]):
        (broken / name).write_bytes((shop["emb"] / name).read_bytes())
    (broken / "index.faiss").write_bytes(b"")
    done = subprocess.run([sys.executable, "-m", "recbole_vlm4rec.cli", "serve", str(broken),
                           "--port", "0"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "index.faiss: empty file" in done.stderr


def test_numpy_query_encoder_equals_sentence_transformers():
    from recbole_vlm4rec.encoding.text import TextEncoder
    from recbole_vlm4rec.serving.query_encoder import NumpyBertEncoder, load_query_encoder

    texts = ["space opera with robots", "A cosy red wool scarf; café crème, 東京 ☕",
             " ".join(f"word{i} alpha beta" for i in range(200))]  # past the 256-token limit
    fast = load_query_encoder("all-MiniLM-L6-v2")
    assert isinstance(fast, NumpyBertEncoder)
    reference = TextEncoder("all-MiniLM-L6-v2").encode(texts, show_progress=False)
    got = fast.encode(texts)
    assert got.dtype == np.float32 and got.shape == reference.shape
    assert np.abs(got - reference).max() < 1e-5
    with pytest.raises(ValueError, match="empty texts"):
        fast.encode(["  "])
